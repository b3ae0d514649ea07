"""An operator's installed machine (an x86 Ubuntu laptop) joins as a worker without a reflash: `pi-image enroll` writes
one script, which runs with `sh` against a sandbox copy of a small Debian-like system (`--root`), with stand-ins for
systemctl on PATH. Everything is read back with plain os calls: the files it writes, its journal, and after `--undo`
the whole tree, byte for byte with modes, owners and links, as it was before.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
import yaml
from readback import KUBE_KEY, REPO, PiImage, succeeded

from builder.build.enroll import EnrollRequest, enroll
from builder.errors import UserError
from firstboot import enroll as device

OS_RELEASE = 'NAME="Ubuntu"\nID=ubuntu\nID_LIKE=debian\nPRETTY_NAME="Ubuntu 24.04.1 LTS"\n'
OWN_CONTAINERD = b"version = 2  # this machine's own containerd settings\n"
SWAPS_HEADER = "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n"
SYSTEMCTL = """#!/bin/sh
echo "systemctl $*" >> "$STANDIN_LOG"
if [ "$1" = is-active ]; then echo "${KUBELET_STATE:-inactive}"; [ "${KUBELET_STATE:-}" = active ]; exit; fi
exit 0
"""


@pytest.fixture(scope="module")
def lab(cli: PiImage, tmp_path_factory) -> Path:
    """A cluster made with the CLI: a Pi master and two x86 workers."""
    directory = tmp_path_factory.mktemp("cluster") / "lab"
    succeeded(cli("cluster", "init", directory, "--api-server", "192.168.6.10:6443", "--endpoint", "192.168.6.10:8443",
                  "--kubernetes-version", "1.31", "--node-subnet", "192.168.6.0/24", "--gateway", "192.168.6.1",
                  "--dns", "192.168.6.1"))
    for name, *args in (("pi-master1", "--profile", "master-2g", "--address", "192.168.6.10"),
                        ("x220", "--profile", "x86-worker"), ("x230", "--profile", "x86-worker")):
        succeeded(cli("cluster", "add-node", directory, name, *args))
    return directory


@pytest.fixture(scope="module")
def script(lab: Path, tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("scripts") / "enroll-x220.sh"
    enroll(EnrollRequest(profile=None, cluster=lab, node="x220", output=output, kube_key=KUBE_KEY))
    return output


@pytest.fixture
def machine(tmp_path: Path) -> Path:
    """A small Debian-like system: os-release, accounts, systemd running, no swap, and a containerd config of its
    own that the plan replaces (with a mode and an mtime of its own), and a symlink."""
    root = tmp_path / "machine"
    for directory in ("etc/containerd", "etc/systemd/system", "run/systemd/system", "proc", "usr/lib", "var/lib"):
        (root / directory).mkdir(parents=True)
    (root / "etc/os-release").write_text(OS_RELEASE)
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (root / "etc/group").write_text("root:x:0:\n")
    (root / "etc/fstab").write_text("UUID=1234 / ext4 defaults 0 1\n")
    (root / "proc/swaps").write_text(SWAPS_HEADER)
    config = root / "etc/containerd/config.toml"
    config.write_bytes(OWN_CONTAINERD)
    config.chmod(0o640)
    os.utime(config, (1600000000, 1600000000))
    (root / "etc/resolv.conf").symlink_to("../run/systemd/resolve/stub-resolv.conf")
    return root


@pytest.fixture
def standins(tmp_path: Path) -> dict[str, str]:
    """PATH with a recording systemctl first; its log is STANDIN_LOG."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "systemctl").write_text(SYSTEMCTL)
    (bin_dir / "systemctl").chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
            "STANDIN_LOG": str(tmp_path / "systemctl.log")}


