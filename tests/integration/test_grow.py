"""Growing an image's root (its last partition and the ext4 in it) offline: read back with sfdisk, dumpe2fs, e2fsck
and debugfs, which share no code with builder.image.grow."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
from readback import SECTOR, Card, Ext4Reader, tool

from builder.errors import UserError
from builder.image.grow import grow_root
from builder.run import run

MIB = 1 << 20
GROW = 64 * MIB


def partitions(image: Path) -> dict[int, dict]:
    """`sfdisk --json`'s partitions by number (taken from the node name, e.g. "disk.img14")."""
    table = json.loads(tool("sfdisk", "--json", image).stdout)["partitiontable"]
    return {int(p["node"].removeprefix(str(image)).removeprefix("p")): p for p in table["partitions"]}


def ext4_counts(image: Path, offset: int) -> tuple[int, int, int]:
    """(block count, free blocks, block size) as `dumpe2fs -h` prints them."""
    fields = dict(line.split(":", 1) for line in tool("dumpe2fs", "-h", f"{image}?offset={offset}").stdout.decode()
                  .splitlines() if ":" in line)
    return int(fields["Block count"]), int(fields["Free blocks"]), int(fields["Block size"])


def digest(image: Path, start: int, end: int) -> str:
    """SHA-256 of bytes [start, end) of `image`."""
    with open(image, "rb") as f:
        f.seek(start)
        return hashlib.sha256(f.read(end - start)).hexdigest()


def assert_root_grew(image: Path, number: int, old_size: int, grow: int = GROW) -> Ext4Reader:
    """The image grew by `grow`, partition `number` ends at its (GPT: last usable) end, the ext4 fills the
    partition, and e2fsck finds it clean."""
    root = partitions(image)[number]
    start, end = root["start"] * SECTOR, (root["start"] + root["size"]) * SECTOR
    blocks, _, block_size = ext4_counts(image, start)
    assert image.stat().st_size == old_size + grow
    assert end >= image.stat().st_size - 34 * SECTOR and blocks == (end - start) // block_size
    reader = Ext4Reader(image, start)
    assert reader.fsck(image).returncode == 0, reader.fsck(image).stdout.decode()
    return reader


def test_ubuntu_mbr_root_grows_by_64_mib_and_keeps_its_files(sample_copy):
    image = sample_copy("ubuntu-raspi", "22.04")
    size, before = image.stat().st_size, partitions(image)
    root, boot = Card(image).root, Card(image).boot
    assert boot is not None
    blocks, free, block_size = ext4_counts(image, root.offset)
    os_release, cmdline = root.read("/usr/lib/os-release"), boot.read("/cmdline.txt")

    assert grow_root(image, GROW, "ubuntu sample") == size + GROW

    after = partitions(image)
    assert after[1] == before[1] and after[2]["start"] == before[2]["start"]
    assert (after[2]["start"] + after[2]["size"]) * SECTOR == size + GROW
    reader = assert_root_grew(image, 2, size)
    new_blocks, new_free, _ = ext4_counts(image, root.offset)
    assert new_blocks == blocks + GROW // block_size
    assert new_free - free > 0.95 * GROW // block_size  # the new groups' metadata takes a little
    assert os_release is not None and b"ID=ubuntu" in os_release
    assert reader.read("/usr/lib/os-release") == os_release
    assert boot.read("/cmdline.txt") == cmdline and boot.fsck(image.parent).returncode == 0


def test_jetson_gpt_app_grows_though_it_is_partition_1_and_the_backup_gpt_moves_to_the_end(sample_copy):
    image = sample_copy("jetson-sd")
    size, before = image.stat().st_size, partitions(image)
    root = Card(image).root
    blocks, _, block_size = ext4_counts(image, root.offset)
    listing = root.listdir("/etc")

    assert grow_root(image, GROW, "jetson sample") == size + GROW

    table = json.loads(tool("sfdisk", "--json", image).stdout)["partitiontable"]
    assert table["lastlba"] == (size + GROW) // SECTOR - 34
    after = partitions(image)
    assert after[1]["start"] + after[1]["size"] - 1 == table["lastlba"]
    assert {n: p for n, p in after.items() if n != 1} == {n: p for n, p in before.items() if n != 1}
    verify = tool("sfdisk", "--verify", image)
    assert b"No errors detected" in verify.stdout and not verify.stderr, verify.stderr.decode()
    if shutil.which("sgdisk"):
        assert b"No problems found" in tool("sgdisk", "-v", image).stdout
    reader = assert_root_grew(image, 1, size)
    assert ext4_counts(image, root.offset)[0] >= blocks + GROW // block_size
    assert reader.listdir("/etc") == listing


