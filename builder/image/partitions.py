"""Partition tables (MBR and GPT) read with pyparted, and the filesystem found in each partition.

libparted opens what it reads read-write. The base image must never be opened for writing, so pyparted reads a
*table snapshot*: a sparse temporary file of the same size holding only the MiBs where the tables live — the first
(MBR, GPT header and entries), the last (where a GPT backup belongs), and the one ending at the backup header the
primary GPT names, which is no longer at the end once a card image has been grown (`truncate -s +1G`). libparted
then reads the same bytes it would read in the real file. Filesystems are identified from their own superblocks.
"""

from __future__ import annotations

import logging
import os
import struct
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import parted

from ..errors import UserError
from .fat import read_fat_label
from .superblock import read_superblock

TABLE_BYTES = 1 << 20  # MBR, GPT header + entries, and a GPT backup (header + entries) each fit in one MiB
SECTOR = 512  # libparted's sector size for an image file
GPT_SIGNATURE = b"EFI PART"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Partition:
    """One partition: where it is, and what filesystem it holds (None if pi-image does not recognize it)."""

    number: int
    start: int  # bytes from the start of the image
    size: int  # bytes
    fs: str | None  # "ext4", "ext2/3", "fat32", "fat16", "fat12" or None
    label: str | None  # filesystem label (ext4 volume name / FAT volume label)
    name: str | None  # GPT partition name (None on MBR)
    bootable: bool

    @property
    def description(self) -> str:
        """How messages name this partition, e.g. "partition 2 (ext4 'writable')"."""
        what = " ".join(x for x in (self.fs, repr(self.label) if self.label else None,
                                    f"name {self.name!r}" if self.name else None) if x)
        return f"partition {self.number}" + (f" ({what})" if what else "")

    def matches(self, key: int | str) -> bool:
        """True if `key` is this partition's number, filesystem label or GPT name."""
        return key == self.number or (isinstance(key, str) and key in (self.label, self.name, str(self.number)))


def _table_regions(src: BinaryIO, size: int) -> list[int]:
    """Start offsets of the MiBs holding partition tables in the open image `src` of `size` bytes."""
    starts = {0, max(0, size - TABLE_BYTES)}
    src.seek(SECTOR)
    header = src.read(SECTOR)
    if header.startswith(GPT_SIGNATURE):
        backup_end = min(size, (struct.unpack_from("<Q", header, 32)[0] + 1) * SECTOR)  # AlternateLBA
        starts.add(max(0, backup_end - TABLE_BYTES))
    return sorted(starts)


def _snapshot(image: Path, size: int, tmpdir: str) -> str:
    """A sparse file of `size` bytes holding only the MiBs of `image` where partition tables live."""
    snap = os.path.join(tmpdir, "table")
    with open(image, "rb") as src, open(snap, "wb") as dst:
        dst.truncate(size)
        for offset in _table_regions(src, size):
            src.seek(offset)
            dst.seek(offset)
            dst.write(src.read(TABLE_BYTES))
    return snap


@contextmanager
def _libparted_quiet() -> Iterator[None]:
    """Keep what libparted prints itself on stderr (e.g. "GPT PMBR size mismatch ... will be corrected by
    write.", about a grown image it only reads) out of the user's terminal; it goes to the debug log."""
    with tempfile.TemporaryFile() as caught:
        saved = os.dup(2)
        os.dup2(caught.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            for line in caught.read().decode(errors="replace").splitlines():
                log.debug("libparted: %s", line)


def read_partitions(image: Path, size: int) -> tuple[str, list[Partition]]:
    """The table type ("msdos" or "gpt") and partitions of the disk image `image` of `size` bytes."""
    with tempfile.TemporaryDirectory(prefix="pi-image-table-") as tmp:
        try:
            with _libparted_quiet():
                device = parted.Device(_snapshot(image, size, tmp))
                disk = parted.newDisk(device)
        except (parted.DiskException, parted.DiskLabelException, parted.IOException, parted.DeviceException) as err:
            raise UserError(f"{image}: {_explain(str(err), size, image)}") from None
        sector = device.sectorSize
        partitions = []
        for p in disk.partitions:
            if p.type & parted.PARTITION_EXTENDED:
                raise UserError(f"{image}: extended/logical MBR partitions are not supported")
            start, length = p.geometry.start * sector, p.geometry.length * sector
            if start + length > size:
                raise UserError(f"{image}: partition {p.number} ends at byte {start + length} but the image is only "
                                f"{size} bytes: the file is truncated (incomplete download or copy?)")
            fs, label = _probe(image, start)
            partitions.append(Partition(
                number=p.number, start=start, size=length, fs=fs, label=label,
                name=(p.name or None) if disk.type == "gpt" else None,
                bootable=p.isFlagAvailable(parted.PARTITION_BOOT) and p.getFlag(parted.PARTITION_BOOT),
            ))
        if not partitions:
            raise UserError(f"{image}: the partition table ({disk.type}) holds no partitions")
        return disk.type, partitions


def _explain(message: str, size: int, image: Path) -> str:
    """Turn libparted's wording into what the user should know."""
    if "unrecognised disk label" in message or "unrecognized disk label" in message:
        if _blank_head(image, size):
            return ("no partition table: its first MiB is blank but data follows, as `pi-image flash` leaves a card "
                    "it was interrupted writing: flash it again")
        return "no partition table (MBR or GPT) found: is this a disk image?"
    if "outside the disk" in message or "end of file" in message or "beyond the end" in message:
        return f"the partition table describes a disk larger than the file ({size} bytes): the image is truncated"
    return f"cannot read the partition table: {message.strip()}"


def _blank_head(image: Path, size: int) -> bool:
    """True if the first MiB reads as zeros while the next MiBs hold data (a flash that never wrote its table)."""
    with open(image, "rb") as f:
        head, rest = f.read(TABLE_BYTES), f.read(64 * TABLE_BYTES)
    return size > TABLE_BYTES and head.count(0) == len(head) and rest.count(0) != len(rest)


def _probe(image: Path, offset: int) -> tuple[str | None, str | None]:
    """Identify the filesystem at `offset` from its own superblock/boot sector."""
    sb = read_superblock(image, offset)
    if sb is not None:
        return sb.kind, sb.label or None
    fat = read_fat_label(image, offset)
    if fat is not None:
        return fat[0], fat[1] or None
    return None, None
