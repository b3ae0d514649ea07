"""Device-side pieces of the join: node-ip choice, local checks, backoff, node.json — and Python 3.6 compatibility."""

import errno
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from firstboot import localsetup, netinfo
from firstboot.agent import Backoff
from firstboot.commands import CommandResult, CommandRunner
from firstboot.nodeconfig import ConfigError, load_node_config

FIRSTBOOT = Path(__file__).resolve().parents[2] / "firstboot"
TWO_NICS = (
    "1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever preferred_lft forever\n"
    "2: eth0    inet 10.0.2.15/24 brd 10.0.2.255 scope global dynamic eth0\\       valid_lft 86391sec\n"
    "3: wlan0    inet 192.168.6.15/24 brd 192.168.6.255 scope global wlan0\\       valid_lft forever\n"
    "3: wlan0    inet6 fe80::dea6:32ff:fe01:203/64 scope link \\       valid_lft forever preferred_lft forever\n"
)


class ScriptedCommands:
    """Answers `ip` like a two-NIC Pi whose default route is eth0."""

    def __init__(self, addr_output=TWO_NICS):
        self.addr_output = addr_output
        self.calls = []

    def run(self, argv, input_text=None, timeout=None):
        self.calls.append(argv)
        if argv[:3] == ["ip", "-o", "addr"]:
            return CommandResult(argv, 0, self.addr_output, "")
        if argv[:3] == ["ip", "-o", "route"]:
            return CommandResult(argv, 0, "{} via 10.0.2.2 dev eth0 src 10.0.2.15 uid 0".format(argv[4]), "")
        return CommandResult(argv, 0, "", "")


def test_two_nic_node_announces_its_cluster_subnet_address_not_the_first_one():
    assert netinfo.choose_node_ip(ScriptedCommands(), "192.168.6.0/24", "192.168.6.10") == "192.168.6.15"


def test_without_a_subnet_address_the_node_ip_is_the_source_of_the_route_to_the_api_server():
    commands = ScriptedCommands()

    assert netinfo.choose_node_ip(commands, "172.16.0.0/16", "192.168.6.10") == "10.0.2.15"
    assert ["ip", "-o", "route", "get", "192.168.6.10"] in commands.calls


def test_no_address_yet_means_no_node_ip():
    class Offline(ScriptedCommands):
        def run(self, argv, input_text=None, timeout=None):
            return CommandResult(argv, 2, "", "Network is unreachable")

    assert netinfo.choose_node_ip(Offline(), "192.168.6.0/24", "192.168.6.10") is None


@pytest.mark.parametrize("files,enabled", [
    ({"sys/fs/cgroup/cgroup.controllers": "cpuset cpu io memory pids\n"}, True),
    ({"sys/fs/cgroup/cgroup.controllers": "cpuset cpu io pids\n"}, False),
    ({"proc/cgroups": "#subsys_name\thierarchy\tnum_cgroups\tenabled\nmemory\t0\t1\t0\n"}, False),
    ({"proc/cgroups": "#subsys_name\thierarchy\tnum_cgroups\tenabled\nmemory\t5\t80\t1\n"}, True),
])
def test_memory_cgroup_check_reads_cgroup_v2_and_v1(tmp_path, files, enabled):
    for relative, text in files.items():
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_text(text)
    setup = localsetup.LocalSetup(str(tmp_path), ScriptedCommands())

    if enabled:
        assert setup.check_memory_cgroup() is None
    else:
        with pytest.raises(localsetup.SetupFailed, match="did not take effect") as failure:
            setup.check_memory_cgroup()
        assert failure.value.retry is False


def test_kali_without_systemd_resolved_gets_it_started_and_a_warning(tmp_path):
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/os-release").write_text('ID=kali\nID_LIKE=debian\n')
    commands = ScriptedCommands()

    warning = localsetup.LocalSetup(str(tmp_path), commands).check_resolver()

    assert ["systemctl", "enable", "--now", "systemd-resolved"] in commands.calls
    assert "resolv.conf is missing" in warning


def test_backoff_doubles_up_to_its_cap_with_jitter():
    backoff = Backoff(2.0, 300.0, random.Random(4))
    delays = [backoff.next_delay() for _ in range(12)]

    assert all(1.0 <= d <= 2.0 for d in delays[:1])
    assert all(150.0 <= d <= 300.0 for d in delays[9:])
    assert len(set(delays)) == len(delays), "jitter keeps a fleet from retrying in lockstep"
    backoff.reset()
    assert backoff.next_delay() <= 2.0


