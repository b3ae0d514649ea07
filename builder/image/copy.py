"""Fast, sparse copies and digests of big image files.

A copy is a reflink (FICLONE: instant, shares blocks) where the filesystem allows, else the data extents only
(SEEK_DATA/SEEK_HOLE), moved in the kernel with copy_file_range, or read and written when the kernel cannot copy
between the two filesystems: holes stay holes either way. A copy that is to be fsync'd (`write_back`: a build's
output, which debugfs fsyncs at each run and the build before it publishes it) is sent to the disk a step at a time
while the next step is copied (sync_file_range): the fsyncs then find it written, instead of writing all of it while
the build waits (1 GiB on the 2-core development VM: copy + fsync 0.62 s instead of 1.03 s).

Digests read data extents only. `sha256_sparse` is the plain SHA-256 of the whole file (holes fed as zeros from
memory: no disk reads, but CPU for every byte). `chunk_digest` is a SHA-256 over the SHA-256s of each 4 MiB chunk,
with all-zero chunks (holes) taken from one precomputed digest: its cost follows the data, not the image size, and
its chunks are read and hashed by several threads at once (pread and hashlib let go of the GIL).

Each long function reports how far it got (bytes of the file, holes included) to an `Advance` (builder.progress).
"""

from __future__ import annotations

import bisect
import ctypes
import errno
import fcntl
import hashlib
import os
import threading
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..errors import UserError
from ..progress import Advance, no_progress

FICLONE = 0x40049409
CHUNK = 4 << 20
ZEROS = bytes(CHUNK)
ZERO_CHUNK_DIGEST = hashlib.sha256(ZEROS).digest()
KERNEL_CANNOT_COPY = (errno.EXDEV, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOSYS)
HASH_THREADS = min(4, os.cpu_count() or 1)
COPY_STEP = 16 << 20  # bytes copied between two starts of write-back
PROGRESS_POLL = 0.1  # seconds between two progress reports of a BackgroundCopy
SYNC_FILE_RANGE_WRITE = 0x2  # start writeback of a range's dirty pages, without waiting for it
_SYNC_FILE_RANGE = ctypes.CDLL(None, use_errno=True).sync_file_range
_SYNC_FILE_RANGE.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]


