"""The systemd units the build installs are valid and encode the run-once, after-network contract."""

import configparser
import shutil
import subprocess
from pathlib import Path

import pytest

UNITS = Path(__file__).resolve().parents[2] / "firstboot" / "units"


def unit(name):
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str
    parser.read(str(UNITS / name))
    return parser


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze (apt-get install systemd)")
def test_units_pass_systemd_analyze_verify():
    proc = subprocess.run(["systemd-analyze", "verify", "--man=no", "pi-image-firstboot.service",
                           "pi-image-tokend.service"], cwd=str(UNITS), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, universal_newlines=True)

    assert proc.returncode == 0, proc.stdout
    assert "pi-image" not in proc.stdout, proc.stdout


def test_firstboot_unit_runs_once_after_network_and_time_sync_without_a_timeout():
    firstboot = unit("pi-image-firstboot.service")

    assert firstboot["Unit"]["ConditionPathExists"] == "!/var/lib/pi-image/firstboot.done"
    assert {"network-online.target", "time-sync.target"} <= set(firstboot["Unit"]["After"].split())
    # multi-user.target (and cloud-final after it) must not wait while the agent retries
    assert firstboot["Unit"]["DefaultDependencies"] == "no"
    assert set(firstboot["Unit"]["Wants"].split()) == {"network-online.target", "time-sync.target"}
    assert firstboot["Service"]["Type"] == "oneshot"
    assert "Restart" not in firstboot["Service"], "systemd 237 refuses Restart= on oneshot units"
    assert firstboot["Service"]["TimeoutStartSec"] == "infinity"
    assert firstboot["Service"]["WorkingDirectory"] == "/usr/lib/pi-image"
    assert firstboot["Service"]["ExecStart"].startswith("/usr/bin/python3 -m firstboot.agent")
    assert firstboot["Install"]["WantedBy"] == "multi-user.target"


def test_tokend_unit_starts_the_endpoint_module_with_private_state():
    tokend = unit("pi-image-tokend.service")

    assert tokend["Service"]["ExecStart"].startswith("/usr/bin/python3 -m firstboot.tokend --config ")
    assert tokend["Service"]["UMask"] == "0077"
