"""Every bad input ends in one clear line on stderr, a non-zero exit, no traceback, and the input untouched."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from builder.run import run


def inspect(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "builder", "inspect", str(path)], capture_output=True, text=True)


def digest(path: Path) -> str:
    if path.is_dir():
        return hashlib.sha256(b"".join(sorted(p.as_posix().encode() for p in path.rglob("*")))).hexdigest()
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_refused(path: Path, *expected: str) -> str:
    before = digest(path)
    result = inspect(path)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for text in expected:
        assert text in lines[0], lines[0]
    assert digest(path) == before, "the input must be left byte-identical"
    return lines[0]


def mbr(path: Path, size: str, script: str) -> Path:
    run(["truncate", "-s", size, str(path)])
    run(["sfdisk", "-q", str(path)], input=script.encode())
    return path


def test_empty_file(tmp_path):
    (tmp_path / "empty.img").write_bytes(b"")
    assert_refused(tmp_path / "empty.img", "empty")


def test_random_bytes(tmp_path):
    (tmp_path / "random.img").write_bytes(os.urandom(1 << 20))
    assert_refused(tmp_path / "random.img", "no partition table")


def test_no_partition_table(tmp_path):
    path = tmp_path / "zeros.img"
    run(["truncate", "-s", "64M", str(path)])
    assert_refused(path, "no partition table")


def test_truncated_image(tmp_path):
    path = mbr(tmp_path / "truncated.img", "4G", "label: dos\nstart=2048, size=256M, type=c\nstart=526336, type=83\n")
    os.truncate(path, 100 << 20)  # the table says 4 GiB, the file is 100 MiB
    assert_refused(path, "truncated")


def test_partition_pointing_past_the_end(tmp_path):
    path = mbr(tmp_path / "past.img", "64M", "label: dos\nstart=2048, size=32M, type=c\n")
    with open(path, "r+b") as f:  # partition 1's sector count -> far beyond the file
        f.seek(0x1BE + 12)
        f.write((10_000_000).to_bytes(4, "little"))
    assert_refused(path, "truncated")


def test_fat_but_no_ext4(tmp_path):
    path = mbr(tmp_path / "fatonly.img", "80M", "label: dos\nstart=2048, type=c\n")
    run(["mkfs.vfat", "-F", "32", "-n", "BOOT", "--offset", "2048", str(path)])
    assert_refused(path, "no ext4 root partition", "fat32")


def test_ext4_without_os_release(tmp_path):
    path = mbr(tmp_path / "bare.img", "80M", "label: dos\nstart=2048, type=83\n")
    run(["mkfs.ext4", "-q", "-E", f"offset={2048 * 512}", str(path), "70M"])
    assert_refused(path, "partition 1", "ext4 but has no /etc/os-release")


def test_ext4_needing_journal_recovery(sample_copy):
    path = sample_copy("ubuntu-raspi", "22.04")
    offset = 526336 * 512
    run(["debugfs", "-w", "-R", "feature needs_recovery", f"{path}?offset={offset}"])
    assert_refused(path, "needs journal recovery", "e2fsck")


def test_ext4_with_a_feature_this_e2fsprogs_lacks(sample_copy):
    path = sample_copy("ubuntu-raspi", "22.04")
    offset = 526336 * 512
    with open(path, "rb") as f:
        f.seek(offset + 1024 + 0x60)
        incompat = int.from_bytes(f.read(4), "little")
    run(["debugfs", "-w", "-R", f"ssv feature_incompat {incompat | 0x80000000:#x}", f"{path}?offset={offset}"])
    line = assert_refused(path, "partition 2", "unsupported feature", "newer e2fsprogs")
    assert "os-release" not in line


def test_unknown_os(tmp_path):
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/os-release").write_text('ID=fedora\nPRETTY_NAME="Fedora Linux 40"\n')
    path = mbr(tmp_path / "fedora.img", "80M", "label: dos\nstart=2048, type=83\n")
    run(["mkfs.ext4", "-q", "-d", str(root), "-E", f"offset={2048 * 512}", str(path), "70M"])
    assert_refused(path, "Fedora Linux 40", "does not support")


def test_directory_that_is_not_a_rootfs(tmp_path):
    (tmp_path / "Linux_for_Tegra" / "rootfs").mkdir(parents=True)
    assert_refused(tmp_path / "Linux_for_Tegra", "not a root filesystem", "Linux_for_Tegra/rootfs")


def test_unreadable_file(sample_copy):
    if os.geteuid() == 0:
        pytest.skip("root reads any file")
    path = sample_copy("kali-raspi")
    path.chmod(0)
    assert_refused(path, "permission denied")


def test_symlink_pointing_outside_the_root(tmp_path):
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/os-release").symlink_to("../../../../../../etc/os-release")
    path = mbr(tmp_path / "escape.img", "80M", "label: dos\nstart=2048, type=83\n")
    run(["mkfs.ext4", "-q", "-d", str(root), "-E", f"offset={2048 * 512}", str(path), "70M"])
    assert_refused(path, "points outside the filesystem root")


def test_symlink_escaping_a_directory_rootfs(tmp_path):
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "etc/os-release").symlink_to("/usr/lib/os-release")  # absolute: resolved INSIDE the tree, not on the host
    assert Path("/usr/lib/os-release").exists()
    assert_refused(root, "not a root filesystem")


def test_symlink_loop(tmp_path):
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "etc/os-release").symlink_to("/etc/os-release")
    assert_refused(root, "too many levels of symlinks")


def test_file_name_with_dotdot_is_refused():
    from builder.errors import UserError
    from builder.image import normalize

    with pytest.raises(UserError, match=r"contains '\.\.'"):
        normalize("/etc/../../shadow")


def test_symlink_target_cannot_inject_debugfs_commands(tmp_path):
    pwned = tmp_path / "pwned"
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "usr/lib").mkdir(parents=True)
    (root / "usr/lib/os-release").write_text("ID=ubuntu\n")
    (root / "etc/os-release").symlink_to(f'x"\ndump /usr/lib/os-release {pwned}\nstat "x')
    path = mbr(tmp_path / "inject.img", "80M", "label: dos\nstart=2048, type=83\n")
    run(["mkfs.ext4", "-q", "-d", str(root), "-E", f"offset={2048 * 512}", str(path), "70M"])
    assert_refused(path, "os-release")
    assert not pwned.exists()
