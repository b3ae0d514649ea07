"""Device-side pieces of the join: node-ip choice, local checks, apt on a first boot, the runtime check, preflight,
backoff and reporting, token reuse, roles, node.json — and Python 3.6 compatibility."""

import errno
import json
import os
import random
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from firstboot import joinconfig, localsetup, netinfo, packages, preflight
from firstboot.agent import Backoff, FirstBootAgent
from firstboot.client import Answer
from firstboot.commands import CommandResult, CommandRunner
from firstboot.errors import SetupFailed
from firstboot.nodeconfig import AgentPaths, ConfigError, NodeConfig, load_node_config
from firstboot.packages import Apt
from firstboot.runtime import RUNTIMES, RuntimeCheck

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


def test_a_node_without_systemd_resolved_points_its_kubelet_at_a_resolv_conf_that_exists(tmp_path):
    setup = localsetup.LocalSetup(str(tmp_path), ScriptedCommands())
    assert setup.kubelet_resolv_conf() == "/etc/resolv.conf"

    (tmp_path / "run/systemd/resolve").mkdir(parents=True)
    (tmp_path / "run/systemd/resolve/resolv.conf").write_text("nameserver 127.0.0.53\n")
    assert setup.kubelet_resolv_conf() is None, "where resolved runs, kubeadm's choice stands"


def test_the_kubelet_patch_goes_into_the_join_configuration_of_both_schemas():
    for version in ("1.30", "1.31"):
        config = joinconfig.join_configuration(version, "10.0.0.1:6443", "abcdef.0123456789abcdef", ["sha256:00"],
                                               "pi", "10.0.0.5", "containerd", patches="/var/lib/pi-image/patches")
        assert config["patches"] == {"directory": "/var/lib/pi-image/patches"}
        assert config["nodeRegistration"]["criSocket"] == "unix:///var/run/containerd/containerd.sock"
    assert joinconfig.kubelet_patch({"resolvConf": "/etc/resolv.conf"}) == 'resolvConf: "/etc/resolv.conf"\n'


def test_sysctls_come_from_the_builds_file_and_go_to_proc_sys_without_a_sysctl_binary(tmp_path):
    (tmp_path / "etc/sysctl.d").mkdir(parents=True)
    (tmp_path / "etc/sysctl.d/k8s.conf").write_text("# comment\nnet.ipv4.ip_forward = 1\n\nnet.bridge.x = 1\n")
    (tmp_path / "proc/sys/net/ipv4").mkdir(parents=True)
    commands = ScriptedCommands()

    warning = localsetup.LocalSetup(str(tmp_path), commands).apply_sysctls()

    assert (tmp_path / "proc/sys/net/ipv4/ip_forward").read_text() == "1\n"
    assert "net.bridge.x" in warning and "net.ipv4.ip_forward" not in warning, "a missing key is named"
    assert commands.calls == [], "no sysctl command"


def test_preflight_names_what_kubeadm_would_refuse(tmp_path):
    for relative, text in {"proc/sys/net/bridge/bridge-nf-call-iptables": "1\n", "proc/sys/net/ipv4/ip_forward": "0\n",
                           "proc/swaps": "Filename\tType\n/swapfile file\n"}.items():
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_text(text)

    class Answering:
        def problem(self):
            return "containerd does not answer on /var/run/containerd/containerd.sock"

    found = preflight.problems(str(tmp_path), Answering())

    assert found == ["containerd does not answer on /var/run/containerd/containerd.sock",
                     "/proc/sys/net/ipv4/ip_forward is 0 (kubeadm needs 1)",
                     "swap is on (/swapfile): the kubelet refuses to start with swap"]


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

    assert load_node_config(str(path)).node == "pi"


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



class Replies:
    """Commands answered from a script {argv prefix: [(exit, stdout, stderr), ...]}, in order (the last one
    repeats); anything else succeeds silently. Every tool is available."""

    def __init__(self, script=None):
        self.script = {prefix: list(answers) for prefix, answers in (script or {}).items()}
        self.calls = []

    def run(self, argv, input_text=None, timeout=None):
        self.calls.append(argv)
        for prefix, answers in self.script.items():
            if tuple(argv[:len(prefix)]) == prefix:
                code, out, err = answers.pop(0) if len(answers) > 1 else answers[0]
                return CommandResult(argv, code, out, err)
        return CommandResult(argv, 0, "", "")

    def available(self, tool):
        return True