def run(script: Path, root: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """`sh enroll-NODE.sh --root ROOT ARGS`, as the user runs it (but in a sandbox)."""
    env = {key: value for key, value in env.items() if key != "PYTHONPATH"}  # the script brings its own agent
    return subprocess.run(["sh", str(script), "--root", str(root), *args], capture_output=True, text=True, env=env,
                          timeout=60, cwd=root.parent)


def walk(root: Path) -> dict[str, tuple]:
    """Every path under `root`: (kind, content or link target, mode, uid, gid), and a file's mtime."""
    tree = {}
    for path in [root, *sorted(root.rglob("*"))]:
        status = path.lstat()
        owner = (stat.S_IMODE(status.st_mode), status.st_uid, status.st_gid)
        if path.is_symlink():
            tree[str(path.relative_to(root))] = ("link", os.readlink(path), *owner)
        elif path.is_dir():
            tree[str(path.relative_to(root))] = ("dir", None, *owner)
        else:
            tree[str(path.relative_to(root))] = ("file", path.read_bytes(), *owner, status.st_mtime_ns)
    return tree


def systemctl_calls(env: dict[str, str]) -> list[str]:
    log = Path(env["STANDIN_LOG"])
    return log.read_text().splitlines() if log.exists() else []


def one_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    return proc.stderr


def test_the_script_is_private_small_valid_sh_and_says_what_it_is(script, lab):
    text = script.read_text()
    assert stat.S_IMODE(script.stat().st_mode) == 0o600
    assert script.stat().st_size < 160 << 10
    assert subprocess.run(["sh", "-n", str(script)], capture_output=True).returncode == 0
    header = text.split("exec python3", 1)[0]
    assert "node x220 of cluster lab" in header and "credential" in header and "--undo" in header
    assert (REPO / "firstboot" / "enroll.py").read_text() in text  # embedded verbatim, one definition
    payload = device.read_payload(str(script))
    assert (payload["node"], payload["target"], payload["units"]) == ("x220", "ubuntu-x86",
                                                                      ["pi-image-firstboot.service"])
    assert set(payload["os_ids"]) == {"ubuntu", "debian"}
    steps = {op["step"] for op in payload["ops"]}
    assert not steps & {"identity", "regional", "accounts", "wifi"}  # the machine keeps who it is
    paths = {op["path"] for op in payload["ops"]}
    assert {"/etc/pi-image/node.json", "/etc/containerd/config.toml"} <= paths and "/etc/hostname" not in paths
    inventory = yaml.safe_load((lab / "inventory.yaml").read_text())["nodes"]
    assert next(node for node in inventory if node["name"] == "x220")["generation"] == 1  # its credential's


def test_enroll_writes_the_plan_journals_it_and_undo_puts_the_machine_back_byte_for_byte(script, machine, standins):
    before = walk(machine)

    applied = run(script, machine, standins)

    assert applied.returncode == 0, applied.stderr
    assert "watch: journalctl -fu pi-image-firstboot; pi-image status --cluster" in applied.stdout
    payload = device.read_payload(str(script))
    node_json = machine / "etc/pi-image/node.json"
    assert json.loads(node_json.read_text())["node"] == "x220" and stat.S_IMODE(node_json.stat().st_mode) == 0o600
    for op in payload["ops"]:
        if op["action"] == "write":
            assert (machine / op["path"].lstrip("/")).read_bytes() == device.content(op), op["path"]
    assert os.readlink(machine / "etc/systemd/system/multi-user.target.wants/pi-image-firstboot.service") == \
        "/etc/systemd/system/pi-image-firstboot.service"
    journal_path = machine / "var/lib/pi-image/enroll/journal.json"
    journal = json.loads(journal_path.read_text())
    assert stat.S_IMODE(journal_path.stat().st_mode) == 0o600
    assert {"path": "/etc/pi-image/node.json", "was": "absent"} in journal["entries"]
    assert (machine / "var/lib/pi-image/enroll/backup/etc/containerd/config.toml").read_bytes() == OWN_CONTAINERD
    assert systemctl_calls(standins) == ["systemctl is-active kubelet", "systemctl daemon-reload",
                                         "systemctl start --no-block pi-image-firstboot.service"]

    listed = run(script, machine, standins, "--undo", "--dry-run")
    assert listed.returncode == 0 and "  restore  /etc/containerd/config.toml" in listed.stdout
    assert "  remove   /etc/pi-image/node.json" in listed.stdout

    undone = run(script, machine, standins, "--undo")

    assert undone.returncode == 0, undone.stderr
    assert systemctl_calls(standins)[3:] == ["systemctl disable --now pi-image-firstboot.service",
                                             "systemctl daemon-reload"]
    assert walk(machine) == before


def test_dry_run_lists_every_change_and_changes_nothing(script, machine, standins):
    before = walk(machine)

    proc = run(script, machine, standins, "--dry-run")

    assert proc.returncode == 0, proc.stderr
    assert "  replace  /etc/containerd/config.toml" in proc.stdout
    assert "  write    /etc/pi-image/node.json" in proc.stdout
    assert "  mkdir    /usr/lib/pi-image" in proc.stdout
    assert proc.stdout.rstrip().endswith("dry run: nothing changed")
    assert walk(machine) == before
    assert systemctl_calls(standins) == ["systemctl is-active kubelet"]


def test_an_interrupted_enroll_resumes_and_keeps_the_first_backup(script, machine, standins, monkeypatch, capsys):
    before = walk(machine)
    renames = {"count": 0}
    real_replace = os.replace

    def disk_full_after_a_while(source, destination):
        renames["count"] += 1
        if renames["count"] > 30:  # past the containerd config, before the agent's last files
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), destination)
        real_replace(source, destination)

    monkeypatch.setattr(os, "replace", disk_full_after_a_while)
    monkeypatch.setenv("PATH", standins["PATH"])
    monkeypatch.setenv("STANDIN_LOG", standins["STANDIN_LOG"])
    assert device.main([str(script), "--root", str(machine)]) == 1
    monkeypatch.setattr(os, "replace", real_replace)
    said = capsys.readouterr().err
    assert said.count("\n") == 1 and "No space left on device: run it again to finish" in said
    assert (machine / "etc/containerd/config.toml").read_bytes() != OWN_CONTAINERD
    assert not (machine / "etc/pi-image/node.json").exists()

    resumed = run(script, machine, standins)

    assert resumed.returncode == 0, resumed.stderr
    assert "already done" in resumed.stdout
    assert (machine / "etc/pi-image/node.json").exists()
    assert (machine / "var/lib/pi-image/enroll/backup/etc/containerd/config.toml").read_bytes() == OWN_CONTAINERD
    assert run(script, machine, standins, "--undo").returncode == 0
    assert walk(machine) == before


