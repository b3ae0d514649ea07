"""Independent checks of edited filesystems: `e2fsck -fn` for ext4, `fsck.vfat -n` for FAT.

A build that leaves a filesystem unclean fails: the user must never flash an image that needs repair.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from ..errors import UserError
from ..run import run, summarize
from . import DiskImage, Partition
from .copy import copy_range


def check_partition(image: DiskImage, partition: Partition) -> None:
    """Raise UserError if the filesystem in `partition` is not clean."""
    if partition.fs in ("ext4", "ext2/3"):
        proc = run(["e2fsck", "-fn", f"{image.path}?offset={partition.start}"], check=False)
    elif partition.fs and partition.fs.startswith("fat"):
        with tempfile.TemporaryDirectory(prefix="pi-image-fsck-") as tmp:
            extracted = Path(tmp) / "fat.img"
            copy_range(image.path, partition.start, partition.size, extracted)  # fsck.vfat has no offset option
            proc = run(["fsck.vfat", "-n", str(extracted)], check=False)
    else:
        return
    if proc.returncode != 0:
        raise UserError(f"{image.path}: {partition.description} is not clean after the edits "
                        f"({proc.args[0]} exit {proc.returncode}): {summarize(proc.stdout + proc.stderr)}")