LOCKED = (100, "", "E: Could not get lock /var/lib/dpkg/lock-frontend. It is held by process 812 (unattended-upgr)\n")


def test_apt_waits_while_another_process_holds_the_package_lock_then_installs():
    dpkg_locked = (2, "", "dpkg: error: dpkg frontend lock was locked by another process with pid 812\n")
    commands = Replies({("dpkg", "--force-confold"): [dpkg_locked, LOCKED, (0, "", "")]})
    pauses = []

    Apt(commands, sleep=pauses.append).install(["containerd"])

    assert pauses == [packages.LOCK_PAUSE_SECONDS] * 2
    assert [call[:2] for call in commands.calls] == [["dpkg", "--force-confold"]] * 3 + [
        ["apt-get", "update"], ["apt-get", "install"]]
    install = commands.calls[-1]
    assert "Dpkg::Options::=--force-confold" in install and "containerd" in install, "pi-image's conffiles stay"


def test_apt_gives_up_on_a_lock_held_for_half_an_hour_but_says_it_may_be_retried():
    now = [0.0]
    commands = Replies({("apt-get", "update"): [LOCKED]})

    def sleep(seconds):
        now[0] += seconds

    with pytest.raises(SetupFailed, match="could not get the package lock in 30 min.*unattended-upgr") as failure:
        Apt(commands, sleep=sleep, clock=lambda: now[0]).install(["containerd"])
    assert failure.value.retry


def test_a_clock_behind_the_archive_is_a_failure_to_retry_after_time_sync():
    commands = Replies({("apt-get", "update"): [(100, "", "E: Release file for http://10.0.2.2/debian/dists/bookworm/"
                                                          "InRelease is not valid yet (invalid for another 364d).")]})

    with pytest.raises(SetupFailed, match="not valid yet.*waiting for NTP") as failure:
        Apt(commands, sleep=lambda s: None).install(["containerd"])
    assert failure.value.retry


def test_an_unreachable_archive_names_the_settings_that_fix_it_even_when_apt_get_update_exits_0():
    warning = ("W: Failed to fetch https://pkgs.k8s.io/core:/stable:/v1.31/deb/InRelease  "
               "Could not connect to pkgs.k8s.io")
    commands = Replies({("apt-get", "update"): [(0, "", warning + "\nW: Some index files failed to download.")]})

    with pytest.raises(SetupFailed, match="cannot be reached.*pkgs.k8s.io.*kube_repo_url.*proxy"):
        Apt(commands, sleep=lambda s: None).install(["kubeadm"])


def test_a_half_configured_package_counts_as_missing_and_a_held_one_as_installed():
    commands = Replies({("dpkg-query",): [(0, "containerd iF \nrunc ii \nkubelet hi \nkubectl iiR\n", "")]})

    assert Apt(commands).missing(["containerd", "runc", "kubelet", "kubectl", "kubeadm"]) == [
        "containerd", "kubectl", "kubeadm"]


CRI_OK = "TYPE ID PLATFORMS STATUS\nio.containerd.grpc.v1 cri linux/arm64 ok\n"
DUMP_V2 = ('[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]\n  BinaryName = ""\n'
           '  SystemdCgroup = true\n')
DUMP_V3 = "[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]\n  SystemdCgroup = true\n"


@pytest.fixture
def runtime_socket(tmp_path):
    """containerd's socket under tmp_path (a socket file: `ctr`, scripted here, does the talking)."""
    path = tmp_path / RUNTIMES["containerd"].socket_path.lstrip("/")
    path.parent.mkdir(parents=True)
    os.mknod(str(path), 0o600 | stat.S_IFSOCK)
    return path


