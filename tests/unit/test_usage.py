"""The usage map says which bytes of an image a card must receive: proven on the real samples and on a small image
with FAT12, FAT16, a 1 KiB-block ext4, a partition pi-image cannot read and data between partitions.

The key proof: over a "used card" full of random bytes, writing only the mapped bytes gives filesystems that fsck
clean and hold the image's files; a copy that skips all-zero blocks instead does not.
"""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path

import pytest

from builder.errors import ToolError, UserError
from builder.image import DiskImage, Partition
from builder.image.copy import copy_range, extents
from builder.image.fsck import check_partition
from builder.image.usage import BLOCK_SIZE, MERGE_GAP, UsageMap, usage_map
from builder.run import run
from builder.samples import make_sample

SAMPLES = ("ubuntu-raspi", "raspios", "kali-raspi", "jetson-sd")
MIB = 1 << 20
CARD_SIZE = 640 * MIB  # the samples the random-card proofs use: every partition of each layout, a smaller ext4
CHUNK = 4 * MIB


def random_card(path: Path, size: int) -> Path:
    """A "used card": `size` random bytes (openssl rand, in pieces below its 2 GiB limit)."""
    with open(path, "wb") as card:
        for done in range(0, size, 512 * MIB):
            run(["openssl", "rand", str(min(512 * MIB, size - done))], stdout=card.fileno())
    assert path.stat().st_size == size
    return path


def write_ranges(image: Path, card: Path, ranges: list[tuple[int, int]]) -> None:
    """Copy these byte ranges of `image` onto `card`, in order."""
    with open(image, "rb") as src, open(card, "r+b") as dst:
        for start, end in ranges:
            for at in range(start, end, CHUNK):
                os.pwrite(dst.fileno(), os.pread(src.fileno(), min(CHUNK, end - at), at), at)


def write_nonzero_blocks(image: Path, card: Path) -> None:
    """What a zero-skipping copy does: every 4 KiB block of `image` that is not all zeros (holes are), onto `card`."""
    zeros = bytes(BLOCK_SIZE)
    with open(image, "rb") as src, open(card, "r+b") as dst:
        for start, end in extents(src.fileno(), os.fstat(src.fileno()).st_size):
            for at in range(start - start % BLOCK_SIZE, end, BLOCK_SIZE):
                block = os.pread(src.fileno(), BLOCK_SIZE, at)
                if block != zeros[:len(block)]:
                    os.pwrite(dst.fileno(), block, at)


def filesystems(image: Path) -> list[Partition]:
    return [p for p in DiskImage(image).partitions if p.fs]


def files_of(image: Path, p: Partition, dest: Path) -> dict[str, object]:
    """Every file, directory and symlink of the filesystem in `p`, dumped by debugfs or mtools: path -> what it is."""
    dest.mkdir()
    if p.fs.startswith("fat"):
        run(["mcopy", "-s", "-n", "-i", f"{image}@@{p.start}", "::", f"{dest}/"])
    else:
        run(["debugfs", "-R", f'rdump / "{dest}"', f"{image}?offset={p.start}"])
    tree: dict[str, object] = {}
    for path in sorted(dest.rglob("*")):
        info = path.lstat()
        if path.is_symlink():
            what: object = ("link", os.readlink(path))
        elif path.is_dir():
            what = ("dir", info.st_mode)
        else:
            what = ("file", info.st_mode, path.read_bytes())
        tree[str(path.relative_to(dest))] = what
    assert tree, f"nothing read from {p.description}"
    return tree


def covered(ranges: list[tuple[int, int]], start: int, end: int) -> bool:
    """True if [start, end) lies inside the union of the sorted, disjoint `ranges`."""
    for a, b in ranges:
        if a <= start < b:
            start = b
        if start >= end:
            return True
    return start >= end


