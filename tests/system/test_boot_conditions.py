"""What a freshly flashed board meets on its first boot, on a booted system: the package locks held by another
process (cloud-init and unattended-upgrades on Ubuntu), a clock a year in the past (a Pi has no RTC). The agent
waits or retries, and gets through: its real apt installs the real runtime from the signed archive.

The clock: QEMU's RTC starts a year back; systemd lifts such a clock to its own build date, still months behind the
archive's Release file, so apt refuses it ("not valid yet"). Time then comes the way it comes to a Pi: the real
systemd-timesyncd asks an NTP server (ntp.py, on the host) once one answers, and steps the clock.
"""

import re
import time

import pytest
from lab import BOOT_TIMEOUT
from ntp import SntpServer

pytestmark = pytest.mark.system
YEAR = 365 * 24 * 3600


def test_package_locks_held_for_a_minute_the_agent_waits_and_joins(system_lab):
    system_lab.endpoint.start()
    guest = system_lab.boot(package_locks=60)

    guest.wait_powered_off(BOOT_TIMEOUT, watch=("package locks released", "joined the cluster"))

    log = system_lab.guest_file("/var/lib/pi-image/firstboot.log")
    assert system_lab.guest_report(1)["reason"] == "done"
    assert re.search(r"waiting for the package lock \(.*(process|pid) \d+", log), "it says who holds the lock"
    assert "failed" not in log
    assert guest.seen["joined the cluster"] > guest.seen["package locks released"]
    assert system_lab.audit_decisions() == ["token-issued", "report-joined"], "waiting is no failure"
    assert any(line.startswith("containerd ") and line.endswith(" ii") for line in
               system_lab.guest_report(1)["packages"])


def test_clock_a_year_behind_the_agent_gets_through_once_ntp_sets_it(system_lab):
    system_lab.endpoint.start()
    year_ago = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() - YEAR))
    guest = system_lab.boot(rtc_base=year_ago)
    guest.wait_for("is not valid yet", BOOT_TIMEOUT)  # apt refused the archive: this clock is a year behind
    ntp = SntpServer().start()  # ...until the network's time source answers (the host's clock, over real NTP)
    try:
        guest.wait_powered_off(BOOT_TIMEOUT, watch=("joined the cluster",))
    finally:
        ntp.stop()

    report = system_lab.guest_report(1)
    assert report["reason"] == "done"
    assert ntp.answered >= 1, "systemd-timesyncd asked the host"
    assert abs(report["time"]["now"] - time.time()) < 600, "the guest's clock was set"
    assert system_lab.audit_decisions() == ["report-failed", "token-issued", "report-joined"]
    status = system_lab.status()
    assert status["state"] == "joined" and status["last_error"] is None