def _other_os(root: Path, env: dict[str, str]) -> None:
    (root / "etc/os-release").write_text('ID=fedora\nPRETTY_NAME="Fedora Linux 40"\n')


def _no_systemd(root: Path, env: dict[str, str]) -> None:
    shutil.rmtree(root / "run/systemd")


def _kubelet_conf(root: Path, env: dict[str, str]) -> None:
    (root / "etc/kubernetes").mkdir()
    (root / "etc/kubernetes/kubelet.conf").write_text("apiVersion: v1\n")


def _node_json(**values: object):
    def write(root: Path, env: dict[str, str]) -> None:
        (root / "etc/pi-image").mkdir()
        (root / "etc/pi-image/node.json").write_text(json.dumps(values))
    return write


def _kubelet_running(root: Path, env: dict[str, str]) -> None:
    env["KUBELET_STATE"] = "active"


def _agent_done(root: Path, env: dict[str, str]) -> None:
    (root / "var/lib/pi-image").mkdir()
    (root / "var/lib/pi-image/firstboot.done").write_text("")


def _swap(name: str):
    def write(root: Path, env: dict[str, str]) -> None:
        (root / "proc/swaps").write_text(SWAPS_HEADER + f"{name}\tpartition\t1048572\t0\t-2\n")
    return write