def test_node_config_without_a_cluster_needs_only_local_keys(tmp_path):
    path = tmp_path / "node.json"
    path.write_text(json.dumps({"node": "pi", "kubernetes_version": "1.31", "runtime": "containerd"}))

    assert load_node_config(str(path))["node"] == "pi"


def test_node_config_with_an_endpoint_but_no_credential_names_the_missing_keys(tmp_path):
    path = tmp_path / "node.json"
    path.write_text(json.dumps({"node": "pi", "kubernetes_version": "1.31", "runtime": "containerd",
                                "endpoint": "10.0.0.1:8443"}))

    with pytest.raises(ConfigError, match="missing key.*endpoint_fingerprint, credential, api_server, node_subnet"):
        load_node_config(str(path))


def test_command_seam_reports_a_missing_tool_instead_of_raising():
    result = CommandRunner({"PATH": "/nonexistent"}).run(["kubeadm", "version"])

    assert result.returncode == 127 and "command not found" in result.summary()


def test_firstboot_package_runs_on_python_36_per_vermin():
    vermin = shutil.which("vermin") or str(Path(sys.executable).with_name("vermin"))
    proc = subprocess.run([vermin, "-t=3.6-", "--no-tips", "--violations", str(FIRSTBOOT)],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True)

    assert proc.returncode == 0, proc.stdout
    assert "Minimum required versions" in proc.stdout, "vermin analysed the package"


def _owners(path):
    st = os.lstat(str(path))
    return st.st_uid, st.st_gid


@pytest.mark.skipif(os.geteuid() != 0, reason="giving files other owners needs root")
def test_owner_map_is_applied_inside_the_root_only_then_renamed(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "etc/pi-image").mkdir(parents=True)
    (root / "home/pi").mkdir(parents=True)
    (root / "home/pi/.bashrc").write_text("")
    outside.mkdir()
    (outside / "secret").write_text("")
    (root / "usr").symlink_to(str(outside))           # a directory symlink leading out of the tree
    (root / "home/pi/link").symlink_to(str(outside / "secret"))
    untouched = _owners(outside / "secret")
    (root / "etc/pi-image/owners.tsv").write_text("\n".join([
        "1000\t1000\t/home/pi",
        "1000\t1001\t/home/pi/.bashrc",
        "1000\t1000\t/home/pi/link",                   # the link itself, not what it points to
        "1000\t1000\t/usr/secret",                     # through a symlink: refused
        "1000\t1000\t/home/pi/../../outside/secret",   # '..': refused
        "1000\t1000\thome/pi/.bashrc",                 # not absolute: refused
        "x\t1000\t/home/pi",                           # not a uid: refused
        "1000\t1000\t/home/pi/not-there",              # missing: skipped
        ""]))

    warning = localsetup.LocalSetup(str(root), ScriptedCommands()).apply_owner_map()

    assert _owners(root / "home/pi") == (1000, 1000)
    assert _owners(root / "home/pi/.bashrc") == (1000, 1001)
    assert _owners(root / "home/pi/link") == (1000, 1000)
    assert _owners(outside / "secret") == untouched
    assert _owners(outside) != (1000, 1000)
    for line in (4, 5, 6, 7):
        assert "line {} ".format(line) in warning
    assert "line 8" not in warning
    assert not (root / "etc/pi-image/owners.tsv").exists()
    assert (root / "etc/pi-image/owners.tsv.applied").exists()
    assert localsetup.LocalSetup(str(root), ScriptedCommands()).apply_owner_map() is None, "runs once"


def test_owner_map_that_could_not_be_applied_stays_for_the_next_attempt(tmp_path, monkeypatch):
    (tmp_path / "etc/pi-image").mkdir(parents=True)
    (tmp_path / "etc/pi-image/owners.tsv").write_text("0\t0\t/etc/pi-image\n")

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(localsetup.os, "chown", read_only)
    warning = localsetup.LocalSetup(str(tmp_path), ScriptedCommands()).apply_owner_map()

    assert "/etc/pi-image: Read-only file system" in warning
    assert (tmp_path / "etc/pi-image/owners.tsv").exists()

