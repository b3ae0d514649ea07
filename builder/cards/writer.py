"""The writer engine: put a raw image on a card (a block device or a file), verify it by reading it back, and write
the partition table last.

    blank the table region --> write the ranges that matter --> fsync --> read back, compare -->
    hook(card) --> fsync --> partition table region last --> fsync, read back

Only the image's `UsageMap` ranges are written (builder.image.usage: what its filesystems use, plus everything
pi-image cannot read); free blocks keep the card's old bytes, which nothing references. All-zero chunks are made zero
without writing them where the device can (`Zeroer`). The partition table goes on last: until then the card's first
MiB (and a GPT backup's place at its end) is blank, so an interrupted write never leaves a card that looks valid.
Verification reads the card itself, with its page cache dropped, never the bytes that were sent.

The engine knows nothing of what the image is for: a caller that must change the card before it becomes valid (the
flash stamping a node, builder.cards.stamp) passes a `BeforeTable` hook, called with the `OpenCard` once every range
is written and verified; whatever the hook writes is synced before the table goes on. Anything that fails or
interrupts the write after it began (the hook included) leaves no table: a file the engine created is removed, any
other card is reported as `FlashInterrupted`.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import queue
import struct
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

from ..errors import UserError
from ..image.copy import start_writeback
from ..image.partitions import TABLE_BYTES
from ..image.usage import Range, UsageMap
from ..progress import human_size, progress
from .devices import Device

CHUNK = 1 << 20  # bytes per write (large and aligned), and the unit all-zero data is found in
BATCH = 64 << 20  # bytes synced and then verified together
ZEROS = bytes(CHUNK)
BLKZEROOUT = 0x127F  # _IO(0x12, 127): zero a byte range of a block device
ZERO_RANGE = 0x11  # FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE: the blocks stay allocated, marked as reading zeros
PUNCH_HOLE = 0x03  # FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE (tmpfs and btrfs have no ZERO_RANGE)
_LIBC = ctypes.CDLL(None, use_errno=True)
_FALLOCATE = _LIBC.fallocate64  # 64-bit offsets on 32-bit hosts too (armhf)
_FALLOCATE.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]

Chunk = tuple[int, int]  # (offset, length)


class FlashInterrupted(UserError):
    """The flash stopped after it began writing: the card has no partition table now."""


@dataclass(frozen=True)
class OpenCard:
    """The card as the engine holds it when the hook runs: every range written (and verified), its table region
    still blank."""

    path: Path  # the device or file, as the user named it
    fd: int  # open for writing
    image: Path  # the raw image being written: its partition table is the one the card gets last

    def sync(self) -> None:
        """Make everything written to the card so far durable (the engine does so after the hook, too)."""
        os.fsync(self.fd)


BeforeTable = Callable[[OpenCard], None]  # called once, after the ranges and before the partition table


@dataclass(frozen=True)
class WriteOptions:
    """How to write: `verify` reads every written range back from the card and compares it with the image."""

    verify: bool = True


@dataclass
class WriteStats:
    """What the engine did; updated as it goes (an interrupted write reports how far it got)."""

    written: int = 0  # bytes of the image put on the card (written, or zeroed where they are all zeros)
    zeroed: int = 0  # of those, all-zero chunks made zero without writing them
    verified: int = 0  # bytes read back from the card and compared


@dataclass
class _Job:
    """One write: what goes where, and how far it got."""

    image: Path
    usage: UsageMap
    device: Device
    options: WriteOptions
    before_table: BeforeTable | None
    created: bool  # the engine creates the file it writes to (removed again if the write fails)
    stats: WriteStats = field(default_factory=WriteStats)


def write_card(image: Path, usage: UsageMap, device: Device, options: WriteOptions,
               before_table: BeforeTable | None = None) -> WriteStats:
    """Write the raw image `image` (whose ranges that matter are `usage`) to `device`: blank the table region, write
    and verify the ranges, call `before_table` with the open card, then write and verify the table region. Raises
    FlashInterrupted (or, for a file it created, the error itself, after removing the file) if it stops after
    writing began."""
    job = _Job(image, usage, device, options, before_table,
               created=device.kind == "file" and not device.path.exists())
    flags = os.O_WRONLY | os.O_CLOEXEC | (os.O_CREAT if device.kind == "file" else os.O_EXCL)
    with open(image, "rb") as source:
        out = os.open(device.path, flags, 0o600)
        try:
            _write_opened(job, source.fileno(), out)
        except BaseException as err:
            _interrupted(err, job)
        finally:
            os.close(out)
    return job.stats


def _write_opened(job: _Job, source: int, out: int) -> None:
    """The write itself, on the card open as `out` (see write_card)."""
    device, size = job.device, job.usage.size
    if device.kind == "file":
        os.fchmod(out, 0o600)  # a card's bytes may hold a credential or a cluster's keys
        if os.fstat(out).st_size < size:
            os.ftruncate(out, size)
    _blank_tables(out, device, size)
    verify = job.options.verify
    copy = _Copy(source, out, device.path, verify, Zeroer(out, device.kind, job.created), job.stats)
    copy.run(job.usage.ranges, f"{device.path}: writing" + (" and verifying" if verify else ""))
    if verify:  # a fake-capacity card wraps late writes onto early blocks: read the first ones again
        copy.reread(next(_batches(job.usage.ranges), []))
    if job.before_table is not None:
        card = OpenCard(device.path, out, job.image)
        job.before_table(card)
        card.sync()  # what the hook wrote is on the card before the table makes it valid
    copy.run(job.usage.last, f"{device.path}: partition table")


def _interrupted(err: BaseException, job: _Job) -> NoReturn:
    """After writing began: a file this write created is removed; anything else is told it holds no table now."""
    if job.created:
        job.device.path.unlink(missing_ok=True)
        raise err
    what = "interrupted" if isinstance(err, KeyboardInterrupt) else f"failed ({err})"
    raise FlashInterrupted(f"the flash {what} after {human_size(job.stats.written)}: {job.device.path} holds no "
                           "partition table now (nothing boots it or mistakes it for a node); run the same "
                           "command again") from None


def _blank_tables(out: int, device: Device, image_size: int) -> None:
    """Zero where partition tables live (the first MiB, and a GPT backup at the device's end), so until the engine
    writes the image's own table last, the card holds no valid one."""
    size = max(device.size, image_size)
    for start in sorted({0, max(0, size - TABLE_BYTES)}):
        _pwrite_all(out, bytes(min(TABLE_BYTES, size - start)), start)
    os.fsync(out)


def chunks(ranges: list[Range]) -> Iterator[Chunk]:
    """`ranges` ((start, end) pairs) cut into (offset, length) chunks of at most CHUNK bytes."""
    for start, end in ranges:
        for pos in range(start, end, CHUNK):
            yield pos, min(CHUNK, end - pos)


def _batches(ranges: list[Range]) -> Iterator[list[Chunk]]:
    """The chunks of `ranges` in groups of about BATCH bytes: each is synced, then read back while the next is
    written."""
    batch: list[Chunk] = []
    size = 0
    for chunk in chunks(ranges):
        batch.append(chunk)
        size += chunk[1]
        if size >= BATCH:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


@dataclass
class _Copy:
    """Writes ranges of the image to the card as a pipeline, so that reading the image, writing the card and reading
    it back overlap: the next batch of the image is read ahead (POSIX_FADV_WILLNEED) while one is copied, the card
    starts writing each batch out as soon as it is copied (sync_file_range), and with `verify` a second thread syncs
    each batch, drops its cached pages and reads it back from the card, comparing it with the image, while the next
    batches are written (at most two batches behind)."""

    source: int
    out: int
    path: Path
    verify: bool
    zeroer: Zeroer  # how all-zero chunks are put on the card without writing them
    stats: WriteStats

    def run(self, ranges: list[Range], label: str) -> None:
        """Write (and verify) `ranges`; fsync at the end."""
        total = sum(end - start for start, end in ranges)
        pending: queue.Queue[list[Chunk] | None] = queue.Queue(maxsize=2)
        failure: list[BaseException] = []
        card = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC) if self.verify else -1
        checker = threading.Thread(target=self._check, args=(card, pending, failure), daemon=True)
        if self.verify:
            checker.start()
        done = 0
        try:
            with progress(label, total) as advance:
                batches = _batches(ranges)
                batch = next(batches, None)
                while batch is not None and not failure:
                    following = next(batches, None)
                    if following is not None:
                        self._read_ahead(following)
                    for pos, length in batch:
                        self._write(pos, length)
                        done += length
                        advance(done)
                    _start_writeback(self.out, batch)
                    if self.verify:
                        pending.put(batch)
                    batch = following
                os.fsync(self.out)
        finally:
            if self.verify:
                pending.put(None)
                checker.join()
                os.close(card)
        if failure:
            raise failure[0]

    def reread(self, batch: list[Chunk]) -> None:
        """Read `batch` back from the card once more (its cached pages dropped) and compare it with the image."""
        card = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.posix_fadvise(card, 0, 0, os.POSIX_FADV_DONTNEED)
            compare(self.source, card, self.path, batch)
        finally:
            os.close(card)

    def _read_ahead(self, batch: list[Chunk]) -> None:
        """Have the kernel read `batch` of the image in the background while the batch before it is copied."""
        start, end = batch[0][0], batch[-1][0] + batch[-1][1]
        os.posix_fadvise(self.source, start, end - start, os.POSIX_FADV_WILLNEED)

    def _write(self, pos: int, length: int) -> None:
        data = os.pread(self.source, length, pos)
        if len(data) != length:
            raise UserError(f"the image shrank while being written (at byte {pos})")
        if data == ZEROS[:length]:
            self.zeroer.zero(pos, length)
            self.stats.zeroed += length
        else:
            _pwrite_all(self.out, data, pos)
        self.stats.written += length

    def _check(self, card: int, pending: queue.Queue[list[Chunk] | None], failure: list[BaseException]) -> None:
        try:
            for batch in iter(pending.get, None):
                if not failure:
                    start, end = batch[0][0], batch[-1][0] + batch[-1][1]
                    os.fdatasync(self.out)  # on the card (clean pages, which the kernel can drop) before read back
                    os.posix_fadvise(card, start, end - start, os.POSIX_FADV_DONTNEED)
                    self.stats.verified += compare(self.source, card, self.path, batch)
        except BaseException as err:  # handed to the writer, which raises it
            failure.append(err)
            for _ in iter(pending.get, None):  # let the writer finish putting
                pass