def extents(fd: int, size: int) -> Iterator[tuple[int, int]]:
    """(start, end) of each data extent of the open file `fd` of `size` bytes (a block device is all data)."""
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as err:
            if err.errno == errno.ENXIO:  # only a hole remains
                return
            if err.errno == errno.EINVAL and pos == 0:  # no holes to ask about here (a block device)
                yield 0, size
                return
            raise
        end = os.lseek(fd, start, os.SEEK_HOLE)
        yield start, min(end, size)
        pos = end


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Start writing the dirty pages of [offset, offset+length) of the open file `fd` to its disk, without waiting;
    a file or kernel that cannot is left to the next fsync."""
    _SYNC_FILE_RANGE(fd, offset, length, SYNC_FILE_RANGE_WRITE)


def sparse_copy(src: Path, dst: Path, advance: Advance = no_progress, *, write_back: bool = False) -> None:
    """Copy `src` to the new file `dst`, keeping holes (a reflink where the filesystem can); with
    `write_back`, start writing it to the disk as it is copied (the caller fsyncs it: see the module docstring)."""
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        try:
            fcntl.ioctl(fout.fileno(), FICLONE, fin.fileno())
            return
        except OSError:
            pass  # not a reflink-capable filesystem (or not the same one): copy the data extents
        size = os.fstat(fin.fileno()).st_size
        _copy_extents(fin.fileno(), fout.fileno(), 0, size, dst, advance, write_back)


class BackgroundCopy:
    """`sparse_copy(src, dst, write_back=True)` in a thread, so that work which only reads `src` (a build's plan)
    runs on the other core meanwhile: the copy is the kernel's work (copy_file_range, sync_file_range) and lets go
    of the GIL. `finish(advance)` waits for it, reporting progress; leaving the block early stops it at the next step.

        with BackgroundCopy(base, tmp) as copying:
            plan = make_plan(...)
            with progress("copying", size) as advance:
                copying.finish(advance)
    """

    def __init__(self, src: Path, dst: Path) -> None:
        self.done = 0
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._copy, args=(src, dst), name="copy", daemon=True)

    def __enter__(self) -> BackgroundCopy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def finish(self, advance: Advance = no_progress) -> None:
        """Wait for the copy, passing its progress on to `advance`; raise what it raised."""
        while self._thread.is_alive():
            self._thread.join(PROGRESS_POLL)
            advance(self.done)
        if self._error is not None:
            raise self._error

    def _copy(self, src: Path, dst: Path) -> None:
        try:
            sparse_copy(src, dst, self._advance, write_back=True)
        except _Stopped:
            pass
        except BaseException as err:  # handed to the thread that waits in finish()
            self._error = err

    def _advance(self, done: int) -> None:
        if self._stop.is_set():
            raise _Stopped
        self.done = done


class _Stopped(Exception):
    """The block that started a BackgroundCopy ended before it (an error there): the copy stops."""


def copy_range(src: Path, offset: int, length: int, dst: Path) -> None:
    """Copy `length` bytes of `src` from `offset` into the new file `dst` (holes kept)."""
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        _copy_extents(fin.fileno(), fout.fileno(), offset, length, dst)


def _copy_extents(fin: int, fout: int, offset: int, length: int, dst: Path, advance: Advance = no_progress,
                  write_back: bool = False) -> None:
    """Copy the data extents of `fin`'s [offset, offset+length) to `fout` at [0, length), COPY_STEP bytes at a
    time, each sent to the disk as the next is copied if `write_back`."""
    try:
        for start, end in extents(fin, offset + length):
            start, end = max(start, offset), min(end, offset + length)
            while start < end:
                n = _copy_chunk(fin, fout, start, min(end - start, COPY_STEP), start - offset)
                if n == 0:
                    raise UserError(f"{dst}: the source shrank while being copied")
                if write_back:
                    start_writeback(fout, start - offset, n)
                start += n
                advance(start - offset)
        os.ftruncate(fout, length)
    except OSError as err:
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise UserError(f"no space left on the device of {dst.parent} while writing {dst.name}") from None
        raise


def _copy_chunk(fin: int, fout: int, src_pos: int, count: int, dst_pos: int) -> int:
    """Copy up to `count` bytes in the kernel if it can, else through a buffer; return bytes copied."""
    try:
        return os.copy_file_range(fin, fout, count, src_pos, dst_pos)
    except OSError as err:
        if err.errno not in KERNEL_CANNOT_COPY:
            raise
    data = os.pread(fin, min(count, CHUNK), src_pos)
    return os.pwrite(fout, data, dst_pos)


def size_on_disk(path: Path) -> int:
    """Bytes `path` really occupies (holes excluded)."""
    return os.stat(path).st_blocks * 512


def _chunks(path: Path, advance: Advance) -> Iterator[bytes | None]:
    """The file as CHUNK-sized pieces; None for a piece that lies entirely in a hole (all zeros, not read)."""
    with open(path, "rb") as f:
        fd = f.fileno()
        size = os.fstat(fd).st_size
        data = list(extents(fd, size))
        for pos in range(0, size, CHUNK):
            end = min(pos + CHUNK, size)
            if not any(s < end and e > pos for s, e in data):
                yield None if end - pos == CHUNK else bytes(end - pos)
            else:
                chunk = os.pread(fd, end - pos, pos)
                if len(chunk) != end - pos:
                    raise UserError(f"{path}: file shrank while being hashed")
                yield chunk
            advance(end)


def sha256_sparse(path: Path, advance: Advance = no_progress) -> str:
    """SHA-256 of the whole file, reading only its data extents."""
    digest = hashlib.sha256()
    for chunk in _chunks(path, advance):
        digest.update(ZEROS if chunk is None else chunk)
    return digest.hexdigest()


def chunk_digest(path: Path, advance: Advance = no_progress) -> str:
    """SHA-256 over the SHA-256 of each 4 MiB chunk (see the module docstring); holes cost nothing."""
    return combined(dict(chunk_digests(path, advance=advance)))


def combined(digests: Mapping[int, bytes]) -> str:
    """The chunk digest of a file from the digests of all its chunks, by index."""
    return hashlib.sha256(b"".join(digests[i] for i in range(len(digests)))).hexdigest()


def chunk_digests(path: Path, indices: Iterable[int] | None = None,
                  advance: Advance = no_progress) -> Iterator[tuple[int, bytes]]:
    """(index, SHA-256) of each CHUNK of the file (or of those at `indices`, ascending), in order, hashed by
    HASH_THREADS threads; a chunk that lies in a hole is not read."""
    with open(path, "rb") as f:
        fd = f.fileno()
        size = os.fstat(fd).st_size
        data = list(extents(fd, size))
        ends = [end for _, end in data]

        def digest(index: int) -> bytes:
            pos, end = index * CHUNK, min((index + 1) * CHUNK, size)
            first = bisect.bisect_right(ends, pos)  # the first extent ending after pos
            if first == len(data) or data[first][0] >= end:
                return ZERO_CHUNK_DIGEST if end - pos == CHUNK else hashlib.sha256(bytes(end - pos)).digest()
            chunk = os.pread(fd, end - pos, pos)
            if len(chunk) != end - pos:
                raise UserError(f"{path}: file shrank while being hashed")
            return hashlib.sha256(chunk).digest()

        wanted = list(range(-(-size // CHUNK)) if indices is None else indices)
        with ThreadPoolExecutor(HASH_THREADS) as pool:
            for index, result in zip(wanted, pool.map(digest, wanted), strict=True):
                advance(min((index + 1) * CHUNK, size))
                yield index, result
