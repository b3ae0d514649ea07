"""The image layer reads and writes ext4, FAT and directory trees without root; results checked by other tools."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

import builder.image.debugfs as debugfs_module
from builder.errors import UserError
from builder.image import DirectoryFilesystem, DiskImage, open_medium
from builder.run import run

UBUNTU_ROOT = 526336 * 512  # sample ubuntu-raspi 22.04: p2 starts at sector 526336
UBUNTU_BOOT = 2048 * 512


def debugfs(image: Path, offset: int, command: str) -> str:
    return run(["debugfs", "-R", command, f"{image}?offset={offset}"]).stdout.decode()


def e2fsck_clean(image: Path, offset: int) -> None:
    run(["e2fsck", "-fn", f"{image}?offset={offset}"])  # raises on any error


def test_ext4_write_is_read_back_by_debugfs_with_mode_and_owner(sample_copy):
    path = sample_copy("ubuntu-raspi", "22.04")
    image = DiskImage(path, writable=True)
    root = image.filesystem(image.partition("writable"))
    root.write("/etc/pi-image/secret.json", b'{"k": 1}\n', mode=0o600, uid=0, gid=0)
    root.mkdir("/var/lib/pi-image/state", mode=0o700)
    root.symlink("/etc/systemd/system/multi-user.target.wants/x.service", "/etc/systemd/system/x.service")
    image.commit()
    assert debugfs(path, UBUNTU_ROOT, "cat /etc/pi-image/secret.json") == '{"k": 1}\n'
    stat = debugfs(path, UBUNTU_ROOT, "stat /etc/pi-image/secret.json")
    assert "Mode:  0600" in stat and "User:     0   Group:     0" in stat
    assert "Mode:  0700" in debugfs(path, UBUNTU_ROOT, "stat /var/lib/pi-image/state")
    assert 'Fast link dest: "/etc/systemd/system/x.service"' in debugfs(
        path, UBUNTU_ROOT, "stat /etc/systemd/system/multi-user.target.wants/x.service")
    e2fsck_clean(path, UBUNTU_ROOT)


def test_ext4_reads_follow_symlinks_inside_the_image(sample_image):
    image = DiskImage(sample_image("ubuntu-raspi", "22.04"))
    root = image.filesystem(image.partition("writable"))
    assert root.readlink("/etc/os-release") == "../usr/lib/os-release"
    assert "ID=ubuntu" in root.read_text("/etc/os-release")
    assert root.stat("/bin").is_dir  # merged /usr: bin -> usr/bin
    assert "os-release" in root.listdir("/usr/lib")


def test_ext4_edits_are_batched_into_one_debugfs_write_run(sample_copy, monkeypatch):
    path = sample_copy("ubuntu-raspi", "22.04")
    calls: list[list[str]] = []
    real_run = debugfs_module.run

    def counting_run(argv, **kwargs):
        calls.append(list(argv))
        return real_run(argv, **kwargs)

    monkeypatch.setattr(debugfs_module, "run", counting_run)
    image = DiskImage(path, writable=True)
    root = image.filesystem(image.partition("writable"))
    for n in range(20):
        root.write(f"/etc/pi-image/f{n}", f"{n}\n".encode())
    assert root.read("/etc/pi-image/f7") == b"7\n", "reads see queued writes before commit"
    image.commit()
    assert sum(1 for argv in calls if "-w" in argv) == 1
    assert debugfs(path, UBUNTU_ROOT, "cat /etc/pi-image/f19") == "19\n"


def test_ext4_rewrite_replaces_and_remove_deletes(sample_copy):
    path = sample_copy("ubuntu-raspi", "22.04")
    image = DiskImage(path, writable=True)
    root = image.filesystem(image.partition("writable"))
    root.write("/etc/hostname", b"first\n")
    root.write("/etc/hostname", b"second\n")
    root.remove("/etc/resolv.conf")
    image.commit()
    assert debugfs(path, UBUNTU_ROOT, "cat /etc/hostname") == "second\n"
    assert "resolv.conf" not in debugfs(path, UBUNTU_ROOT, "ls /etc")
    e2fsck_clean(path, UBUNTU_ROOT)


def test_ext4_full_filesystem_is_a_clear_error(tmp_path):
    path = tmp_path / "tiny.img"
    run(["truncate", "-s", "8M", str(path)])
    run(["sfdisk", "-q", str(path)], input=b"label: dos\nstart=2048, type=83\n")
    root_tree = tmp_path / "root" / "etc"
    root_tree.mkdir(parents=True)
    (root_tree / "os-release").write_text("ID=debian\n")
    run(["mkfs.ext4", "-q", "-d", str(tmp_path / "root"), "-E", f"offset={2048 * 512}", str(path), "7M"])
    image = DiskImage(path, writable=True)
    root = image.filesystem(image.partition(1))
    root.write("/big", os.urandom(16 << 20))
    with pytest.raises(UserError, match="disk full|could not apply"):
        image.commit()


def test_fat_write_is_read_back_by_mtools_and_fsck(sample_copy, tmp_path):
    path = sample_copy("ubuntu-raspi", "22.04")
    image = DiskImage(path, writable=True)
    boot = image.filesystem(image.partition("system-boot"))
    text = boot.read_text("/cmdline.txt")
    boot.write("/cmdline.txt", (text.strip() + " cgroup_enable=memory\n").encode())
    boot.write("/overlays/pi-image.txt", b"hello\n")
    image.commit()
    out = run(["mtype", "-i", f"{path}@@{UBUNTU_BOOT}", "::/cmdline.txt"]).stdout.decode()
    assert out.strip().endswith("cgroup_enable=memory") and out.count("\n") == 1
    assert "pi-image" in run(["mdir", "-i", f"{path}@@{UBUNTU_BOOT}", "::/overlays"]).stdout.decode()
    part = tmp_path / "p1.img"
    with open(path, "rb") as src, open(part, "wb") as dst:
        src.seek(UBUNTU_BOOT)
        dst.write(src.read(256 << 20))
    run(["fsck.vfat", "-n", str(part)])


def test_fat_has_no_symlinks(sample_copy):
    image = DiskImage(sample_copy("ubuntu-raspi", "22.04"), writable=True)
    with pytest.raises(UserError, match="symlink"):
        image.filesystem(image.partition("system-boot")).symlink("/x", "/y")


def test_gpt_partitions_by_name(sample_image):
    image = DiskImage(sample_image("jetson-sd"))
    app = image.partition("APP")
    assert app.number == 1 and app.fs == "ext4"
    assert image.table == "gpt"


def test_read_only_image_refuses_writes(sample_image):
    image = DiskImage(sample_image("kali-raspi"))
    root = image.filesystem(image.partition(2))
    with pytest.raises(RuntimeError, match="read-only"):
        root.write("/etc/x", b"x")


def test_directory_tree_keeps_every_path_inside(tmp_path):
    tree = tmp_path / "rootfs"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc/escape").symlink_to("../../..")
    (tree / "lib").symlink_to("usr/lib")
    fs = DirectoryFilesystem(tree, writable=True)
    fs.write("/lib/systemd/system/a.service", b"[Unit]\n", mode=0o640)
    assert (tree / "usr/lib/systemd/system/a.service").read_bytes() == b"[Unit]\n"
    assert oct((tree / "usr/lib/systemd/system/a.service").stat().st_mode & 0o777) == "0o640"
    with pytest.raises(UserError, match="outside the filesystem root"):
        fs.write("/etc/escape/pwned", b"x")
    assert not (tmp_path.parent / "pwned").exists()


def test_open_medium_refuses_to_edit_a_compressed_image(sample_image, tmp_path):
    compressed = tmp_path / "k.img.zst"
    subprocess.run(["zstd", "-q", "-o", str(compressed), str(sample_image("kali-raspi"))], check=True)
    with pytest.raises(UserError, match="compressed"):
        open_medium(compressed, writable=True, cache_dir=tmp_path / "cache")