def small_image(path: Path, layout: list[tuple[str, int]], tree: Path | None = None) -> Path:
    """An MBR image with partitions of (`"fat"`|`"ext4"`, MiB) from 1 MiB on; the ext4 holds `tree`."""
    tool("truncate", "-s", f"{1 + sum(mib for _, mib in layout)}M", path)
    script, start = ["label: dos"], 2048
    for kind, mib in layout:
        script.append(f"start={start}, size={mib * 2048}, type={'c' if kind == 'fat' else '83'}")
        start += mib * 2048
    run(["sfdisk", "-q", str(path)], input="\n".join(script).encode() + b"\n")
    start = 2048
    for kind, mib in layout:
        if kind == "fat":
            tool("mkfs.vfat", f"--offset={start}", path, str(mib * 1024))
        else:
            tree_args = ["-d", str(tree)] if tree else []
            tool("mkfs.ext4", "-q", "-b", "4096", *tree_args, "-E", f"offset={start * SECTOR}", path, f"{mib}M")
        start += mib * 2048
    return path


def test_data_in_the_last_blocks_of_the_filesystem_survives(tmp_path):
    # resize2fs on IMAGE?offset=N truncates the file to the filesystem's new size, so a filesystem grown by less
    # than N loses its last N - growth bytes: a file reaching into them proves grow_root does not.
    tree = tmp_path / "root"
    tree.mkdir()
    data = os.urandom(17 * MIB)
    (tree / "data.bin").write_bytes(data)
    image = small_image(tmp_path / "disk.img", [("fat", 4), ("ext4", 24)], tree)
    offset = 5 * MIB
    blocks, _, block_size = ext4_counts(image, offset)
    last_block = int(tool("debugfs", "-R", f"bmap /data.bin {len(data) // block_size - 1}",
                          f"{image}?offset={offset}").stdout)
    assert (last_block + 1) * block_size > blocks * block_size + MIB - offset, "the file must reach that far"
    size = image.stat().st_size

    grow_root(image, MIB, "small image")

    reader = assert_root_grew(image, 2, size, MIB)
    assert reader.read("/data.bin") == data


def test_refuses_an_image_whose_last_partition_is_fat(tmp_path):
    image = small_image(tmp_path / "disk.img", [("ext4", 8), ("fat", 8)])
    size = image.stat().st_size
    whole = digest(image, 0, size)
    with pytest.raises(UserError, match=r"^my image: cannot grow partition 2 \(fat.*no ext4.*last partition"):
        grow_root(image, GROW, "my image")
    assert image.stat().st_size == size and digest(image, 0, size) == whole


def test_refuses_a_root_that_e2fsck_finds_errors_in(tmp_path):
    image = small_image(tmp_path / "disk.img", [("fat", 4), ("ext4", 8)])
    tool("debugfs", "-w", "-R", "freei /lost+found", f"{image}?offset={5 * MIB}")  # in use, marked free
    size = image.stat().st_size
    with pytest.raises(UserError, match=r"^my image: cannot grow partition 2 \(ext4\): its filesystem has errors: "
                                        r"run e2fsck -f on it.*Inode bitmap differences"):
        grow_root(image, GROW, "my image")
    assert image.stat().st_size == size


def test_refuses_a_root_whose_journal_needs_recovery(sample_copy):
    image = sample_copy("ubuntu-raspi", "22.04")
    root = Card(image).root
    with open(image, "r+b") as f:  # set INCOMPAT_RECOVER in the superblock, as an unclean shutdown leaves it
        f.seek(root.offset + 1024 + 0x60)
        incompat = int.from_bytes(f.read(4), "little")
        f.seek(root.offset + 1024 + 0x60)
        f.write((incompat | 0x4).to_bytes(4, "little"))
    size = image.stat().st_size
    with pytest.raises(UserError, match=r"journal recovery.*e2fsck"):
        grow_root(image, GROW, "ubuntu sample")
    assert image.stat().st_size == size