@pytest.mark.parametrize("plugins,dump,problem", [
    ((0, CRI_OK, ""), DUMP_V2, None),
    ((0, CRI_OK, ""), DUMP_V3, None),
    ((0, CRI_OK, ""), DUMP_V2.replace("true", "false"), "does not use the systemd cgroup driver"),
    ((0, CRI_OK.replace(" ok", " skip"), ""), DUMP_V2, "CRI plugin is skip"),
    ((0, "TYPE ID PLATFORMS STATUS\n", ""), DUMP_V2, "CRI plugin is not loaded.*disabled_plugins"),
    ((1, "", "ctr: failed to dial: context deadline exceeded"), DUMP_V2,
     "containerd does not answer on .*/var/run/containerd/containerd.sock: ctr: failed to dial"),
])
def test_containerd_is_ready_when_its_cri_answers_and_runc_uses_the_systemd_cgroup_driver(tmp_path, runtime_socket,
                                                                                           plugins, dump, problem):
    commands = Replies({("ctr",): [plugins], ("containerd", "config", "dump"): [(0, dump, "")]})

    found = RuntimeCheck(RUNTIMES["containerd"], commands, str(tmp_path)).problem()

    assert found is None if problem is None else re.search(problem, found), found


def test_nobody_on_the_runtime_socket_is_told_without_waiting_for_ctr(tmp_path):
    commands = Replies()

    found = RuntimeCheck(RUNTIMES["containerd"], commands, str(tmp_path)).problem()

    assert found == "containerd does not answer on {}/var/run/containerd/containerd.sock (no socket)".format(tmp_path)
    assert commands.calls == []


class FakeEndpoint:
    """The agent's EndpointClient, answering every join request with a fresh token."""

    def __init__(self):
        self.joins, self.reports = 0, []

    def join(self, facts):
        self.joins += 1
        return Answer(200, {"state": "token-issued", "api_server": "10.0.0.1:6443", "token": "abcdef.0123456789abcdef",
                            "ca_cert_hashes": ["sha256:00"], "kubernetes_version": "v1.31.4", "expires_in": 1800})

    def report(self, state, message=""):
        self.reports.append((state, message))
        return Answer(200, {})


def _agent(tmp_path, commands, role="worker"):
    config = {"node": "pi", "role": role, "kubernetes_version": "1.31", "runtime": "containerd",
              "runtime_packages": ["containerd"], "node_subnet": "10.0.2.0/24", "api_server": "10.0.0.1:6443",
              "endpoint": "10.0.0.1:8443",
              "endpoint_fingerprint": "sha256:" + "00" * 32, "credential": "00" * 32}
    for relative, text in {"proc/sys/net/bridge/bridge-nf-call-iptables": "1", "proc/sys/net/ipv4/ip_forward": "1",
                           "proc/swaps": "Filename\n", "sys/fs/cgroup/cgroup.controllers": "memory\n"}.items():
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_text(text)
    paths = AgentPaths(str(tmp_path))
    paths.ensure_state_dir()
    agent = FirstBootAgent(NodeConfig.from_json(config), paths, commands, Backoff(1.0, 8.0, random.Random(1)),
                           max_attempts=4, sleep=lambda seconds: None)
    agent.client = FakeEndpoint()
    return agent


INSTALLED = (0, "containerd ii \nkubelet ii \nkubeadm ii \nkubectl ii \n", "")
NODE_IP = (0, TWO_NICS, "")


def test_a_runtime_that_does_not_answer_asks_for_no_token_and_is_reported_once(tmp_path):
    commands = Replies({("dpkg-query",): [INSTALLED], ("ip",): [NODE_IP]})
    agent = _agent(tmp_path, commands)

    assert agent.run() == 1

    assert agent.client.joins == 0, "no token is minted for a join that cannot succeed"
    assert [state for state, _ in agent.client.reports] == ["failed"], "the same reason is reported once"
    assert "containerd does not answer" in agent.client.reports[0][1]


def test_a_token_still_valid_is_used_again_instead_of_asking_for_another(tmp_path, runtime_socket):
    commands = Replies({("dpkg-query",): [INSTALLED], ("ip",): [NODE_IP], ("ctr",): [(0, CRI_OK, "")],
                        ("containerd", "config"): [(0, DUMP_V2, "")],
                        ("kubeadm", "join"): [(1, "", "error execution phase kubelet-start: timed out"), (0, "", "")]})
    agent = _agent(tmp_path, commands)

    assert agent.run() == 0

    assert agent.client.joins == 1
    assert [call[:2] for call in commands.calls if call[0] == "kubeadm"] == [
        ["kubeadm", "version"], ["kubeadm", "join"], ["kubeadm", "reset"], ["kubeadm", "join"]]
    assert not os.path.exists(agent.paths.issued_token), "the kept token goes once joined"


