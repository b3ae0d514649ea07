"""The systemd units as systemd itself reads them from a built node's tree (and a master's), without booting.

`systemd-analyze verify` of a unit together with multi-user.target loads them as the tree's systemd would (the tree's
unit directories first, then systemd's own units standing in for the image's systemd package), computes the start
transaction of multi-user.target (an ordering cycle fails it) and, at debug level, dumps each unit with its resolved
dependencies. What needs a real boot is proven by the QEMU boot test (tests/system): the agent runs at first
power-on and joins, and the next boot skips it once /var/lib/pi-image/firstboot.done exists.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from readback import KUBE_KEY, REPO, succeeded

AGENT = "pi-image-firstboot.service"
ENDPOINT = "pi-image-tokend.service"
UNIT_DIRS = ("etc/systemd/system", "usr/lib/systemd/system", "lib/systemd/system")  # searched in this order
Units = dict[str, dict[str, list[str]]]  # unit -> property -> values (without systemd's origin notes)
ORIGIN = re.compile(r" \((?:origin|destination)-[^)]*\)$")  # "After: basic.target (origin-file origin-default)"


def systemd_units() -> Path:
    """systemd's own units (multi-user.target, network-online.target, ...) on this machine."""
    candidates = (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system"))  # merged /usr or not
    found = [d for d in candidates if (d / "multi-user.target").exists()]
    assert found, "no multi-user.target: is systemd installed? (./dev test installs it)"
    return found[0]


def verify(tree: Path, *units: str | Path, debug: bool = False) -> subprocess.CompletedProcess[str]:
    """`systemd-analyze verify` of `units` (paths, or names in `tree`) with `tree`'s unit directories searched first."""
    dirs = [tree / d for d in UNIT_DIRS if (tree / d).is_dir()] + [systemd_units()]
    env = {"PATH": os.environ["PATH"], "HOME": "/", "SYSTEMD_UNIT_PATH": ":".join(map(str, dirs))}
    if debug:
        env["SYSTEMD_LOG_LEVEL"] = "debug"  # dumps each verified unit on stdout
    paths = [u if isinstance(u, Path) else tree / "etc/systemd/system" / u for u in units]
    return subprocess.run(["systemd-analyze", "verify", "--man=no", *map(str, paths)], env=env,
                          capture_output=True, text=True, timeout=120)


def boot_units(tree: Path, unit: str) -> Units:
    """systemd's view of `unit` and multi-user.target in `tree`, their dependencies resolved."""
    proc = verify(tree, unit, systemd_units() / "multi-user.target", debug=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    units: Units = {}
    current: dict[str, list[str]] | None = None
    command = None  # under "-> ExecStart:", each "Command Line: ..." is an ExecStart
    for line in proc.stdout.splitlines():
        text, depth = line.strip(), len(line) - len(line.lstrip("\t"))
        if depth <= 2:
            command = text[3:-1] if text.startswith("-> Exec") and text.endswith(":") else None
        if depth == 1 and text.startswith("-> Unit "):
            current = units.setdefault(text.removeprefix("-> Unit ").removesuffix(":"), {})
        elif current is not None and ": " in text:
            key, value = text.split(": ", 1)
            key = command if key == "Command Line" and command else key
            current.setdefault(key, []).append(ORIGIN.sub("", value))
    return units


@pytest.fixture(scope="module")
def node(cli, sample_image, tmp_path_factory) -> Path:
    """A worker built from the L4T rootfs sample: a directory target, so systemd reads its tree as it is."""
    tree = tmp_path_factory.mktemp("units") / "node"
    succeeded(cli("build", "--profile", "jetson-l4t", "--base", sample_image("l4t-rootfs"), "--output", tree,
                  "--kube-key", KUBE_KEY))
    return tree


@pytest.fixture(scope="module")
def master(tmp_path_factory) -> Path:
    """A master's tree as its installer leaves it: the shipped endpoint unit, enabled, and the firstboot package in
    the unit's working directory."""
    tree = tmp_path_factory.mktemp("units") / "master"
    (tree / "etc/systemd/system").mkdir(parents=True)
    shutil.copy2(REPO / "firstboot" / "units" / ENDPOINT, tree / "etc/systemd/system")
    shutil.copytree(REPO / "firstboot", tree / "usr/lib/pi-image/firstboot",
                    ignore=shutil.ignore_patterns("__pycache__", "units"))
    succeeded(subprocess.run(["systemctl", f"--root={tree}", "enable", ENDPOINT], capture_output=True, text=True))
    return tree


@pytest.fixture(scope="module")
def node_boot(node) -> Units:
    return boot_units(node, AGENT)


def links(tree: Path, unit: str) -> set[tuple[str, str]]:
    """(link, target) of every symlink to `unit` under /etc/systemd/system."""
    top = tree / "etc/systemd/system"
    return {(str(p.relative_to(top)), os.readlink(p)) for p in top.rglob("*") if p.is_symlink() and p.name == unit}


def run_unit_command(tree: Path, unit: dict[str, list[str]], *extra: str) -> subprocess.CompletedProcess[str]:
    """The unit's ExecStart in its WorkingDirectory inside `tree`, under this Python with no site-packages (-S:
    the device code is stdlib only) and no PYTHON* variables (-E), so only the tree's copy can be imported."""
    [workdir], [command] = unit["WorkingDirectory"], unit["ExecStart"]
    python, *args = command.split()
    assert Path(python).name.startswith("python3"), command
    return subprocess.run([sys.executable, "-S", "-E", *args, *extra], cwd=tree / workdir.lstrip("/"),
                          capture_output=True, text=True, timeout=60)


def test_systemd_analyze_verify_accepts_the_units_as_installed(node, master):
    for tree, unit in ((node, AGENT), (master, ENDPOINT)):
        proc = verify(tree, unit)

        assert proc.returncode == 0 and unit not in proc.stdout + proc.stderr, proc.stdout + proc.stderr


def test_the_build_enables_the_agent_exactly_as_systemctl_enable_would(node, tmp_path):
    reference = tmp_path / "reference"
    shutil.copytree(node / "etc/systemd/system", reference / "etc/systemd/system", symlinks=True)
    for link, _ in links(reference, AGENT):
        (reference / "etc/systemd/system" / link).unlink()
    succeeded(subprocess.run(["systemctl", f"--root={reference}", "enable", AGENT], capture_output=True, text=True))

    assert links(node, AGENT) == links(reference, AGENT) != set()


def test_the_boot_pulls_in_the_agent_and_the_network_once_the_clock_is_up(node_boot):
    agent = node_boot[AGENT]

    assert AGENT in node_boot["multi-user.target"]["Wants"]
    assert {"network-online.target", "time-sync.target"} <= set(agent["Wants"])
    assert "time-sync.target" in agent["After"]
    # the agent waits for the network itself (test_network_wait.py): a bundle installs while it comes up
    assert "network-online.target" not in agent["After"]


def test_multi_user_target_does_not_wait_for_the_retrying_agent(node_boot):
    # else multi-user.target, and cloud-final and logins after it, would wait for as long as the master is away
    assert AGENT not in node_boot["multi-user.target"].get("After", [])


def test_systemd_neither_times_out_nor_restarts_the_agent_which_retries_by_itself(node_boot):
    agent = node_boot[AGENT]
    # a oneshot's start lasts until the node has joined; systemd 237 (L4T R32) refuses Restart= on a oneshot
    assert (agent["Type"], agent["TimeoutStartSec"], agent["Restart"]) == (["oneshot"], ["infinity"], ["no"])


def test_the_agent_unit_runs_the_agent_the_build_installed(node, node_boot):
    proc = run_unit_command(node, node_boot[AGENT], "--help")

    assert proc.returncode == 0 and proc.stdout.startswith("usage: "), proc.stderr


def test_the_master_boot_pulls_in_the_endpoint_unit_which_runs_the_endpoint(master):
    master_boot = boot_units(master, ENDPOINT)
    proc = run_unit_command(master, master_boot[ENDPOINT], "--help")

    assert ENDPOINT in master_boot["multi-user.target"]["Wants"]
    assert "network-online.target" in master_boot[ENDPOINT]["After"]
    assert proc.returncode == 0 and proc.stdout.startswith("usage: "), proc.stderr
