"""One I/O layer for images: a disk image's partitions and filesystems, or a directory tree, behind one interface.

    medium = open_medium(Path("ubuntu.img.xz"))          # DiskImage, or DirectoryFilesystem for a rootfs dir
    fs = medium.filesystem(medium.partition("writable"))  # Ext4Filesystem / FatFilesystem: same interface
    fs.read_text("/etc/os-release")
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import UserError
from .ext4 import Ext4Filesystem
from .fat import FatFilesystem
from .fs import FileStat, Filesystem, normalize
from .inputs import raw_image
from .partitions import Partition, read_partitions
from .tree import DirectoryFilesystem

__all__ = ["DiskImage", "DirectoryFilesystem", "FileStat", "Filesystem", "Partition", "open_medium", "normalize"]


class DiskImage:
    """A raw disk image file (or block device): its partition table and the filesystems inside."""

    def __init__(self, path: Path, writable: bool = False, fake_time: int | None = None,
                 partitions_from: Path | None = None):
        """`partitions_from`: read the partition table from that image instead (a card being flashed gets its own
        table last)."""
        self.path = Path(path)
        self.writable = writable
        self.fake_time = fake_time
        try:
            with open(self.path, "r+b" if writable else "rb") as f:
                self.size = f.seek(0, os.SEEK_END)
        except PermissionError:
            raise UserError(f"{path}: permission denied") from None
        except IsADirectoryError:
            raise UserError(f"{path}: is a directory, not a disk image") from None
        if self.size == 0:
            raise UserError(f"{path}: the file is empty")
        source = Path(partitions_from) if partitions_from else self.path
        self.table, self.partitions = read_partitions(source, source.stat().st_size if partitions_from else self.size)
        self._open: dict[int, Filesystem] = {}

    def partition(self, key: int | str) -> Partition:
        """The partition with this number, filesystem label or GPT name."""
        for p in self.partitions:
            if p.matches(key):
                return p
        raise UserError(f"{self.path}: no partition {key!r}")

    def filesystem(self, partition: Partition) -> Filesystem:
        """The filesystem inside `partition` (opened once, then reused)."""
        if partition.number not in self._open:
            if partition.fs in ("ext4", "ext2/3"):
                fs: Filesystem = Ext4Filesystem(self.path, partition.start, partition.description, self.writable,
                                                self.fake_time)
            elif partition.fs and partition.fs.startswith("fat"):
                fs = FatFilesystem(self.path, partition.start, partition.description, self.writable, self.fake_time)
            else:
                raise UserError(f"{self.path}: {partition.description} holds no filesystem pi-image can read")
            self._open[partition.number] = fs
        return self._open[partition.number]

    def commit(self) -> None:
        """Apply and verify the batched writes of every filesystem opened on this image."""
        for fs in self._open.values():
            fs.commit()


def open_medium(path: Path, *, writable: bool = False, cache_dir: Path | None = None,
                fake_time: int | None = None) -> DiskImage | DirectoryFilesystem:
    """Open what the user pointed at: a (possibly compressed) disk image, or a directory holding a rootfs."""
    path = Path(path)
    if path.is_dir():
        return DirectoryFilesystem(path, writable)
    raw = raw_image(path, cache_dir)
    if writable and raw != path:
        raise UserError(f"{path}: a compressed image cannot be edited in place")
    try:
        return DiskImage(raw, writable, fake_time)
    except UserError as err:
        if raw == path:
            raise
        # the unpacked copy in the cache is not what the user named: say what they named
        message = str(err).replace(str(raw) + ": ", "").replace(str(raw), "the image")
        raise UserError(f"{path} (unpacked): {message}") from None
