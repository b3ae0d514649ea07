"""A bundled .deb's data member decompressed once on the build host, so that the node's dpkg only copies files.

Decompressing is the slowest part of installing the runtime on a small board: containerd's 25 MiB data.tar.xz is
100 MiB of tar, 1.3 s of xz on a workstation core and ~15 s of the first boot under QEMU TCG. dpkg has read an
uncompressed data.tar since 1.10.24 (every release a target runs: L4T's Ubuntu 18.04 has 1.19), so the bundle carries
each .deb with its xz, gzip or bzip2 data member replaced by the plain tar it holds: the same members in the same
order, each header's date, owner and mode kept, only the data member's name and size changed. The same .deb gives the
same bytes. zstd members (Ubuntu's) stay as they are: zstd decompresses about as fast as it is read.

The .deb comes from an archive apt checked, but is read as hostile all the same: a header that does not parse or a
member that decompresses past MAX_DATA is one UserError naming the file.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from ...errors import UserError

AR_MAGIC = b"!<arch>\n"
AR_HEADER = 60  # name 16, date 12, uid 6, gid 6, mode 8, size 10, magic 2
AR_END = b"`\n"
MAX_DATA = 4 << 30  # bytes: the largest package a node installs (a kernel with its modules) is under 1 GiB of tar
CHUNK = 1 << 20
DECOMPRESSORS: dict[str, Callable[[Any], Any]] = {".xz": lzma.open, ".gz": gzip.open, ".bz2": bz2.open}


def decompress_data(deb: Path) -> bool:
    """Replace `deb` by the same package with an uncompressed data.tar; False (and `deb` untouched) when its data
    member is already plain or zstd."""
    staged = deb.with_name(deb.name + ".plain")
    try:
        with open(deb, "rb") as source:
            members = _members(source, deb)
            data = next((m for m in members if m[0].startswith("data.tar")), None)
            if data is None:
                raise UserError(f"{deb}: a .deb without a data.tar member: the archive it came from is damaged")
            suffix = data[0][len("data.tar"):]
            if suffix not in DECOMPRESSORS:
                return False
            with open(staged, "wb") as out:
                out.write(AR_MAGIC)
                for _name, header, offset, size in members:
                    if offset == data[2]:
                        _write_plain(source, offset, size, DECOMPRESSORS[suffix], header, out, deb)
                    else:
                        out.write(header)
                        _copy(source, offset, size, out)
                        out.write(b"\n" if size % 2 else b"")
        os.replace(staged, deb)
        return True
    except OSError as err:
        raise UserError(f"{deb}: cannot rewrite it with a plain data.tar ({err.strerror or err})") from None
    finally:
        staged.unlink(missing_ok=True)


def _members(source: BinaryIO, deb: Path) -> list[tuple[str, bytes, int, int]]:
    """(name, header, data offset, size) of each ar member of `deb`."""
    if source.read(len(AR_MAGIC)) != AR_MAGIC:
        raise UserError(f"{deb}: not a .deb (no ar header): the archive it came from is damaged")
    members, offset = [], len(AR_MAGIC)
    end = os.fstat(source.fileno()).st_size
    while offset < end:
        source.seek(offset)
        header = source.read(AR_HEADER)
        size_field = header[48:58].strip()
        if len(header) != AR_HEADER or header[58:60] != AR_END or not size_field.isdigit():
            raise UserError(f"{deb}: a damaged ar header at byte {offset}: download the package again")
        size = int(size_field)
        if offset + AR_HEADER + size > end:
            raise UserError(f"{deb}: a member runs past the end of the file at byte {offset}: it was cut short")
        name = header[:16].decode("ascii", "replace").rstrip(" ").rstrip("/")
        members.append((name, header, offset + AR_HEADER, size))
        offset += AR_HEADER + size + size % 2
    return members


def _write_plain(source: BinaryIO, offset: int, size: int, opener: Callable[[Any], Any], header: bytes,
                 out: BinaryIO, deb: Path) -> None:
    """The data member decompressed into `out` as `data.tar`, its header rewritten once its size is known."""
    start = out.tell()
    out.write(b"\0" * AR_HEADER)
    source.seek(offset)
    written = 0
    try:
        with opener(_Window(source, size)) as stream:
            while chunk := stream.read(CHUNK):
                written += len(chunk)
                if written > MAX_DATA:
                    raise UserError(f"{deb}: its data member decompresses to more than {MAX_DATA >> 20} MiB: "
                                    "refusing it (is the archive it came from trustworthy?)")
                out.write(chunk)
    except (EOFError, lzma.LZMAError, OSError, ValueError) as err:
        if isinstance(err, OSError) and err.errno is not None:
            raise
        raise UserError(f"{deb}: its data member does not decompress ({err}): download the package again") from None
    out.write(b"\n" if written % 2 else b"")
    end = out.tell()
    out.seek(start)
    out.write(b"data.tar".ljust(16) + header[16:48] + str(written).encode().ljust(10) + AR_END)
    out.seek(end)


def _copy(source: BinaryIO, offset: int, size: int, out: BinaryIO) -> None:
    source.seek(offset)
    while size:
        chunk = source.read(min(CHUNK, size))
        if not chunk:
            raise OSError(0, "the file ended early")
        out.write(chunk)
        size -= len(chunk)


class _Window:
    """`size` bytes of `source` from its current position, read as a file (what the decompressors read)."""

    def __init__(self, source: BinaryIO, size: int) -> None:
        self.source, self.left = source, size

    def read(self, n: int = -1) -> bytes:
        """At most `n` bytes (all that is left for n < 0), never past the member's end."""
        n = self.left if n is None or n < 0 else min(n, self.left)
        data = self.source.read(n)
        self.left -= len(data)
        return data

    def readable(self) -> bool:
        """A readable stream (gzip and bz2 ask)."""
        return True
