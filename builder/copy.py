"""Fast, sparse copies and hashes of big image files.

A copy is a reflink (FICLONE: instant, shares blocks) where the filesystem allows, else the data extents only
(SEEK_DATA/SEEK_HOLE) moved in the kernel with copy_file_range: holes stay holes, nothing passes through Python.
Hashing reads data extents only and feeds holes as zeros from memory.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

from .errors import UserError

FICLONE = 0x40049409
ZEROS = bytes(4 << 20)


def extents(fd: int, size: int) -> Iterator[tuple[int, int]]:
    """(start, end) of each data extent of the open file `fd` of `size` bytes."""
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as err:
            if err.errno == errno.ENXIO:  # only a hole remains
                return
            raise
        end = os.lseek(fd, start, os.SEEK_HOLE)
        yield start, min(end, size)
        pos = end


def sparse_copy(src: Path, dst: Path) -> None:
    """Copy `src` to the new file `dst`, keeping holes (reflink if possible)."""
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        size = os.fstat(fin.fileno()).st_size
        try:
            fcntl.ioctl(fout.fileno(), FICLONE, fin.fileno())
            return
        except OSError:
            pass  # not a reflink-capable filesystem (or not the same one): copy the data extents
        try:
            for start, end in extents(fin.fileno(), size):
                done = start
                while done < end:
                    n = os.copy_file_range(fin.fileno(), fout.fileno(), end - done, done, done)
                    if n == 0:
                        raise UserError(f"{src}: file shrank while being copied")
                    done += n
            fout.truncate(size)
        except OSError as err:
            if err.errno in (errno.ENOSPC, errno.EDQUOT):
                raise UserError(f"no space left on the device of {dst.parent} to copy {src} "
                                f"({size_on_disk(src) >> 20} MiB needed)") from None
            raise


def size_on_disk(path: Path) -> int:
    """Bytes `path` really occupies (holes excluded)."""
    return os.stat(path).st_blocks * 512


def sha256_sparse(path: Path) -> str:
    """SHA-256 of the whole file, reading only its data extents (holes hash as the zeros they are)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        fd = f.fileno()
        size = os.fstat(fd).st_size
        pos = 0
        for start, end in list(extents(fd, size)) + [(size, size)]:
            _feed_zeros(digest, start - pos)
            f.seek(start)
            remaining = end - start
            while remaining:
                chunk = f.read(min(remaining, len(ZEROS)))
                if not chunk:
                    raise UserError(f"{path}: file shrank while being hashed")
                digest.update(chunk)
                remaining -= len(chunk)
            pos = end
    return digest.hexdigest()


def _feed_zeros(digest: "hashlib._Hash", n: int) -> None:
    """Hash `n` zero bytes without reading anything."""
    view = memoryview(ZEROS)
    while n > 0:
        step = min(n, len(ZEROS))
        digest.update(view[:step])
        n -= step


def copy_range(src: Path, offset: int, length: int, dst: Path) -> None:
    """Copy `length` bytes of `src` from `offset` into the new file `dst` (in the kernel, holes kept)."""
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        for start, end in extents(fin.fileno(), offset + length):
            start, end = max(start, offset), min(end, offset + length)
            while start < end:
                n = os.copy_file_range(fin.fileno(), fout.fileno(), end - start, start, start - offset)
                if n == 0:
                    break
                start += n
        fout.truncate(length)
