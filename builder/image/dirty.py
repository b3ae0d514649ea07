"""The output's chunk digest without reading the whole output: which bytes a build wrote into its fresh copy of the
base, and the base's own chunk digests, remembered.

A build's output starts as a byte-exact copy of its base (builder.image.copy.sparse_copy), so every 4 MiB chunk
the edits leave alone has the base's chunk digest; only the chunks they wrote are read again. What was written:
  - ext4: debugfs runs with `-z UNDO` and saves every block before it overwrites it (e2fsprogs
    lib/ext2fs/undo_io.c); the undo file's keys are the ranges written. The primary superblock is added by hand:
    libext2fs writes it through write_byte, whose undo record is taken at twice the filesystem's offset (e2fsprogs
    1.47). Past the end of the image that read fails, and with it the superblock's write: such a filesystem (a
    small image) is not run with `-z` and counts whole.
  - FAT: mtools says nothing of what it writes, so the whole partition counts (or as far as its boot sector says
    the filesystem reaches, if that is further).
  - anything else (resize2fs when an offline bundle grows the root, an undo file that cannot be read): unknown, and
    the output is digested in full, as are outputs of another size than their base.
The base's chunk digests are kept in CACHE/images/chunks/, one record per base file, valid for its (path, size,
mtime) as the cache's SHA-256 index is; the first build from a base digests the base once to make it.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..cache import CHUNK_RECORDS
from ..outputs import write_atomic
from ..progress import Advance, no_progress
from .copy import CHUNK, chunk_digests, combined
from .inputs import default_cache_dir
from .superblock import SUPERBLOCK_OFFSET

if TYPE_CHECKING:
    from . import DiskImage

Ranges = list[tuple[int, int]]  # [start, end) byte ranges of an image file

UNDO_MAGIC = b"E2UNDO02"
UNDO_HEADER = struct.Struct("<8sQQQII")  # magic, keys, superblock copy, first key block, block size, fs block size
UNDO_KEY_BLOCK = struct.Struct("<IIQ")  # magic, crc, reserved; the keys follow
UNDO_KEY = struct.Struct("<QII")  # fs block, crc, bytes
KEY_BLOCK_MAGIC = 0xCADECADE
SUPERBLOCK_BYTES = 1024
DIGEST_BYTES = 32
UNDO_READ_MAX = 1 << 20  # what debugfs reads at twice the offset: an undo block (at most 1 MiB, undo_io.c)


@dataclass
class WriteLog:
    """What was written into one image file while it was tracked."""

    ranges: Ranges = field(default_factory=list)
    complete: bool = True  # False once something wrote without saying where


_TRACKED: dict[tuple[int, int], WriteLog] = {}  # (st_dev, st_ino) -> its log


def _identity(path: Path) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


@contextmanager
def track_writes(image: Path) -> Iterator[WriteLog]:
    """Collect what writers say they wrote into the existing file `image` (note_written) while the block runs."""
    key = _identity(image)
    log = _TRACKED[key] = WriteLog()
    try:
        yield log
    finally:
        _TRACKED.pop(key, None)


def note_written(image: Path, ranges: Ranges | None) -> None:
    """A writer's report: it wrote `ranges` of `image` (None: it cannot say where). Untracked files: nothing."""
    log = _TRACKED.get(_identity(image))
    if log is None:
        return
    if ranges is None:
        log.complete = False
    else:
        log.ranges += ranges


def undo_file(image: Path, fs_offset: int, directory: Path) -> Path | None:
    """Where debugfs is to save what it overwrites in the ext4 at `fs_offset` of `image` (`-z`): in `directory`,
    if `image` is tracked and its size lets the undo file be made (see the module docstring); else None."""
    if _identity(image) not in _TRACKED or os.stat(image).st_size < 2 * fs_offset + UNDO_READ_MAX:
        return None
    return directory / "undo"


def note_debugfs_written(image: Path, fs_offset: int, fs_size: int, undo: Path | None) -> None:
    """A `debugfs -w` run on the ext4 of `fs_size` bytes at `fs_offset` of `image` ended: it wrote what its undo
    file says, or anywhere in the filesystem without one."""
    note_written(image, undo_ranges(undo, fs_offset) if undo else [(fs_offset, fs_offset + fs_size)])