def unmapped(usage: UsageMap, start: int, end: int) -> Iterator[tuple[int, int]]:
    """The parts of [start, end) that neither `usage.ranges` nor `usage.last` cover."""
    for a, b in sorted((*usage.ranges, *usage.last)):
        if a > start:
            yield start, min(a, end)
        start = max(start, b)
        if start >= end:
            return
    if start < end:
        yield start, end


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """96 MiB, MBR: FAT12 at 1 MiB, data in the gap at 6 MiB, FAT16 at 8 MiB, ext4 with 1 KiB blocks at 40 MiB,
    a partition of unknown content at 72 MiB, data after the last partition at 90 MiB. The filesystems hold files
    with deleted ones between them, so that free space lies between used space."""
    root = tmp_path_factory.mktemp("mixed")
    image = root / "mixed.img"
    with open(image, "wb") as f:
        f.truncate(96 * MIB)
    run(["sfdisk", "-q", str(image)], input=b"label: dos\nstart=2048, size=8192, type=1\n"
        b"start=16384, size=65536, type=6\nstart=81920, size=65536, type=83\nstart=147456, size=16384, type=82\n")
    run(["mkfs.vfat", "-F", "12", "-n", "SMALL", "--offset", "2048", str(image), "4096"])
    run(["mkfs.vfat", "-F", "16", "-n", "MIDDLE", "--offset", "16384", str(image), "32768"])
    for offset, sizes in ((2048 * 512, (70_000, 5_000, 300_000, 1)), (16384 * 512, (900_000, 40_000, 2_500_000))):
        spec = f"{image}@@{offset}"
        run(["mmd", "-i", spec, "::/sub"])
        for n, size in enumerate(sizes):
            (root / f"f{n}").write_bytes(os.urandom(size))
            run(["mcopy", "-i", spec, str(root / f"f{n}"), f"::/sub/f{n}" if n % 2 else f"::/f{n}"])
        run(["mdel", "-i", spec, "::/sub/f1"])
        run(["mattrib", "-i", spec, "+h", "::/f0"])
    tree = root / "tree"
    (tree / "etc" / "deep").mkdir(parents=True)
    for n in range(40):
        (tree / "etc" / ("deep" if n % 3 else "") / f"file{n}").write_bytes(os.urandom(700 * n + 1))
    os.symlink("etc/file0", tree / "link")
    run(["mkfs.ext4", "-q", "-F", "-b", "1024", "-L", "mixed", "-E", f"offset={81920 * 512}", "-d", str(tree),
         str(image), "32768k"])
    run(["debugfs", "-w", "-f", "-", f"{image}?offset={81920 * 512}"],
        input="".join(f"rm /etc/deep/file{n}\n" for n in range(1, 40, 6)).encode())
    with open(image, "r+b") as f:
        for at, size in ((6 * MIB, 70_000), (147456 * 512 + MIB, 5_000), (90 * MIB, 4_096)):
            os.pwrite(f.fileno(), os.urandom(size), at)
    return image


@pytest.fixture
def image_of(sample_image, mixed):
    return lambda name: mixed if name == "mixed" else sample_image(name)


@pytest.mark.parametrize("name", [*SAMPLES, "mixed"])
def test_ranges_are_sorted_disjoint_and_aligned(image_of, name):
    usage = usage_map(image_of(name))
    for ranges in (usage.ranges, usage.last):
        assert ranges and all(a < b for a, b in ranges)
        assert all(a % BLOCK_SIZE == 0 and (b % BLOCK_SIZE == 0 or b == usage.size) for a, b in ranges)
        assert all(b1 < a2 for (_, b1), (a2, _) in pairwise(ranges))
    assert all(b1 + MERGE_GAP <= a2 for (_, b1), (a2, _) in pairwise(usage.ranges))
    assert not any(a < d and c < b for a, b in usage.ranges for c, d in usage.last)
    assert usage.ranges[-1][1] <= usage.size and usage.last[0][0] == 0
    assert usage.mapped_bytes() == sum(b - a for a, b in (*usage.ranges, *usage.last))


