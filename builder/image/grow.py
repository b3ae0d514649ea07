"""Grow a disk image's last partition and the ext4 filesystem in it, offline and without root.

The file is extended (sparse), `sfdisk` moves a GPT's backup to the new end and enlarges the partition's entry, and
`resize2fs` grows the filesystem. resize2fs is not pointed at `IMAGE?offset=N`: it accepts that, but on a regular
file it then truncates the *file* to the new filesystem size, ignoring the offset, which cuts the end of the
filesystem off. It grows a sparse copy of the partition next to the image instead, which is then written back.
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ..errors import ToolError, UserError
from ..run import run, summarize
from .copy import CHUNK, copy_range, extents
from .partitions import SECTOR, Partition, read_partitions
from .superblock import INCOMPAT_RECOVER, STATE_ERRORS, STATE_VALID, read_superblock

MIB = 1 << 20
GPT_BACKUP = 33 * SECTOR  # backup GPT header and 128 entries after the last usable sector
SFDISK = ["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel"]


def grow_root(image: Path, extra_bytes: int, description: str) -> int:
    """Grow the raw disk image file `image` so that its LAST partition (which must hold an ext4 filesystem) and
    that ext4 filesystem gain at least `extra_bytes`; return the new image size in bytes.

    `description` names the image in error messages. Refusals leave the image as it was; a tool failing midway may
    leave it half grown: callers work on a temporary copy and discard it.
    """
    size = image.stat().st_size
    table, partitions = read_partitions(image, size)
    last = max(partitions, key=lambda p: p.start + p.size)
    block_size, fs_size = _check_growable(image, table, last, description)
    tail = GPT_BACKUP if table == "gpt" else 0
    needed_end = last.start + max(last.size, fs_size) + _round_up(extra_bytes, block_size)
    new_size = _round_up(max(size, needed_end + tail), MIB)
    try:
        grown = _grow_partition(image, last, table, new_size)
        if grown.start != last.start or grown.start + grown.size < needed_end:
            raise UserError(f"{description}: sfdisk made {last.description} {grown.size} bytes at byte "
                            f"{grown.start}, short of the {needed_end - last.start} bytes it needs at {last.start}")
        _grow_ext4(image, grown, grown.size // block_size)
    except ToolError as err:
        raise UserError(f"{description}: growing {last.description} failed: {err}") from None
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise UserError(f"{description}: no space left on the device of {image.parent} to grow it: free some space "
                        f"there") from None
    _fsck(image, last, f"{description}: {last.description} is not clean after growing it")
    return new_size


def _check_growable(image: Path, table: str, last: Partition, description: str) -> tuple[int, int]:
    """Refuse unless `last` holds a clean ext4; its (block size, size in bytes)."""
    sb = read_superblock(image, last.start)
    what = f"{description}: cannot grow {last.description}"
    fix = "use an image whose root filesystem (ext4) is its last partition, or do not grow it"
    if table not in ("msdos", "gpt"):
        raise UserError(f"{description}: cannot grow a '{table}' disk (only MBR and GPT tables): {fix}")
    if sb is None or sb.kind != "ext4":
        raise UserError(f"{what}, the last on the disk: it holds no ext4 filesystem: {fix}")
    if sb.incompat & INCOMPAT_RECOVER or sb.state & STATE_ERRORS or not sb.state & STATE_VALID:
        raise UserError(f"{what}: its filesystem needs journal recovery, has errors or was not cleanly unmounted: "
                        f"run e2fsck -f on it (or boot it once and shut it down cleanly), then try again")
    # Checked here, read-only, so that resize2fs -f need not demand `e2fsck -f` of an image ever mounted.
    _fsck(image, last, f"{what}: its filesystem has errors: run e2fsck -f on it, then try again")
    return sb.block_size, sb.size


def _fsck(image: Path, part: Partition, message: str) -> None:
    """Raise UserError(`message` and e2fsck's findings) unless `e2fsck -fn` finds the ext4 in `part` clean."""
    check = run(["e2fsck", "-fn", f"{image}?offset={part.start}"], check=False)
    if check.returncode != 0:
        raise UserError(f"{message} (e2fsck -fn exit {check.returncode}: {summarize(check.stdout + check.stderr)})")


def _round_up(value: int, unit: int) -> int:
    return -(-value // unit) * unit


def _grow_partition(image: Path, last: Partition, table: str, new_size: int) -> Partition:
    """Extend the file to `new_size` and `last` to the end of the disk; the partition as the new table has it."""
    os.truncate(image, new_size)
    if table == "gpt":  # the backup header and entries belong in the last 33 sectors of the disk
        run([*SFDISK, "--relocate", "gpt-bak-std", str(image)])
    run([*SFDISK, "-N", str(last.number), str(image)], input=b", +\n")  # same start, up to the last usable sector
    return next(p for p in read_partitions(image, new_size)[1] if p.number == last.number)


def _grow_ext4(image: Path, part: Partition, blocks: int) -> None:
    """Resize the ext4 in `part` to `blocks` filesystem blocks, on a sparse copy next to the image."""
    with tempfile.TemporaryDirectory(prefix="pi-image-grow-", dir=image.parent) as tmp:
        copy = Path(tmp) / "root.ext4"
        copy_range(image, part.start, part.size, copy)
        run(["resize2fs", "-f", str(copy), str(blocks)])
        _copy_back(copy, image, part.start)


def _copy_back(copy: Path, image: Path, offset: int) -> None:
    """Write `copy` into `image` at `offset` wherever either holds data (a hole in `copy` is written as zeros
    where the image has data: resize2fs zeroes blocks by punching holes)."""
    with open(copy, "rb") as src, open(image, "r+b") as dst:
        length = os.fstat(src.fileno()).st_size
        spans = list(extents(src.fileno(), length))
        spans += [(s - offset, e - offset) for s, e in extents(dst.fileno(), offset + length) if e > offset]
        for start, end in _merged(spans):
            for pos in range(max(start, 0), end, CHUNK):
                data = os.pread(src.fileno(), min(CHUNK, end - pos), pos)
                os.pwrite(dst.fileno(), data.ljust(min(CHUNK, end - pos), b"\0"), offset + pos)


def _merged(spans: list[tuple[int, int]]) -> Iterator[tuple[int, int]]:
    """The union of the (start, end) byte ranges `spans`, in order."""
    current: tuple[int, int] | None = None
    for start, end in sorted(spans):
        if current and start <= current[1]:
            current = (current[0], max(current[1], end))
            continue
        if current:
            yield current
        current = (start, end)
    if current:
        yield current
