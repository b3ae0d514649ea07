"""Which bytes of a disk image must reach a card, and which may keep whatever the card held before.

Skipping zero or hole blocks is not safe over a used card: metadata that is zero in the image (a FAT entry, an
unused inode table) would keep the card's old bytes. So a byte is skipped only where the image's own filesystem
says nobody looks:

- ext4/ext2/3: the blocks its bitmaps mark free (read by `dumpe2fs`, which also works out BLOCK_UNINIT groups),
  and the partition's space beyond the filesystem's last block;
- FAT12/16/32: the data clusters whose entry in the FAT is zero, and the space beyond the filesystem's sectors
  (the boot sectors, every FAT copy and the FAT12/16 root directory are always written);
- outside the partitions: the image file's holes (what `dd` would write as zeros over space nothing reads).

Everything else is written in full: partitions pi-image cannot read (firmware, swap), filesystems whose numbers do
not add up or that need recovery (writing more is always safe), and the first and last MiB of every filesystem
partition, where blkid looks for signatures a card's old filesystems may have left. The partition tables (the
first MiB, or up to the first partition, and a GPT's backup) are kept apart in `last`: the flasher writes them
after everything else, so that an interrupted flash never leaves a card that looks valid.
"""

from __future__ import annotations

import itertools
import mmap
import os
import re
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import ToolError
from ..run import stream
from .copy import extents
from .partitions import GPT_SIGNATURE, SECTOR, TABLE_BYTES, Partition, read_partitions
from .superblock import INCOMPAT_RECOVER, STATE_ERRORS, STATE_VALID, read_superblock

BLOCK_SIZE = 4096  # the granularity of every range (and the bmap's block size)
MERGE_GAP = 64 << 10  # ranges closer than this are written as one: a short gap costs less than another write
TABLE_ZONE = TABLE_BYTES  # the partition tables live in the first MiB (and a GPT backup in the MiB before its header)
SIGNATURE_ZONE = 1 << 20  # written at both ends of every filesystem partition (blkid's probes)
FAT_END_SIGNATURE = b"\x55\xaa"
MAX_FAT12_CLUSTERS = 4084  # more clusters make a FAT16 (Linux's and Microsoft's rule)
MAX_FAT16_CLUSTERS = 65524
MAX_FAT32_CLUSTERS = 0x0FFFFFF5

Range = tuple[int, int]  # [start, end) in bytes


@dataclass(frozen=True)
class PartitionUsage:
    """What was mapped in one partition and why: `used` of `total` allocation units of `unit` bytes (an ext4
    block, a FAT cluster) in use, or `unit` 0 when the partition is mapped in full for the reason `why`."""

    partition: Partition
    unit: int
    used: int
    total: int
    why: str

    @property
    def in_full(self) -> bool:
        return self.unit == 0

    def __str__(self) -> str:
        return f"{self.partition.description}: {self.why}"


@dataclass(frozen=True)
class UsageMap:
    """The bytes of an image a flasher writes: `ranges` first (sorted, disjoint, BLOCK_SIZE-aligned but for the
    image's end), then `last` (the partition tables)."""

    size: int
    ranges: list[Range]
    last: list[Range]
    reasons: list[PartitionUsage]

    def mapped_bytes(self) -> int:
        """Bytes in `ranges` and `last`."""
        return sum(end - start for start, end in (*self.ranges, *self.last))


class _MapInFull(Exception):
    """This partition's filesystem cannot be trusted to say what is free; the message says why."""