def undo_ranges(undo: Path, fs_offset: int) -> Ranges | None:
    """The ranges of the image that the debugfs run which wrote the undo file `undo` (`-z`) for the filesystem at
    `fs_offset` overwrote, the primary superblock included; None if the file does not read as an undo file."""
    try:
        data = undo.read_bytes()
    except FileNotFoundError:
        return None
    if len(data) < UNDO_HEADER.size or not data.startswith(UNDO_MAGIC):
        return None
    _, keys, _, block, block_size, fs_block_size = UNDO_HEADER.unpack_from(data)
    superblock = (fs_offset + SUPERBLOCK_OFFSET, fs_offset + SUPERBLOCK_OFFSET + SUPERBLOCK_BYTES)
    if keys == 0:
        return [superblock]
    if not block_size or not fs_block_size:
        return None
    per_block = block_size // UNDO_KEY.size - 1
    ranges = [superblock]
    while keys:
        key_block = data[block * block_size:(block + 1) * block_size]
        if len(key_block) < block_size or UNDO_KEY_BLOCK.unpack_from(key_block)[0] != KEY_BLOCK_MAGIC:
            return None
        block += 1
        for n in range(min(keys, per_block)):
            fs_block, _, size = UNDO_KEY.unpack_from(key_block, UNDO_KEY_BLOCK.size + n * UNDO_KEY.size)
            start = fs_offset + fs_block * fs_block_size
            ranges.append((start, start + size))
            block += -(-size // block_size)  # the saved data follows its key block
        keys -= min(keys, per_block)
    return ranges


def written_ranges(image: DiskImage, log: WriteLog) -> Ranges | None:
    """Everything a build may have written into `image` while `log` tracked it: the ranges its writers reported
    and every FAT partition whole; None if some write went unreported."""
    if not log.complete:
        return None
    fat = [(p.start, p.start + max(p.size, _fat_extent(image.path, p.start)))
           for p in image.partitions if p.fs and p.fs.startswith("fat")]
    return log.ranges + fat


def _fat_extent(image: Path, offset: int) -> int:
    """Bytes the FAT at `offset` says it spans (its boot sector: bytes per sector x total sectors)."""
    with open(image, "rb") as f:
        boot = os.pread(f.fileno(), 36, offset)
    if len(boot) < 36:
        return 0
    sector, small_total = struct.unpack_from("<H", boot, 11)[0], struct.unpack_from("<H", boot, 19)[0]
    return sector * (small_total or struct.unpack_from("<I", boot, 32)[0])


def output_chunk_digest(output: Path, base: Path, written: Ranges | None, advance: Advance = no_progress,
                        cache_dir: Path | None = None) -> str:
    """builder.image.copy.chunk_digest of `output`, a copy of `base` changed at most in `written`: the base's
    remembered chunk digests with the chunks written read again. In full when `written` is None or the sizes
    differ."""
    size = output.stat().st_size
    if written is None or base.stat().st_size != size:
        return combined(dict(chunk_digests(output, advance=advance)))
    digests = base_chunk_digests(base, cache_dir, advance)
    for index, digest in chunk_digests(output, sorted(_chunks_of(written, size)), advance):
        digests[index] = digest
    advance(size)
    return combined(digests)


def _chunks_of(ranges: Ranges, size: int) -> set[int]:
    """Indices of the CHUNKs of a file of `size` bytes that `ranges` touch."""
    last = -(-size // CHUNK) - 1
    return {i for start, end in ranges if end > start and start < size
            for i in range(start // CHUNK, min((end - 1) // CHUNK, last) + 1)}


def base_chunk_digests(base: Path, cache_dir: Path | None = None,
                       advance: Advance = no_progress) -> dict[int, bytes]:
    """The chunk digests of `base`, by chunk index: remembered, else computed (all chunks) and remembered."""
    st = base.stat()
    count = -(-st.st_size // CHUNK)
    key = f"{base.resolve()}:{st.st_size}:{st.st_mtime_ns}:{CHUNK}\n".encode()
    directory = (cache_dir or default_cache_dir()) / CHUNK_RECORDS
    record = directory / f"{hashlib.sha256(str(base.resolve()).encode()).hexdigest()[:32]}.sha256s"
    try:
        known = record.read_bytes()
    except OSError:
        known = b""
    if known.startswith(key) and len(known) == len(key) + count * DIGEST_BYTES:
        body = known[len(key):]
        return {i: body[i * DIGEST_BYTES:(i + 1) * DIGEST_BYTES] for i in range(count)}
    digests = dict(chunk_digests(base, advance=advance))
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_atomic(record, key + b"".join(digests[i] for i in range(count)), 0o600)
    except OSError:
        pass  # not remembered (a full or read-only cache): the next build digests the base again
    return digests
