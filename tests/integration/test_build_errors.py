"""A user gets things wrong, or the machine does: every bad input or failure ends `pi-image build` with ONE clear
line on stderr (no traceback), a non-zero exit, nothing in the output directory (not even a temporary file), and
the base untouched. `--dry-run` writes nothing and shows every operation.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from readback import KUBE_KEY, TEST_PROFILES, PiImage, entries, fingerprint, succeeded

SMALL_FS_RUNNER = r"""
import json, os, subprocess, sys
size, mountpoint, *argv = sys.argv[1:]
subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "pi-image-test", mountpoint], check=True)
proc = subprocess.run(argv, capture_output=True, text=True)
print(json.dumps({"returncode": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr,
                  "left": sorted(os.listdir(mountpoint))}))
"""
FAKE_SLOW_E2FSCK = """#!/bin/sh
# Stands in for e2fsck, the last tool a build runs before its output is renamed into place: says it started, waits.
echo $$ > "$PI_IMAGE_TEST_MARKER.tmp" && mv "$PI_IMAGE_TEST_MARKER.tmp" "$PI_IMAGE_TEST_MARKER"
exec sleep 60
"""


@pytest.fixture
def out(tmp_path) -> Path:
    directory = tmp_path / "out"
    directory.mkdir()
    return directory


def build(cli: PiImage, base: Path, out: Path, *args: str | Path, **kwargs) -> subprocess.CompletedProcess[str]:
    """`pi-image build` of `base` into `out`/node.img with the test key, plus `args` (default profile worker-8g)."""
    profile = () if "--profile" in args else ("--profile", "worker-8g")
    return cli("build", *profile, "--base", base, "--output", out / "node.img", "--kube-key", KUBE_KEY, *args,
               **kwargs)


def assert_refused(run: subprocess.CompletedProcess[str], left: list[str], *fragments: str) -> str:
    """One line on stderr holding every fragment, no traceback, exit != 0, nothing `left` behind; returns the line."""
    lines = run.stderr.strip().splitlines()
    assert run.returncode != 0, run.stdout
    assert "Traceback" not in run.stderr and len(lines) == 1, run.stderr
    for fragment in fragments:
        assert fragment in lines[0]
    assert left == []
    return lines[0]


@pytest.fixture
def unchanged(base):
    """Asserts, after the test, that the base is byte-for-byte and time-for-time what it was."""
    before = fingerprint(base)
    yield
    assert fingerprint(base) == before, "the base image was written"


# --- bad inputs ------------------------------------------------------------------------------------------------

def test_unknown_profile_is_refused_with_the_closest_name(cli, base, out, unchanged):
    run = build(cli, base, out, "--profile", "worker-9g")
    assert_refused(run, entries(out), "unknown profile 'worker-9g'", "did you mean 'worker-8g'")


def test_profile_typo_names_the_file_the_line_and_the_key_meant(cli, base, out, unchanged):
    profile = TEST_PROFILES / "typo-runtime.yaml"
    line = 1 + profile.read_text().splitlines().index("runtim: containerd")
    run = build(cli, base, out, "--profile", profile)
    assert_refused(run, entries(out), f"{profile}:{line}: unknown key 'runtim'", "did you mean 'runtime'")


def test_set_of_an_unknown_key_is_refused(cli, base, out, unchanged):
    run = build(cli, base, out, "--set", "runtim=docker")
    assert_refused(run, entries(out), "unknown key 'runtim'", "did you mean 'runtime'", "--set")


def test_profile_for_another_target_is_refused(cli, base, out, unchanged):
    run = build(cli, base, out, "--profile", "jetson-gpu")  # the nvidia runtime exists on Jetson only
    assert_refused(run, entries(out), "jetson-sd", "ubuntu-raspi")


def test_overlay_symlink_climbing_out_of_the_root_is_refused(cli, base, out, tmp_path, unchanged):
    overlay = tmp_path / "sneaky"
    (overlay / "etc").mkdir(parents=True)
    (overlay / "etc" / "sneaky-link").symlink_to("../../../../etc/shadow")
    run = build(cli, base, out, "--overlay", overlay)
    assert_refused(run, entries(out), "sneaky-link", "../../../../etc/shadow")


def test_overlay_file_path_with_dot_dot_is_refused(cli, base, out, tmp_path, unchanged):
    overlay = tmp_path / "sneaky"
    (overlay / "etc").mkdir(parents=True)
    (overlay / "etc" / "motd").write_text("hello\n")
    (overlay / "overlay.yaml").write_text('files:\n  "etc/../../../etc/shadow": {mode: "0644"}\n')
    run = build(cli, base, out, "--overlay", overlay)
    assert_refused(run, entries(out), "overlay.yaml", "etc/../../../etc/shadow")


def test_existing_output_is_kept_without_force(cli, base, out, unchanged):
    (out / "node.img").write_bytes(b"someone's image\n")
    run = build(cli, base, out)
    assert_refused(run, [], "node.img", "--force")
    assert entries(out) == ["node.img"] and (out / "node.img").read_bytes() == b"someone's image\n"


def test_output_that_is_the_base_is_refused_even_with_force(cli, sample_copy, tmp_path):
    base = sample_copy("ubuntu-raspi")
    before = fingerprint(base)
    run = cli("build", "--profile", "worker-8g", "--base", base, "--output", base, "--force", "--kube-key", KUBE_KEY)
    assert_refused(run, [p for p in entries(base.parent) if p != base.name], "base")
    assert fingerprint(base) == before


# --- the machine gets in the way ---------------------------------------------------------------------------------

def small_filesystem_build(cli: PiImage, base: Path, size: int, mountpoint: Path, *args: str | Path):
    """Build onto a fresh tmpfs of `size` bytes, mounted in a private user+mount namespace (no root needed);
    returns the run and what the tmpfs held afterwards (it vanishes with the namespace)."""
    probe = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a small filesystem here (unshare: {probe.stderr.decode().strip()})")
    mountpoint.mkdir()
    argv = cli.argv("build", "--profile", "worker-8g", "--base", base, "--output", mountpoint / "node.img",
                    "--kube-key", KUBE_KEY, *args)
    proc = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", sys.executable, "-c",
                           SMALL_FS_RUNNER, str(size), str(mountpoint), *argv],
                          capture_output=True, text=True, env=cli.env(), timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    return subprocess.CompletedProcess(argv, report["returncode"], report["stdout"], report["stderr"]), report["left"]


def test_output_on_a_full_disk_is_refused_before_copying(cli, base, tmp_path, unchanged):
    run, left = small_filesystem_build(cli, base, 1 << 20, tmp_path / "small")
    assert_refused(run, left, "space")


def test_disk_filling_up_during_the_build_leaves_nothing(cli, base, tmp_path, unchanged):
    """Room for the copy of the base, not for what the build adds: the edits themselves hit ENOSPC."""
    run, left = small_filesystem_build(cli, base, base.stat().st_blocks * 512 + (64 << 10), tmp_path / "small")
    assert_refused(run, left)


def test_output_on_another_filesystem_is_built(cli, base, tmp_path, unchanged):
    """Base on one filesystem, output on another (a USB disk, a tmpfs): the usual case, not an error."""
    run, left = small_filesystem_build(cli, base, 256 << 20, tmp_path / "other")
    succeeded(run)
    assert left == ["node.img", "node.img.json"]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupted_build_leaves_nothing_behind(cli, base, out, tmp_path, unchanged, signum):
    """Stopped (Ctrl-C, or killed by a service manager) while its last tool runs on the finished temporary image."""
    fake = tmp_path / "bin" / "e2fsck"
    fake.parent.mkdir()
    fake.write_text(FAKE_SLOW_E2FSCK)
    fake.chmod(0o755)
    marker = tmp_path / "e2fsck-started"
    env = {"PATH": f"{fake.parent}{os.pathsep}{os.environ['PATH']}", "PI_IMAGE_TEST_MARKER": str(marker)}
    proc = cli.popen("build", "--profile", "worker-8g", "--base", base, "--output", out / "node.img",
                     "--kube-key", KUBE_KEY, env=env)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.exists(), f"the build never reached e2fsck: {proc.communicate()}"
        assert [name for name in entries(out) if name.startswith(".node.img.")], "no temporary output mid-build?"
        proc.send_signal(signum)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    assert_refused(subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr), entries(out))
    assert not _alive(int(marker.read_text())), "the build's e2fsck was left running"


def _alive(pid: int) -> bool:
    """True if `pid` still runs after ~2.5 s (a zombie waiting for its reaper counts as gone)."""
    for _ in range(50):
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return False
        if state in ("Z", "X"):
            return False
        time.sleep(0.05)
    return True


# --- dry run -----------------------------------------------------------------------------------------------------

def test_dry_run_writes_nothing_and_prints_every_op_with_its_place_mode_and_owner(cli, base, out, unchanged):
    text = succeeded(build(cli, base, out, "--dry-run")).stdout
    ops = json.loads(succeeded(build(cli, base, out, "--dry-run", "--json")).stdout)["ops"]
    lines = text.splitlines()

    assert entries(out) == []
    assert len(ops) > 20 and len([line for line in lines if not line.startswith("#")]) == len(ops)
    for op, line in zip(ops, [line for line in lines if not line.startswith("#")], strict=True):
        assert f"{op['fs']}:{op['path']}" in line and op["action"] in line, line
        if "mode" in op:
            assert f"{op['mode']} {op['owner']}" in line, line
        if "target" in op:
            assert f"-> {op['target']}" in line, line
    assert {op["fs"] for op in ops} == {"root", "boot"}
    assert any(op["path"] == "/etc/pi-image/node.json" and op["mode"] == "0600" for op in ops)


def test_dry_run_also_shows_the_manifest_the_build_would_write(cli, base, out):
    ops = json.loads(succeeded(build(cli, base, out, "--dry-run", "--json")).stdout)["ops"]
    assert [op["path"] for op in ops if op["fs"] == "root"][-1:] == ["/etc/pi-image/build.json"]