def usage_map(image: Path, layout: tuple[str, list[Partition]] | None = None) -> UsageMap:
    """The bytes of the raw disk image `image` that a card must receive; `layout` is its (table, partitions) when
    the caller has read them already."""
    with open(image, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        table, partitions = layout or read_partitions(image, size)
        last = _merge(_round_out(_table_regions(f.fileno(), size, table, partitions), size), 0)
        data = list(extents(f.fileno(), size))
    wanted: list[Range] = []
    reasons = []
    for partition in partitions:
        used, usage = _partition_usage(image, partition)
        wanted += used
        reasons.append(usage)
    claimed = _merge(sorted([*((p.start, p.start + p.size) for p in partitions), *last]), 0)
    wanted += _subtract(data, claimed)  # the gaps between partitions: their data only
    ranges = _subtract(_merge(sorted(_round_out(wanted, size)), MERGE_GAP), last)
    return UsageMap(size, ranges, last, reasons)


def _partition_usage(image: Path, p: Partition) -> tuple[list[Range], PartitionUsage]:
    """The byte ranges of the image to write for partition `p`, and what they are."""
    whole = [(p.start, p.start + p.size)]
    if p.fs in ("ext4", "ext2/3"):
        reader = _ext4_used
    elif p.fs in ("fat12", "fat16", "fat32"):
        reader = _fat_used
    else:
        return whole, PartitionUsage(p, 0, 0, 0, "mapped in full: no filesystem pi-image reads")
    try:
        used, usage = reader(image, p)
    except _MapInFull as why:
        return whole, PartitionUsage(p, 0, 0, 0, f"mapped in full: {why}")
    ends = [(0, min(SIGNATURE_ZONE, p.size)), (max(0, p.size - SIGNATURE_ZONE), p.size)]
    return [(p.start + a, p.start + b) for a, b in _merge(sorted([*used, *ends]), 0)], usage


def _table_regions(fd: int, size: int, table: str, partitions: list[Partition]) -> list[Range]:
    """Where the partition tables are: the first MiB (up to the first partition, but all of a GPT's primary
    entries), and for GPT the backup header with the entries before it."""
    first = min(p.start for p in partitions)
    header = os.pread(fd, SECTOR, SECTOR)
    if table != "gpt" or not header.startswith(GPT_SIGNATURE):
        return [(0, max(SECTOR, min(TABLE_ZONE, first)))]
    (alternate,) = struct.unpack_from("<Q", header, 32)
    entries_lba, count, entry_size = struct.unpack_from("<QII", header, 72)
    entries_end = entries_lba * SECTOR + count * entry_size
    regions = [(0, max(SECTOR, min(first, max(TABLE_ZONE, entries_end))))]
    backup_end = (alternate + 1) * SECTOR
    if SECTOR < backup_end <= size:
        backup = os.pread(fd, SECTOR, backup_end - SECTOR)
        backup_entries = struct.unpack_from("<Q", backup, 72)[0] * SECTOR if backup.startswith(GPT_SIGNATURE) else 0
        sane = backup_end - TABLE_ZONE <= backup_entries < backup_end
        regions.append((backup_entries if sane else max(0, backup_end - TABLE_ZONE), backup_end))
    return regions


def _in_use(free: Iterable[Range], start: int, end: int, base: int, unit: int) -> tuple[list[Range], int]:
    """The units in [start, end) outside the ascending, disjoint [first, stop) runs `free`, as byte ranges
    (unit n at base + n * unit; ranges less than MERGE_GAP apart joined, they are written as one anyway), and how
    many units they hold."""
    used: list[Range] = []
    position, count = start, 0
    for first, stop in itertools.chain(free, [(end, end)]):
        if first > position:
            count += first - position
            _append(used, base + position * unit, base + first * unit, MERGE_GAP)
        position = stop
    return used, count


def _ext4_used(image: Path, p: Partition) -> tuple[list[Range], PartitionUsage]:
    """The blocks an ext2/3/4 filesystem marks in use, as byte ranges from the partition's start."""
    sb = read_superblock(image, p.start)
    if sb is None:
        raise _MapInFull("no ext4 superblock")
    if sb.size > p.size:
        raise _MapInFull(f"the filesystem ({sb.size} bytes) is larger than its partition ({p.size} bytes)")
    if sb.incompat & INCOMPAT_RECOVER:
        raise _MapInFull("its journal needs recovery, so its bitmaps may be out of date")
    if sb.state & STATE_ERRORS or not sb.state & STATE_VALID:
        raise _MapInFull("it is marked as having errors or as not cleanly unmounted")
    free = ((first, last + 1) for first, last in _dumpe2fs_free_blocks(image, p.start, sb.blocks))
    used, count = _in_use(free, 0, sb.blocks, 0, sb.block_size)
    return used, PartitionUsage(
        p, sb.block_size, count, sb.blocks,
        f"{p.fs}: {count} of {sb.blocks} blocks of {sb.block_size} bytes in use (dumpe2fs)")


GROUP_LINE = re.compile(rb"Group (\d+): \(Blocks (\d+)-(\d+)\)")
GROUP_FREE_LINE = re.compile(rb"  (\d+) free blocks, ")
FREE_BLOCKS = b"  Free blocks: "


def _dumpe2fs_free_blocks(image: Path, offset: int, blocks: int) -> Iterator[Range]:
    """The free blocks of the filesystem at `offset` as inclusive (first, last) runs in ascending order, as
    dumpe2fs prints them per group; checked against the group layout and each group's own count of free blocks
    (bigalloc's "free clusters" do not match: such a filesystem is mapped in full)."""
    group, group_end, floor, declared, seen = -1, -1, 0, 0, 0
    try:
        with open(os.devnull, "rb") as nothing:
            for line in _lines(stream(["dumpe2fs", f"{image}?offset={offset}"], nothing)):
                if m := GROUP_LINE.match(line):
                    _check_group(group, declared, seen)
                    number, start, end = (int(x) for x in m.groups())
                    follows = start == group_end + 1 if group >= 0 else start in (0, 1)  # 1: 1 KiB blocks
                    if number != group + 1 or not follows or end < start:
                        raise _MapInFull(f"dumpe2fs: unexpected layout at group {number}")
                    group, group_end, floor, declared, seen = number, end, start, -1, 0
                elif m := GROUP_FREE_LINE.match(line):
                    declared = int(m.group(1))
                elif line.startswith(FREE_BLOCKS) and group >= 0:
                    for first, last in _runs(line[len(FREE_BLOCKS):]):
                        if first < floor or last > group_end:
                            raise _MapInFull(f"dumpe2fs: free blocks {first}-{last} out of order or outside "
                                             f"group {group}")
                        floor = last + 1
                        seen += last - first + 1
                        yield first, last
    except ToolError as err:
        raise _MapInFull(str(err)) from None
    _check_group(group, declared, seen)
    if group_end != blocks - 1:
        raise _MapInFull(f"dumpe2fs: the groups end at block {group_end}, the filesystem has {blocks} blocks")


def _check_group(group: int, declared: int, seen: int) -> None:
    """A group's free count (from its descriptor) must be what its bitmap lists."""
    if group >= 0 and declared < 0:
        raise _MapInFull(f"dumpe2fs: group {group} has no count of free blocks (bigalloc counts clusters)")
    if group >= 0 and declared != seen:
        raise _MapInFull(f"dumpe2fs: group {group} counts {declared} free blocks, its bitmap lists {seen}")


def _runs(listed: bytes) -> Iterator[Range]:
    """The inclusive runs of dumpe2fs' "a-b, c, d-e" list."""
    for item in listed.strip().split(b", "):
        if item:
            first, _, last = item.partition(b"-")
            try:
                a, b = int(first), int(last or first)
            except ValueError:
                raise _MapInFull(f"dumpe2fs: cannot read the free blocks {item[:40]!r}") from None
            if a > b:
                raise _MapInFull(f"dumpe2fs: free blocks {a}-{b} run backwards")
            yield a, b


def _lines(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Lines of a stream of chunks (without their newline)."""
    pending = b""
    for chunk in chunks:
        *complete, pending = (pending + chunk).split(b"\n")
        yield from complete
    if pending:
        yield pending


def _fat_used(image: Path, p: Partition) -> tuple[list[Range], PartitionUsage]:
    """What a FAT12/16/32 filesystem uses, as byte ranges from the partition's start: its reserved sectors, FATs
    and root directory, and every cluster whose FAT entry is not zero."""
    with open(image, "rb") as f:
        bs = os.pread(f.fileno(), 512, p.start)
        if len(bs) < 512 or bs[510:512] != FAT_END_SIGNATURE:
            raise _MapInFull("no FAT boot sector signature")
        sector, per_cluster, reserved, fats, root_entries, total16, fat16 = struct.unpack_from("<HBHBHHxH", bs, 11)
        total32, fat32, flags = struct.unpack_from("<IIH", bs, 32)
        fat_sectors, total = fat16 or fat32, total16 or total32
        data_start = reserved + fats * fat_sectors + -(-root_entries * 32 // max(sector, 1))
        if (sector not in (512, 1024, 2048, 4096) or per_cluster not in (1, 2, 4, 8, 16, 32, 64, 128)
                or reserved < 1 or fats < 1 or fat_sectors < 1 or not data_start < total
                or total * sector > p.size):
            raise _MapInFull("its boot sector (BPB) is inconsistent")
        clusters = (total - data_start) // per_cluster
        bits = 32 if fat16 == 0 else 12 if clusters <= MAX_FAT12_CLUSTERS else 16
        active = flags & 0xF if bits == 32 and flags & 0x80 else 0  # FAT32 with mirroring off names its FAT
        if (clusters > {12: MAX_FAT12_CLUSTERS, 16: MAX_FAT16_CLUSTERS, 32: MAX_FAT32_CLUSTERS}[bits]
                or (clusters + 2) * bits > fat_sectors * sector * 8 or active >= fats):
            raise _MapInFull(f"its boot sector (BPB) describes {clusters} clusters that its FAT{bits} cannot hold")
        fat_offset = p.start + (reserved + active * fat_sectors) * sector
        cluster, data = per_cluster * sector, data_start * sector
        used, count = _fat_in_use(f.fileno(), fat_offset, bits, clusters, data - 2 * cluster, cluster)
    return [(0, data), *used], PartitionUsage(
        p, cluster, count, clusters, f"FAT{bits}: {count} of {clusters} clusters of {cluster} bytes in use")


def _fat_in_use(fd: int, fat_offset: int, bits: int, clusters: int, base: int, unit: int
                ) -> tuple[list[Range], int]:
    """The clusters 2..clusters+1 whose entry in the FAT at `fat_offset` is not zero (see `_in_use`)."""
    fat_bytes = -(-(clusters + 2) * bits // 8)
    skip = fat_offset % mmap.ALLOCATIONGRANULARITY  # a mapping starts at a multiple of the granularity
    with mmap.mmap(fd, skip + fat_bytes, prot=mmap.PROT_READ, offset=fat_offset - skip) as fat:
        if bits == 12:
            free = _merge(((n, n + 1) for n in range(2, clusters + 2) if not _fat12_entry(fat, skip, n)), 0)
            return _in_use(free, 2, clusters + 2, base, unit)
        width = bits // 8
        # an entry is free when its `width` bytes are zero: the aligned entries inside each run of zero bytes
        zeros = re.compile(rb"\x00{%d,}" % width).finditer(fat, skip + 2 * width, skip + fat_bytes)
        spans = ((-(-(m.start() - skip) // width), (m.end() - skip) // width) for m in zeros)
        return _in_use(((a, b) for a, b in spans if a < b), 2, clusters + 2, base, unit)


def _fat12_entry(fat: mmap.mmap, skip: int, n: int) -> int:
    """Entry `n` of a FAT12 (two 12-bit entries packed in three bytes)."""
    at = skip + n * 3 // 2
    value = fat[at] | fat[at + 1] << 8
    return value >> 4 if n & 1 else value & 0xFFF


def _round_out(ranges: Iterable[Range], size: int) -> Iterator[Range]:
    """Each range widened to BLOCK_SIZE boundaries, clamped to the image."""
    for start, end in ranges:
        if start < end:
            yield start - start % BLOCK_SIZE, min(size, -(-end // BLOCK_SIZE) * BLOCK_SIZE)


def _merge(ranges: Iterable[Range], gap: int) -> list[Range]:
    """Sorted `ranges` with overlapping ones, and those less than `gap` bytes apart, joined."""
    merged: list[Range] = []
    for start, end in ranges:
        _append(merged, start, end, gap)
    return merged


def _append(merged: list[Range], start: int, end: int, gap: int) -> None:
    """Add [start, end) (starting at or after the last range's start) to the sorted `merged`, joining it to the
    last range if they overlap or are less than `gap` bytes apart."""
    if merged and start - merged[-1][1] < max(gap, 1):
        merged[-1] = (merged[-1][0], max(merged[-1][1], end))
    elif start < end:
        merged.append((start, end))


def _subtract(ranges: list[Range], holes: list[Range]) -> list[Range]:
    """The parts of the sorted, disjoint `ranges` outside the sorted, disjoint `holes`."""
    result, index = [], 0
    for start, end in ranges:
        while index < len(holes) and holes[index][1] <= start:
            index += 1
        scan = index
        while start < end and scan < len(holes) and holes[scan][0] < end:
            if holes[scan][0] > start:
                result.append((start, holes[scan][0]))
            start = max(start, holes[scan][1])
            scan += 1
        if start < end:
            result.append((start, end))
    return result
