"""`pi-image flash` onto a real block device: a loop device stands for the card (root only, as the boot test).

The safety checks read the real sysfs and mountinfo here: a partition instead of its disk (where the loop driver
makes partitions), and a device with a mounted filesystem, are refused; a free loop device is written, its table and
filesystems read back by sfdisk and e2fsck through the device itself.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from builder.samples import make_sample

pytestmark = pytest.mark.system
REPO = Path(__file__).resolve().parents[2]


def sh(*argv: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, check=check)


def flash(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "builder", "flash", *map(str, args)], capture_output=True,
                          text=True, cwd=REPO)


@pytest.fixture
def loop(tmp_path: Path):
    """A loop device over a 2 GiB file of old bytes (partitions scanned: /dev/loopNp1, p2)."""
    backing = tmp_path / "card.img"
    make_sample("kali-raspi", backing)  # the card held another OS
    device = sh("losetup", "--find", "--show", "--partscan", backing).stdout.strip()
    name = Path(device).name
    for part in Path(f"/sys/block/{name}").glob(f"{name}p*"):  # no udev here: make the nodes the kernel announced
        node = Path("/dev") / part.name
        if not node.exists():
            major, minor = (part / "dev").read_text().split(":")
            sh("mknod", node, "b", major, minor.strip())
    try:
        yield Path(device)
    finally:
        sh("losetup", "--detach", device, check=False)


def test_a_loop_device_is_written_and_reads_back_clean(loop: Path, tmp_path: Path):
    image = make_sample("ubuntu-raspi", tmp_path / "ubuntu.img")

    proc = flash(image, loop, "--yes", "--json")

    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert "ROOTFS" in report["previous"] or "partition" in report["previous"]
    assert report["written_bytes"] == report["verified_bytes"] > 0
    sh("partx", "--update", loop, check=False)
    table = json.loads(sh("sfdisk", "--json", loop).stdout)["partitiontable"]
    assert [p["type"] for p in table["partitions"]] == ["c", "83"]
    root_start = table["partitions"][1]["start"] * 512
    sh("e2fsck", "-fn", f"{loop}?offset={root_start}")


def test_a_partition_is_refused(loop: Path, tmp_path: Path):
    image = make_sample("ubuntu-raspi", tmp_path / "ubuntu.img")
    partition = Path(f"{loop}p1")
    if not partition.exists():
        pytest.skip("this kernel's loop driver makes no partitions (max_part=0)")
    proc = flash(image, partition, "--yes")
    assert proc.returncode == 1 and f"name the whole disk {loop}" in proc.stderr, proc.stderr


def test_a_device_holding_a_mounted_filesystem_is_refused(tmp_path: Path):
    image = make_sample("ubuntu-raspi", tmp_path / "ubuntu.img")
    backing = tmp_path / "fs.img"
    sh("truncate", "-s", "64M", backing)
    sh("mkfs.ext4", "-q", backing)
    device = sh("losetup", "--find", "--show", backing).stdout.strip()
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    try:
        sh("mount", "-o", "ro", device, mountpoint)
        proc = flash(image, device, "--yes")
        assert proc.returncode == 1 and "mounted" in proc.stderr and "umount" in proc.stderr, proc.stderr
        assert proc.stderr.count("\n") == 1
    finally:
        sh("umount", mountpoint, check=False)
        sh("losetup", "--detach", device, check=False)


def test_a_profile_image_is_stamped_onto_a_loop_device(loop: Path, tmp_path: Path):
    """The stamp's debugfs and mtools edits go through the device node while the flash holds it open (O_EXCL)."""
    base = make_sample("ubuntu-raspi", tmp_path / "ubuntu.img")
    lab = tmp_path / "lab"
    cli = [sys.executable, "-m", "builder"]
    env = {**os.environ, "PI_IMAGE_CACHE": str(tmp_path / "cache"), "SOURCE_DATE_EPOCH": "1700000000"}
    for argv in (["cluster", "init", lab, "--api-server", "192.168.6.10:6443", "--endpoint", "192.168.6.10:8443",
                  "--kubernetes-version", "1.31", "--node-subnet", "192.168.6.0/24", "--gateway", "192.168.6.1"],
                 ["cluster", "add-node", lab, "pi-worker1", "--profile", "worker-8g", "--address", "192.168.6.21"],
                 ["build", "--cluster", lab, "--profile", "worker-8g", "--base", base, "-o", tmp_path / "w.img",
                  "--kube-key", REPO / "tests/data/test-Release.key", "--ssh-key", REPO / "tests/data/test-admin.pub"],
                 ["flash", tmp_path / "w.img", loop, "--yes", "--cluster", lab, "--node", "pi-worker1"]):
        proc = subprocess.run([*cli, *map(str, argv)], capture_output=True, text=True, cwd=REPO, env=env)
        assert proc.returncode == 0, (argv, proc.stderr)
    table = json.loads(sh("sfdisk", "--json", loop).stdout)["partitiontable"]
    root = f"{loop}?offset={table['partitions'][1]['start'] * 512}"
    sh("e2fsck", "-fn", root)
    assert sh("debugfs", "-R", "cat /etc/hostname", root).stdout == "pi-worker1\n"
