"""What a sample image is made of, as plain data: a partition layout plus the file trees in each filesystem.

The engine in `disk.py` turns any `Sample` into an image (or, for a `Sample` without a layout, a directory); the
catalog in `catalog.py` holds one `Sample` per (target, release). Sizes and starts are in 512-byte sectors, as
in the vendors' own partitioning scripts.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

SECTOR = 512
MIB = 2048  # sectors per MiB

# GPT partition type "Linux filesystem" (sgdisk code 8300), which NVIDIA uses for every sd-blob partition.
LINUX_FS_GUID = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"


@dataclass(frozen=True)
class Tree:
    """The content of one filesystem: data layers stacked in order (later layers override earlier files).

    Each layer is a directory under `builder/samples/data/` holding the files for this filesystem in a
    subdirectory named after `part` (`root` or `boot`) and, beside it, `<part>.yaml`: what git cannot carry
    (symlinks, empty directories, modes, owners).
    """

    layers: tuple[str, ...]
    part: str = "root"


@dataclass(frozen=True)
class Vfat:
    """A FAT32 filesystem made with `mkfs.vfat -F 32 -s CLUSTER_SECTORS -n LABEL -i VOLUME_ID`.

    `cluster_sectors` keeps a small FAT32 above the 65525 clusters that FAT32 requires (mtools and the Pi
    firmware tell FAT16 from FAT32 by that count): Ubuntu's ubuntu-image uses 1, pi-gen 4.
    """

    label: str
    volume_id: str
    tree: Tree
    cluster_sectors: int = 1


@dataclass(frozen=True)
class Ext4:
    """An ext4 filesystem made with `mkfs.ext4 -L LABEL -U UUID -d TREE`; `features` names a mke2fs.conf fs_type."""

    label: str
    uuid: str
    tree: Tree
    features: str = "ext4"


@dataclass(frozen=True)
class Partition:
    """One partition-table entry; `size=None` runs to the end of the disk, `fs=None` leaves it unformatted."""

    number: int
    start: int
    size: int | None
    type: str
    name: str | None = None
    bootable: bool = False
    fs: Vfat | Ext4 | None = None


@dataclass(frozen=True)
class Layout:
    """A disk: table type (`dos` or `gpt`), disk identifier, apparent size and partitions in on-disk order."""

    table: str
    disk_id: str
    size: int
    partitions: tuple[Partition, ...]
    writer: str = "sfdisk"

    def partition_uuid(self, number: int) -> str:
        """A GPT partition's unique GUID, derived from the disk GUID so that rebuilds are byte-identical."""
        return str(uuid.uuid5(uuid.UUID(self.disk_id), f"partition-{number}")).upper()


@dataclass(frozen=True)
class Sample:
    """One sample: what it is (`description`), how it is laid out, and the `@@NAME@@` values its files use.

    A sample without a `layout` is a directory (an L4T `Linux_for_Tegra/rootfs`) built from `tree`.
    """

    target: str
    release: str
    description: str
    layout: Layout | None = None
    tree: Tree | None = None
    variables: dict[str, str] = field(default_factory=dict)
