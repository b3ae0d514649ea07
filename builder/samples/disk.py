"""Assemble a disk image from a `Layout`: sparse file, partition table, filesystems, content — no root needed.

Partition tables are written by `sfdisk` (a script on stdin) or, for the deliberately different `alt` samples, by
pyparted. FAT32 is made with `mkfs.vfat --offset` and filled with mtools at the partition's byte offset; ext4 with
`mkfs.ext4 -d TREE -E offset=BYTES`, then debugfs gives every inode its real owner. Fixed identifiers and fake
times make the same sample come out byte-identical.
"""

from __future__ import annotations

import struct
import tempfile
from pathlib import Path

from ..run import run
from .spec import MIB, SECTOR, Ext4, Layout, Partition, Sample, Vfat
from .tree import DATA, EPOCH, Manifest, stage_tree, walk

# GPT keeps its backup header and entries (33 sectors) after the last usable sector.
GPT_TAIL = 33

TOOL_ENV = {
    "E2FSPROGS_FAKE_TIME": str(EPOCH),
    "SOURCE_DATE_EPOCH": str(EPOCH),
    # Our own mke2fs.conf, so the feature set is the vendor's, not the build host's.
    "MKE2FS_CONFIG": str(DATA / "mke2fs.conf"),
}


def build_image(sample: Sample, dest: Path, size: int | None = None) -> Path:
    """Write `sample` as a sparse disk image at `dest` (`size` bytes, default the layout's) and return `dest`."""
    layout = sample.layout
    assert layout is not None, f"{sample.target} {sample.release} is a directory sample"
    total = size or layout.size
    if total % (MIB * SECTOR):
        raise ValueError(f"image size {total} is not a whole number of MiB")
    with open(dest, "wb") as image:
        image.truncate(total)
    parts = [resolve(part, layout, total // SECTOR) for part in layout.partitions]
    write_table = write_table_parted if layout.writer == "parted" else write_table_sfdisk
    write_table(layout, parts, dest)
    for part in parts:
        if isinstance(part.fs, Vfat):
            make_vfat(dest, part, sample.variables)
        elif isinstance(part.fs, Ext4):
            make_ext4(dest, part, sample.variables)
    return dest


def resolve(part: Partition, layout: Layout, sectors: int) -> Partition:
    """Give a to-the-end partition its size in sectors, and check that every partition fits the disk."""
    last = sectors - (GPT_TAIL + 1 if layout.table == "gpt" else 0)
    size = part.size if part.size is not None else last - part.start
    if part.start + size > last:
        raise ValueError(f"partition {part.number} ends past the disk ({sectors} sectors): make the image larger")
    return Partition(part.number, part.start, size, part.type, part.name, part.bootable, part.fs)


def write_table_sfdisk(layout: Layout, parts: list[Partition], image: Path) -> None:
    """Write the partition table with sfdisk; `partN :` prefixes set the numbers (Jetson's APP is 1, yet last)."""
    lines = [f"label: {layout.table}", f"label-id: {layout.disk_id}", "unit: sectors"]
    if layout.table == "gpt":
        lines.append("first-lba: 34")
    lines.append("")
    for part in parts:
        fields = [f"start={part.start}", f"size={part.size}", f"type={part.type}"]
        if part.name:
            fields.append(f'name="{part.name}"')
        if layout.table == "gpt":
            fields.append(f"uuid={layout.partition_uuid(part.number)}")
        if part.bootable:
            fields.append("bootable")
        lines.append(f"part{part.number} : " + ", ".join(fields))
    run(["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", str(image)], input="\n".join(lines).encode() + b"\n")


def write_table_parted(layout: Layout, parts: list[Partition], image: Path) -> None:
    """Write an MBR with pyparted (libparted), then stamp the fixed disk identifier libparted would randomize."""
    import parted  # only the alt samples need libparted

    if layout.table != "msdos" and layout.table != "dos":
        raise ValueError("the parted writer only makes MBR samples")
    device = parted.getDevice(str(image))
    disk = parted.freshDisk(device, "msdos")
    for part in parts:
        geometry = parted.Geometry(device=device, start=part.start, length=part.size)
        fs_type = "fat32" if isinstance(part.fs, Vfat) else "ext4"
        entry = parted.Partition(
            disk=disk, type=parted.PARTITION_NORMAL, fs=parted.FileSystem(type=fs_type, geometry=geometry),
            geometry=geometry,
        )
        disk.addPartition(entry, constraint=parted.Constraint(exactGeom=geometry))
        if isinstance(part.fs, Vfat):
            entry.setFlag(parted.PARTITION_LBA)
        if part.bootable:
            entry.setFlag(parted.PARTITION_BOOT)
    disk.commitToDevice()
    device.removeFromCache()
    with open(image, "r+b") as raw:
        raw.seek(440)
        raw.write(struct.pack("<I", int(layout.disk_id, 16)))


def make_vfat(image: Path, part: Partition, variables: dict[str, str]) -> None:
    """Make FAT32 in the partition and copy its tree in with mtools (directories first, sorted)."""
    fs = part.fs
    assert isinstance(fs, Vfat) and part.size is not None
    run(["mkfs.vfat", "--invariant", "-F", "32", "-s", str(fs.cluster_sectors), "-n", fs.label, "-i", fs.volume_id,
         "-h", str(part.start), f"--offset={part.start}", str(image),
         str(part.size * SECTOR // 1024)], env=TOOL_ENV)
    target = f"{image}@@{part.start * SECTOR}"
    with tempfile.TemporaryDirectory(prefix="pi-image-fat-") as tmp:
        stage = Path(tmp) / "fat"
        stage_tree(fs.tree, variables, stage)
        for rel in walk(stage)[1:]:
            source = stage / rel
            command = ["mmd"] if source.is_dir() else ["mcopy", str(source)]
            run([*command, "-i", target, f"::/{rel}"], env=TOOL_ENV)


def make_ext4(image: Path, part: Partition, variables: dict[str, str]) -> None:
    """Make a populated ext4 in the partition, then give every inode its real owner with one debugfs run."""
    fs = part.fs
    assert isinstance(fs, Ext4) and part.size is not None
    offset = part.start * SECTOR
    options = f"offset={offset},hash_seed={fs.uuid},root_owner=0:0,lazy_itable_init=1,lazy_journal_init=1,nodiscard"
    with tempfile.TemporaryDirectory(prefix="pi-image-ext4-") as tmp:
        stage = Path(tmp) / "root"
        manifest = stage_tree(fs.tree, variables, stage)
        run(["mkfs.ext4", "-q", "-F", "-t", "ext4", "-T", fs.features, "-L", fs.label, "-U", fs.uuid,
             "-E", options, "-d", str(stage), str(image), f"{part.size * SECTOR // 1024}k"], env=TOOL_ENV)
        set_owners(image, offset, stage, manifest, Path(tmp) / "owners.debugfs")


def set_owners(image: Path, offset: int, stage: Path, manifest: Manifest, script: Path) -> None:
    """Set uid/gid of every inode copied from `stage` (mkfs.ext4 -d copied the builder's own) and its times
    (it also copied the host's ctime, which no one can set on the host)."""
    lines = []
    for rel in ["lost+found", *walk(stage)]:
        uid, gid = manifest.owner(rel)
        lines += [f'sif "/{rel}" uid {uid}', f'sif "/{rel}" gid {gid}']
        lines += [f'sif "/{rel}" {field} @{EPOCH}' for field in ("atime", "ctime", "mtime", "crtime")]
    script.write_text("\n".join(lines) + "\n")
    result = run(["debugfs", "-w", "-f", str(script), f"{image}?offset={offset}"], env=TOOL_ENV)
    errors = [line for line in result.stderr.decode(errors="replace").splitlines()
              if line.strip() and not line.startswith("debugfs ")]
    if errors:
        raise RuntimeError(f"debugfs could not set owners in {image}: {errors[0]}")
