"""The `.bmap` file of an image: the block map bmaptool reads (format 2.0, SHA-256 per range), for users who flash
with `bmaptool copy --bmap IMAGE.bmap IMAGE DEVICE` or on another machine.

Its ranges are the image's usage map (builder.image.usage): what the image's filesystems use, not merely what is
not a hole, so a bmaptool flash over a used card is as sound as pi-image's own. bmaptool writes ranges in file
order, so unlike `pi-image flash` it writes the partition tables first. The file checksum is computed the way
bmaptool checks it: the SHA-256 of the whole file with the checksum's own 64 digits written as "0".

A build names it after the exact file it describes, node.img.xz.bmap for node.img.xz (builder.build.bmap_name):
bmaptool looks for IMAGE.bmap before it strips extensions, and two outputs never share one.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from pathlib import Path

from ..errors import UserError
from ..outputs import write_atomic
from ..progress import Advance, human_size, no_progress
from .usage import BLOCK_SIZE, UsageMap

BMAP_VERSION = "2.0"
CHECKSUM_TYPE = "sha256"
READ_CHUNK = 4 << 20
PLACEHOLDER = "0" * hashlib.new(CHECKSUM_TYPE).digest_size * 2

Blocks = tuple[int, int]  # inclusive (first, last) block numbers, as a bmap writes them


def mapped_ranges_blocks(usage: UsageMap) -> list[Blocks]:
    """Every block a card receives (the ranges and the partition tables), as sorted, merged, inclusive runs of
    BLOCK_SIZE block numbers (the image's last block may be partial)."""
    runs: list[Blocks] = []
    for start, end in sorted((*usage.ranges, *usage.last)):
        first, last = start // BLOCK_SIZE, (end - 1) // BLOCK_SIZE
        if runs and first <= runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], max(runs[-1][1], last))
        else:
            runs.append((first, last))
    return runs


def write_bmap(image: Path, usage: UsageMap, dest: Path, advance: Advance = no_progress) -> None:
    """Write the bmap of `image` (mapped as `usage`) to `dest`, atomically; `advance` is told how many of the
    mapped bytes (`usage.mapped_bytes()`) have been hashed."""
    runs = mapped_ranges_blocks(usage)
    with open(image, "rb") as f:
        if os.fstat(f.fileno()).st_size != usage.size:
            raise UserError(f"{image}: the image changed size since it was mapped: map it again")
        body = _block_map(f.fileno(), usage.size, runs, advance)
        mode = stat.S_IMODE(os.fstat(f.fileno()).st_mode) & 0o644  # no more readable than the image
    mapped = sum(last - first + 1 for first, last in runs)
    blocks = -(-usage.size // BLOCK_SIZE)
    text = _header(usage.size, blocks, mapped) + body + "    </BlockMap>\n</bmap>\n"
    checksum = hashlib.new(CHECKSUM_TYPE, text.encode()).hexdigest()
    _write_atomically(dest, text.replace(PLACEHOLDER, checksum, 1), mode)


def _block_map(fd: int, size: int, runs: list[Blocks], advance: Advance) -> str:
    """The <Range> lines of `runs`, each with the checksum of its bytes in the open image `fd`."""
    lines, done = [], 0
    for first, last in runs:
        digest = hashlib.new(CHECKSUM_TYPE)
        position, end = first * BLOCK_SIZE, min(size, (last + 1) * BLOCK_SIZE)
        while position < end:
            chunk = os.pread(fd, min(READ_CHUNK, end - position), position)
            if not chunk:
                raise UserError(f"the image shrank while its bmap was written (at byte {position})")
            digest.update(chunk)
            position += len(chunk)
            advance(done + position - first * BLOCK_SIZE)
        done += end - first * BLOCK_SIZE
        blocks = f"{first}-{last}" if last != first else f"{first}"
        lines.append(f'        <Range chksum="{digest.hexdigest()}"> {blocks} </Range>\n')
    return "".join(lines)


def _header(size: int, blocks: int, mapped: int) -> str:
    """Everything before the ranges, with the file checksum still PLACEHOLDER."""
    share = f"{human_size(mapped * BLOCK_SIZE)} or {100 * mapped / max(blocks, 1):.1f}%"
    return (
        '<?xml version="1.0" ?>\n'
        "<!-- The block map of a disk image made by pi-image: the blocks a card must receive (partition tables,\n"
        "     filesystem metadata, files, partitions pi-image cannot read); the others may keep any content.\n"
        "     bmaptool copy IMAGE DEVICE finds it beside IMAGE, under IMAGE's name with .bmap added. -->\n\n"
        f'<bmap version="{BMAP_VERSION}">\n'
        f"    <!-- Image size in bytes: {human_size(size)} -->\n"
        f"    <ImageSize> {size} </ImageSize>\n\n"
        "    <!-- Size of a block in bytes -->\n"
        f"    <BlockSize> {BLOCK_SIZE} </BlockSize>\n\n"
        "    <!-- Count of blocks in the image file -->\n"
        f"    <BlocksCount> {blocks} </BlocksCount>\n\n"
        f"    <!-- Count of mapped blocks: {share} -->\n"
        f"    <MappedBlocksCount> {mapped} </MappedBlocksCount>\n\n"
        "    <!-- Type of checksum used in this file -->\n"
        f"    <ChecksumType> {CHECKSUM_TYPE} </ChecksumType>\n\n"
        "    <!-- The checksum of this bmap file, computed with this value all \"0\" -->\n"
        f"    <BmapFileChecksum> {PLACEHOLDER} </BmapFileChecksum>\n\n"
        "    <!-- The mapped block ranges, each with the checksum of its bytes -->\n"
        "    <BlockMap>\n"
    )


def _write_atomically(dest: Path, text: str, mode: int) -> None:
    """`text` at `dest`, complete or not at all (outputs.write_atomic); a failure is one line."""
    try:
        write_atomic(dest, text, mode)
    except OSError as err:
        full = err.errno in (errno.ENOSPC, errno.EDQUOT)
        why = "no space left on its device" if full else err.strerror or str(err)
        raise UserError(f"cannot write {dest}: {why}") from None