@pytest.mark.parametrize("change, says", [
    (_other_os, "this machine runs Fedora Linux 40 (ID=fedora): this script is for ubuntu/debian systems"),
    (_no_systemd, "this system is not running systemd"),
    (_kubelet_conf, "/etc/kubernetes/kubelet.conf exists: this machine is a node of another cluster already"),
    (_node_json(node="x220", cluster={"api_server": "10.0.0.1:6443"}), "names another cluster (10.0.0.1:6443)"),
    (_node_json(node="x230", cluster={"api_server": "192.168.6.10:6443"}, endpoint="192.168.6.10:8443"),
     "names node x230, but this script is for node x220"),
    (_kubelet_running, "the kubelet is running here"),
    (_agent_done, "/var/lib/pi-image/firstboot.done exists: the node's agent ran here before"),
    (_swap("/dev/zram0"), "swap on /dev/zram0 is zram"),
    (_swap("/dev/sda3"), "swap on /dev/sda3 is not in /etc/fstab"),
], ids=["other-os", "no-systemd", "kubelet-conf", "other-cluster", "other-node", "kubelet-running", "agent-done",
        "zram", "swap-outside-fstab"])
def test_each_refusal_is_one_line_and_changes_nothing(script, machine, standins, change, says):
    change(machine, standins)
    before = walk(machine)

    proc = run(script, machine, standins)

    assert proc.returncode == 1 and says in one_line(proc)
    assert proc.stderr.startswith("enroll-x220.sh: ")
    assert walk(machine) == before


def test_swap_in_fstab_is_left_to_the_agent(script, machine, standins):
    (machine / "etc/fstab").write_text("/swap.img none swap sw 0 0\n")
    (machine / "proc/swaps").write_text(SWAPS_HEADER + "/swap.img\tfile\t4194300\t0\t-2\n")

    assert run(script, machine, standins, "--dry-run").returncode == 0


def test_not_root_nothing_to_undo_and_usage_errors(script, machine, standins, monkeypatch, capsys):
    nothing = run(script, machine, standins, "--undo")
    assert nothing.returncode == 1 and "nothing to undo" in one_line(nothing)
    assert run(script, machine, standins, "--bogus").returncode == 2
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert device.main([str(script)]) == 1  # the real root: refused before anything is read there
    assert f"run it as root: sudo sh {script}" in capsys.readouterr().err


def test_a_control_plane_is_refused_at_make_time(lab, cli, tmp_path):
    with pytest.raises(UserError, match="pi-master1 is a control plane: a control plane is a card"):
        enroll(EnrollRequest(profile=None, cluster=lab, node="pi-master1", output=tmp_path / "e.sh",
                             kube_key=KUBE_KEY))
    assert not (tmp_path / "e.sh").exists()
    proc = cli("enroll", "--cluster", lab, "--node", "pi-master1", "--kube-key", KUBE_KEY, "-o", tmp_path / "e.sh")
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1


def test_the_cli_prints_a_summary_and_the_next_step(lab, cli, tmp_path):
    assert "Examples:" in succeeded(cli("enroll", "--help")).stdout
    output = tmp_path / "enroll-x230.sh"
    proc = succeeded(cli("enroll", "--cluster", lab, "--node", "x230", "--kube-key", KUBE_KEY, "-o", output))
    assert f"Wrote {output}" in proc.stdout and "0600" in proc.stdout
    assert f"Next: scp {output} MACHINE: && ssh -t MACHINE sudo sh enroll-x230.sh" in proc.stdout
    again = cli("enroll", "--cluster", lab, "--node", "x230", "--kube-key", KUBE_KEY, "-o", output, "--json")
    assert again.returncode == 1 and "exists: pass --force" in again.stderr
    data = json.loads(succeeded(cli("enroll", "--cluster", lab, "--node", "x230", "--kube-key", KUBE_KEY, "-o",
                                    output, "--force", "--json")).stdout)
    assert data["node"] == "x230" and data["units"] == ["pi-image-firstboot.service"]
    assert all("text" not in op and "content" not in op for op in data["ops"])