@pytest.mark.parametrize("name", [*SAMPLES, "mixed"])
def test_every_block_ext4_uses_is_mapped(image_of, name):
    image = image_of(name)
    usage = usage_map(image)
    for reason in usage.reasons:
        p = reason.partition
        if p.fs != "ext4":
            continue
        spec = f"{image}?offset={p.start}"
        header = run(["dumpe2fs", "-h", spec]).stdout.decode()
        count, free, block = (int(re.search(rf"^{key}:\s+(\d+)", header, re.M).group(1))
                              for key in ("Block count", "Free blocks", "Block size"))
        assert (reason.used, reason.total, reason.unit) == (count - free, count, block)
        # every block outside the map is free, says debugfs (one testb per unmapped run)
        gaps = [(-(-(a - p.start) // block), (b - p.start) // block)
                for a, b in unmapped(usage, p.start, p.start + count * block)]
        gaps = [(a, b) for a, b in gaps if a < b]  # the blocks wholly outside the map
        assert sum(b - a for a, b in gaps) > (free * 9) // 10, "most free blocks are left out"
        out = run(["debugfs", "-f", "-", spec], input="".join(f"testb {a} {b - a}\n" for a, b in gaps).encode())
        assert b"marked in use" not in out.stdout and out.stdout.count(b"not in use") == sum(b - a for a, b in gaps)


@pytest.mark.parametrize("name", ["ubuntu-raspi", "raspios", "kali-raspi", "mixed"])
def test_every_cluster_fat_uses_is_mapped(image_of, name, tmp_path):
    image = image_of(name)
    usage = usage_map(image)
    kinds = set()
    for reason in usage.reasons:
        p = reason.partition
        if not (p.fs or "").startswith("fat"):
            continue
        kinds.add(reason.why.split(":")[0])
        extracted = tmp_path / f"p{p.number}.img"
        copy_range(image, p.start, p.size, extracted)
        summary = run(["fsck.vfat", "-n", "-v", str(extracted)]).stdout.decode()
        used, total = map(int, re.search(r" (\d+)/(\d+) clusters", summary).groups())
        assert (reason.used, reason.total) == (used, total)
        # every cluster of every file and directory (mshowfat) is inside the map
        spec = f"{image}@@{p.start}"
        paths = run(["mdir", "-/", "-a", "-b", "-i", spec, "::"]).stdout.decode().split()
        assert paths
        for path in paths:
            chains = run(["mshowfat", "-i", spec, path]).stdout.decode()
            for first, last in re.findall(r"<(\d+)(?:-(\d+))?>", chains):
                start = _cluster_offset(image, p, int(first))
                end = _cluster_offset(image, p, int(last or first) + 1)
                assert covered(sorted((*usage.ranges, *usage.last)), start, end), (path, first, last)
    expected = {"mixed": {"FAT12", "FAT16"}}.get(name, {"FAT32"})
    assert kinds == expected


def _cluster_offset(image: Path, p: Partition, cluster: int) -> int:
    """Byte offset of a FAT cluster, from the boot sector (read here with struct, as the FAT specification says)."""
    with open(image, "rb") as f:
        bs = os.pread(f.fileno(), 512, p.start)
    sector, per_cluster, reserved, fats, root_entries = struct.unpack_from("<HBHBH", bs, 11)
    fat_sectors = struct.unpack_from("<H", bs, 22)[0] or struct.unpack_from("<I", bs, 36)[0]
    data = reserved + fats * fat_sectors + (root_entries * 32 + sector - 1) // sector
    return p.start + (data + (cluster - 2) * per_cluster) * sector


CORRUPTIONS = {
    "no sector size": (11, b"\0\0"),
    "three sectors per cluster": (13, b"\x03"),
    "no reserved sectors": (14, b"\0\0"),
    "more sectors than the partition": (32, struct.pack("<I", 0xFFFFFFF0)),
    "a FAT too small for its clusters": (36, struct.pack("<I", 1)),
    "no boot signature": (510, b"\0\0"),
}


@pytest.mark.parametrize("corruption", CORRUPTIONS)
def test_a_corrupted_boot_sector_maps_the_whole_partition(sample_copy, corruption):
    image = sample_copy("ubuntu-raspi")
    p = DiskImage(image).partition(1)
    offset, value = CORRUPTIONS[corruption]
    with open(image, "r+b") as f:
        os.pwrite(f.fileno(), value, p.start + offset)
    usage = usage_map(image)
    reason = usage.reasons[0]
    assert reason.in_full and "mapped in full" in reason.why
    assert covered(sorted((*usage.ranges, *usage.last)), p.start, p.start + p.size)
    assert not usage.reasons[1].in_full  # the ext4 partition is still mapped by its bitmaps


def _needs_recovery(image: Path, p: Partition) -> None:
    run(["debugfs", "-w", "-R", "feature needs_recovery", f"{image}?offset={p.start}"])


def _has_errors(image: Path, p: Partition) -> None:
    run(["debugfs", "-w", "-R", "ssv state 3", f"{image}?offset={p.start}"])


def _shrink_partition(image: Path, p: Partition) -> None:
    run(["sfdisk", "-q", "-N", str(p.number), str(image)], input=f"{p.start // 512}, {p.size // 512 - 2048}\n".encode())


@pytest.mark.parametrize("damage, why", [(_needs_recovery, "journal needs recovery"), (_has_errors, "errors"),
                                         (_shrink_partition, "larger than its partition")])
def test_an_ext4_that_cannot_be_trusted_is_mapped_in_full(sample_copy, damage, why):
    image = sample_copy("ubuntu-raspi")
    damage(image, DiskImage(image).partition(2))
    p = DiskImage(image).partition(2)
    usage = usage_map(image)
    assert usage.reasons[1].in_full and why in usage.reasons[1].why
    assert covered(sorted((*usage.ranges, *usage.last)), p.start, p.start + p.size)


HOSTILE_DUMPE2FS = {  # what a broken or hostile filesystem could make dumpe2fs print ({last}: its last block)
    "a count its bitmap does not match": "Group 0: (Blocks 0-{last})\n  5 free blocks, 0 free inodes\n"
                                         "  Free blocks: 10-11\n",
    "free blocks beyond the group": "Group 0: (Blocks 0-{last})\n  9 free blocks, \n  Free blocks: {last}-{beyond}\n",
    "groups that stop short": "Group 0: (Blocks 0-100)\n  1 free blocks, \n  Free blocks: 50\n",
    "a group out of sequence": "Group 1: (Blocks 0-{last})\n  0 free blocks, \n  Free blocks: \n",
    "overlapping groups": "Group 0: (Blocks 0-100)\n  0 free blocks, \n  Free blocks: \n"
                          "Group 1: (Blocks 50-{last})\n  0 free blocks, \n  Free blocks: \n",
    "an unreadable list": "Group 0: (Blocks 0-{last})\n  2 free blocks, \n  Free blocks: 7-x\n",
    "a run backwards": "Group 0: (Blocks 0-{last})\n  0 free blocks, \n  Free blocks: 20-10\n",
    "runs out of order": "Group 0: (Blocks 0-{last})\n  4 free blocks, \n  Free blocks: 20-21, 10-11\n",
}


@pytest.mark.parametrize("output", HOSTILE_DUMPE2FS)
def test_dumpe2fs_numbers_that_do_not_add_up_map_the_whole_partition(sample_image, monkeypatch, output):
    image = sample_image("ubuntu-raspi")
    p = DiskImage(image).partition(2)
    last = p.size // 4096 - 1
    text = HOSTILE_DUMPE2FS[output].format(last=last, beyond=last + 5).encode()
    monkeypatch.setattr("builder.image.usage.stream", lambda argv, source: iter([text[:7], text[7:]]))
    usage = usage_map(image)
    assert usage.reasons[1].in_full and "dumpe2fs" in usage.reasons[1].why
    assert covered(sorted((*usage.ranges, *usage.last)), p.start, p.start + p.size)


def test_a_failing_dumpe2fs_maps_the_whole_partition(sample_image, monkeypatch):
    def failing(argv, source):
        yield b"Group 0: (Blocks 0-10)\n"
        raise ToolError("dumpe2fs failed (exit 1): Bad magic number in super-block")

    monkeypatch.setattr("builder.image.usage.stream", failing)
    reason = usage_map(sample_image("ubuntu-raspi")).reasons[1]
    assert reason.in_full and "Bad magic number" in reason.why


def test_bigalloc_is_mapped_in_full(tmp_path):
    image = tmp_path / "bigalloc.img"
    with open(image, "wb") as f:
        f.truncate(72 * MIB)
    run(["sfdisk", "-q", str(image)], input=b"start=2048, type=83\n")
    run(["mkfs.ext4", "-q", "-F", "-O", "bigalloc", "-C", "16384", "-E", f"offset={MIB}", str(image), "65536k"])
    reason = usage_map(image).reasons[0]
    assert reason.in_full and "bigalloc" in reason.why


@pytest.mark.parametrize("name", SAMPLES)
def test_a_sparse_sample_maps_a_small_part_of_its_size(sample_image, name):
    usage = usage_map(sample_image(name))
    assert usage.size == 2 << 30
    assert usage.mapped_bytes() < usage.size // 20


def test_data_between_partitions_is_mapped_and_holes_are_not(mixed, sample_image):
    usage = usage_map(mixed)
    mapped = sorted((*usage.ranges, *usage.last))
    assert covered(mapped, 6 * MIB, 6 * MIB + 70_000) and covered(mapped, 90 * MIB, 90 * MIB + 4096)
    assert not covered(mapped, 7 * MIB, 7 * MIB + 4096) and not covered(mapped, 92 * MIB, 92 * MIB + 4096)
    assert covered(mapped, 147456 * 512, 163840 * 512)  # the partition of unknown content, in full
    assert usage.reasons[3].in_full and "no filesystem" in usage.reasons[3].why
    raspios = usage_map(sample_image("raspios"))  # its first partition starts at 4 MiB: [1, 4) MiB is a hole
    assert raspios.last == [(0, MIB)] and not any(a < 4 * MIB and b > MIB for a, b in raspios.ranges)


def test_a_gpt_backup_is_written_last(sample_image):
    image = sample_image("jetson-sd")
    usage = usage_map(image)
    size = usage.size
    assert usage.last == [(0, MIB), (size - 33 * 512 - (size - 33 * 512) % BLOCK_SIZE, size)]
    assert all(reason.in_full for reason in usage.reasons if reason.partition.fs is None)


@pytest.fixture(scope="module")
def card_sized(tmp_path_factory: pytest.TempPathFactory, mixed: Path):
    """The samples made CARD_SIZE bytes big (once per module), and the mixed image, for the random-card proofs."""
    root, made = tmp_path_factory.mktemp("card-sized"), {"mixed": mixed}

    def sample(name: str) -> Path:
        if name not in made:
            made[name] = make_sample(name, root / f"{name}.img", size=CARD_SIZE)
        return made[name]

    return sample


@pytest.fixture
def used_card(tmp_path):
    """Make random cards in this test's directory and delete them when the test ends (they are big)."""
    made = []

    def make(size: int) -> Path:
        made.append(random_card(tmp_path / f"card{len(made)}.img", size))
        return made[-1]

    yield make
    for card in made:
        card.unlink(missing_ok=True)


@pytest.mark.parametrize("name", [*SAMPLES, "mixed"])
def test_the_mapped_bytes_over_a_used_card_give_the_image(card_sized, name, used_card, tmp_path):
    image = card_sized(name)
    usage = usage_map(image)
    card = used_card(usage.size)
    write_ranges(image, card, usage.ranges)
    write_ranges(image, card, usage.last)
    assert DiskImage(card).partitions == DiskImage(image).partitions
    for p in filesystems(image):
        check_partition(DiskImage(card), p)
        assert files_of(card, p, tmp_path / f"card{p.number}") == files_of(image, p, tmp_path / f"image{p.number}")


@pytest.mark.parametrize("name, number, kind", [("ubuntu-raspi", 1, "fat32"), ("kali-raspi", 2, "ext4")])
def test_a_zero_skipping_copy_over_a_used_card_is_corrupt(card_sized, used_card, name, number, kind):
    image = card_sized(name)
    card = used_card(image.stat().st_size)
    write_nonzero_blocks(image, card)
    p = DiskImage(card).partition(number)
    assert p.fs == kind
    with pytest.raises(UserError, match="is not clean"):
        check_partition(DiskImage(card), p)
