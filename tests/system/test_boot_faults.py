"""What goes wrong around a first boot, on a booted system: the power is cut in the middle of the join or just after
it, the master is late, the token expires before kubeadm uses it, the node's kubeadm is another minor, the container
runtime cannot start.

These stories are about the join, not the packages: they boot the "preinstalled" base (the same real .debs installed
by apt before the build, as on a Jetson image; conftest.base_images), where the agent finds its runtime and kube
packages installed and starts the runtime. The two-boot scenarios come first: with run.sh's two workers, tests go to
idle workers in file order, longest first.
"""

import re
import time

import pytest
from lab import BOOT_TIMEOUT, NODE

pytestmark = pytest.mark.system
BUILD = {"base": "preinstalled"}
KUBEADM_JOIN_STARTED = '"tool": "kubeadm", "args": ["join"'


def test_power_cut_mid_join_the_next_boot_resets_and_joins_once(system_lab):
    system_lab.endpoint.start()
    guest = system_lab.boot(join_sleep=60)  # kubeadm join is slow this time...
    guest.wait_for(KUBEADM_JOIN_STARTED, timeout=BOOT_TIMEOUT)
    time.sleep(6)  # ...long enough for ext4 to commit what the agent wrote (commit interval: 5 s)
    guest.power_cut()
    assert system_lab.status()["state"] == "token-issued"
    assert system_lab.fake.joins() == []

    again = system_lab.boot()
    again.wait_powered_off(BOOT_TIMEOUT, watch=("joined the cluster",))

    assert system_lab.guest_report(2)["reason"] == "done"
    assert "a previous join was interrupted" in again.serial
    assert "using the join token the endpoint issued earlier" in again.serial
    kubeadm = [args[:2] for args in system_lab.guest_calls("kubeadm")]
    assert kubeadm == [["version", "-o"], ["join", "--config"],  # each boot reads the installed version first
                       ["version", "-o"], ["reset", "-f"], ["join", "--config"]]
    assert len(system_lab.fake.joins()) == 1, "joined exactly once"
    assert len(system_lab.tokens_issued()) == 1, "the token still valid was used again, not a second one minted"
    assert system_lab.fake.cluster()["tokens"] == {}, "the token is gone"
    assert system_lab.status()["state"] == "joined"


def test_power_cut_just_after_joining_the_next_boot_does_not_join_again(system_lab):
    system_lab.endpoint.start()
    # ext4 commits every 60 s on this boot instead of 5: only what the agent itself syncs is on disk at the cut
    guest = system_lab.boot(kernel_args=("rootflags=commit=60",))
    guest.wait_for("joined the cluster", timeout=BOOT_TIMEOUT)
    deadline = time.monotonic() + 30
    while system_lab.status()["state"] != "joined" and time.monotonic() < deadline:
        time.sleep(0.2)
    guest.power_cut()  # the endpoint knows the node joined

    again = system_lab.boot(stop_on="refused to issue a token")
    again.wait_powered_off(BOOT_TIMEOUT)

    assert system_lab.guest_file("/var/lib/pi-image/firstboot.done") is not None
    assert system_lab.status()["state"] == "joined"
    assert system_lab.audit_decisions() == ["token-issued", "report-joined"]


def test_a_runtime_that_cannot_start_asks_for_no_token_and_backs_off(system_lab):
    system_lab.endpoint.start()
    guest = system_lab.boot(runtime_broken=1, timeout=180)  # containerd's unit fails to start on this boot

    guest.wait_powered_off(BOOT_TIMEOUT)

    log = system_lab.guest_file("/var/lib/pi-image/firstboot.log")
    assert system_lab.guest_report(1)["reason"] == "timeout"
    assert "the container runtime is not ready: containerd does not answer" in log
    assert system_lab.tokens_issued() == [], "no token is minted for a join that cannot succeed"
    assert system_lab.audit_decisions() == ["report-failed"], "the same reason is reported once, not per attempt"
    status = system_lab.status()
    assert status["state"] == "failed" and "containerd does not answer" in status["last_error"]
    delays = [float(delay) for delay in re.findall(r"next attempt in ([0-9.]+) s", log)]
    assert len(delays) >= 3 and delays == sorted(delays) and delays[2] >= 2 * delays[0], delays
    assert system_lab.guest_calls("kubeadm") == [], "kubeadm is never run"


def test_master_late_the_agent_backs_off_and_joins_once_the_endpoint_is_up(system_lab):
    guest = system_lab.boot()
    guest.wait_for("; retrying", timeout=BOOT_TIMEOUT)  # the agent is up and finds nobody at the endpoint
    time.sleep(max(0.0, 30 - guest.elapsed()))
    system_lab.endpoint.start()
    endpoint_started = guest.elapsed()

    guest.wait_powered_off(BOOT_TIMEOUT, watch=("joined the cluster",))

    assert system_lab.guest_report(1)["reason"] == "done"
    assert system_lab.status()["state"] == "joined"
    assert guest.seen["joined the cluster"] > endpoint_started >= 30
    assert "next attempt in" in guest.serial
    assert len(system_lab.fake.joins()) == 1
    assert system_lab.audit_decisions() == ["token-issued", "report-joined"]


def test_token_expired_between_fetch_and_join_the_agent_gets_a_new_one(system_lab):
    system_lab.fake.knob("expire_before_join", 1)  # the first token is gone when kubeadm looks for its JWS signature
    system_lab.endpoint.start()
    guest = system_lab.boot()

    guest.wait_powered_off(BOOT_TIMEOUT, watch=("joined the cluster",))

    assert system_lab.guest_report(1)["reason"] == "done"
    assert "the token expired before kubeadm could use it" in guest.serial
    first, second = system_lab.tokens_issued()
    [join] = system_lab.fake.joins()
    assert join["config"]["discovery"]["bootstrapToken"]["token"].startswith(second + ".")
    assert [args[0] for args in system_lab.guest_calls("kubeadm") if args[0] == "join"] == ["join", "join"]
    assert system_lab.fake.cluster()["tokens"] == {}
    assert first != second
    assert system_lab.audit_decisions() == ["token-issued", "report-progress", "token-issued", "report-joined"]
    assert system_lab.status()["state"] == "joined"


def test_version_skew_is_refused_with_a_clear_message_on_the_device_and_in_status(system_lab):
    system_lab.endpoint.start()
    guest = system_lab.boot(kubeadm_version="v1.30.5", stop_on="version skew")

    guest.wait_powered_off(BOOT_TIMEOUT)

    message = "version skew: this node has kubeadm v1.30.5 but the cluster runs Kubernetes 1.31"
    assert system_lab.guest_report(1)["reason"] == "stop-on"
    assert message in guest.serial
    assert message in system_lab.guest_file("/var/lib/pi-image/firstboot.log")
    status = system_lab.status()
    assert status["state"] == "failed"
    assert message in status["last_error"] and "install kubeadm 1.31" in f"{status['last_error']} {status['fix']}"
    assert system_lab.tokens_issued() == []
    assert [args[0] for args in system_lab.guest_calls("kubeadm")] == ["version"]
    assert system_lab.guest_file("/var/lib/pi-image/firstboot.done") is None
    assert NODE not in system_lab.fake.cluster()["nodes"]
