"""The ext2/3/4 superblock, read with struct from the image itself: no tool needed to tell what a partition holds."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

EXT4_MAGIC = 0xEF53
SUPERBLOCK_OFFSET = 1024
INCOMPAT_RECOVER = 0x4  # "needs_recovery": the journal holds writes not yet replayed
INCOMPAT_EXTENTS = 0x40
INCOMPAT_EA_INODE = 0x400  # big xattr values live in inodes of their own
STATE_VALID = 0x1  # s_state: cleanly unmounted
STATE_ERRORS = 0x2


@dataclass(frozen=True)
class Superblock:
    """The few superblock fields pi-image needs (read with struct, no tool needed)."""

    block_size: int
    blocks: int
    label: str
    state: int
    incompat: int
    free_blocks: int = 0
    reserved_blocks: int = 0  # kept for root: a full filesystem still lets root's daemons write

    @property
    def size(self) -> int:
        return self.block_size * self.blocks

    @property
    def free_bytes(self) -> int:
        """Bytes anyone may still use, as the superblock counts them (an image cleanly unmounted keeps it right)."""
        return max(0, self.free_blocks - self.reserved_blocks) * self.block_size

    @property
    def kind(self) -> str:
        return "ext4" if self.incompat & INCOMPAT_EXTENTS else "ext2/3"


def read_superblock(image: Path, offset: int) -> Superblock | None:
    """The ext2/3/4 superblock of the filesystem at `offset`, or None if there is none."""
    with open(image, "rb") as f:
        f.seek(offset + SUPERBLOCK_OFFSET)
        raw = f.read(1024)
    if len(raw) < 1024 or struct.unpack_from("<H", raw, 0x38)[0] != EXT4_MAGIC:
        return None
    log_block = struct.unpack_from("<I", raw, 0x18)[0]
    wide = bool(struct.unpack_from("<I", raw, 0x60)[0] & 0x80)  # INCOMPAT_64BIT: counts have high words

    def count(low: int, high: int) -> int:
        return struct.unpack_from("<I", raw, low)[0] | ((struct.unpack_from("<I", raw, high)[0] << 32) if wide else 0)

    return Superblock(
        block_size=1024 << min(log_block, 6),
        blocks=count(0x4, 0x150),
        label=raw[0x78:0x88].split(b"\0", 1)[0].decode("utf-8", errors="replace"),
        state=struct.unpack_from("<H", raw, 0x3A)[0],
        incompat=struct.unpack_from("<I", raw, 0x60)[0],
        free_blocks=count(0xC, 0x158),
        reserved_blocks=count(0x8, 0x154),
    )