def _start_writeback(out: int, batch: list[Chunk]) -> None:
    """Start writing `batch`'s dirty pages to the card now, not when the final fsync comes (the page cache would
    otherwise hold a whole image before the card is sent a byte); a device or kernel that cannot is left to fsync."""
    start, end = batch[0][0], batch[-1][0] + batch[-1][1]
    start_writeback(out, start, end - start)


def compare(source: int, card: int, path: Path, batch: list[Chunk]) -> int:
    """Compare the (offset, length) chunks `batch` of the card (open as `card`, named `path` in messages) with the
    image (open as `source`); return the bytes compared, or raise UserError naming the first byte that differs."""
    done = 0
    for pos, length in batch:
        want, got = os.pread(source, length, pos), os.pread(card, length, pos)
        if want != got:
            raise UserError(f"verification failed: {path} differs from the image at byte "
                            f"{_first_difference(want, got) + pos} (a failing card or reader?): try another card, "
                            "or flash again")
        done += length
    return done


def _first_difference(want: bytes, got: bytes) -> int:
    if len(got) != len(want):
        return min(len(got), len(want))
    return next(i for i, (a, b) in enumerate(zip(want, got, strict=True)) if a != b)


class Zeroer:
    """Makes a range of the card read as zeros the cheapest way it can: nothing on a file this write created (it
    reads as zeros), an existing file's range zeroed in its extents (ZERO_RANGE: no data written, and a tenth of what
    punching a hole costs ext4) or else a punched hole, BLKZEROOUT on a block device (the card's own write-zeroes or
    discard where it has one; the kernel writes the zeros otherwise), else plain writes of zeros."""

    def __init__(self, out: int, kind: str, new_file: bool):
        self.out, self.kind, self.new_file = out, kind, new_file
        self.modes: list[int | str] = [] if new_file else ["block"] if kind == "block" else [ZERO_RANGE, PUNCH_HOLE]

    def zero(self, pos: int, length: int) -> None:
        """Make [pos, pos+length) read as zeros."""
        if self.new_file:
            return
        while self.modes:
            try:
                if self.modes[0] == "block":
                    fcntl.ioctl(self.out, BLKZEROOUT, struct.pack("=QQ", pos, length))
                elif _FALLOCATE(self.out, self.modes[0], pos, length) != 0:
                    raise OSError(ctypes.get_errno(), "fallocate")
                return
            except OSError:
                self.modes.pop(0)  # this device or filesystem cannot: the next way, from now on
        _pwrite_all(self.out, ZEROS[:length], pos)


def _pwrite_all(out: int, data: bytes, pos: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(out, view, pos)
        view, pos = view[n:], pos + n