def test_a_control_plane_node_never_runs_kubeadm_join(tmp_path, runtime_socket):
    commands = Replies({("dpkg-query",): [INSTALLED], ("ctr",): [(0, CRI_OK, "")],
                        ("containerd", "config"): [(0, DUMP_V2, "")]})
    agent = _agent(tmp_path, commands, role="control-plane")

    assert agent.run() == 0

    assert agent.client.joins == 0
    assert not [call for call in commands.calls if call[:2] == ["kubeadm", "join"]]
    assert json.loads(open(agent.paths.done).read()) == {"joined": False, "node": "pi"}


def test_swap_in_fstab_is_commented_out_for_good_as_the_builder_does(tmp_path):
    """An installed x86 Ubuntu keeps /swap.img in its fstab: after a reboot the kubelet would refuse to start."""
    fstab = tmp_path / "etc" / "fstab"
    fstab.parent.mkdir()
    fstab.write_text("UUID=abc / ext4 defaults 0 1\n/swap.img\tnone\tswap\tsw\t0\t0\n# /old none swap sw 0 0\n")
    fstab.chmod(0o644)
    commands = ScriptedCommands()
    localsetup.LocalSetup(str(tmp_path), commands).turn_swap_off()
    assert fstab.read_text() == ("UUID=abc / ext4 defaults 0 1\n" + localsetup.SWAP_DISABLED
                                 + "/swap.img\tnone\tswap\tsw\t0\t0\n# /old none swap sw 0 0\n")
    assert fstab.stat().st_mode & 0o777 == 0o644 and ["swapoff", "-a"] in commands.calls
    unchanged = fstab.read_text()
    localsetup.LocalSetup(str(tmp_path), commands).turn_swap_off()
    assert fstab.read_text() == unchanged


def test_a_non_ascii_fstab_has_its_swap_commented_out_where_there_is_no_locale_yet(tmp_path):
    """First boot may run before a locale exists (Python 3.6 then reads files as ASCII): an fstab with a UTF-8
    comment, or bytes that are not UTF-8 at all, is still edited, and every other byte is kept."""
    fstab = tmp_path / "etc" / "fstab"
    fstab.parent.mkdir()
    original = ("# Partition système (créée à l'installation)\nUUID=abc / ext4 defaults 0 1\n".encode()
                + b"# latin-1: caf\xe9\n/swap.img\tnone\tswap\tsw\t0\t0\n")
    fstab.write_bytes(original)
    script = ("import locale, sys; from firstboot import localsetup\n"
              "class Commands:\n"
              "    def run(self, argv): return None\n"
              "assert locale.getpreferredencoding(False).lower() in ('ascii', 'ansi_x3.4-1968'), "
              "locale.getpreferredencoding(False)\n"
              "localsetup.LocalSetup(sys.argv[1], Commands()).turn_swap_off()\n")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "PYTHONUTF8": "0",
           "PYTHONCOERCECLOCALE": "0", "PYTHONPATH": str(FIRSTBOOT.parent)}
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path)], env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, universal_newlines=True)

    assert proc.returncode == 0, proc.stdout
    assert fstab.read_bytes() == original.replace(b"/swap.img", localsetup.SWAP_DISABLED.encode() + b"/swap.img")


def test_two_probes_at_once_never_take_each_other_for_a_serving_endpoint(tmp_path):
    from firstboot.endpoint.tokend import hold_serving_marker, is_serving

    os.close(hold_serving_marker(str(tmp_path)))  # an endpoint served here once: the marker is left, unlocked
    loop = ("import sys\nfrom firstboot.endpoint.tokend import is_serving\n"
            "print(sum(is_serving(sys.argv[1]) for _ in range(2000)))")
    probes = [subprocess.Popen([sys.executable, "-c", loop, str(tmp_path)], cwd=str(Path(__file__).parents[2]),
                               stdout=subprocess.PIPE, universal_newlines=True) for _ in range(2)]
    serving_said = [int(probe.communicate(timeout=60)[0]) for probe in probes]
    first, second = hold_serving_marker(str(tmp_path)), hold_serving_marker(str(tmp_path))  # two endpoints serve
    try:
        serving = [is_serving(str(tmp_path)), is_serving(str(tmp_path))]
    finally:
        os.close(first)
        os.close(second)

    assert serving_said == [0, 0], "no endpoint serves: neither probe may say one does"
    assert serving == [True, True] and not is_serving(str(tmp_path))
