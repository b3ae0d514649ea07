"""Ubuntu 22.04 raspi's disk layout around any root tree, and reading files back out of such an image.

    MBR: p1 FAT32 (0x0c, bootable) `system-boot` at sector 2048, 256 MiB: vmlinuz, initrd.img, cmdline.txt,
         config.txt (as flash-kernel leaves them on a Pi);  p2 ext4 `writable` to the end (mkfs.ext4 -d).

Read-back uses the plain tools (sfdisk, debugfs, mtools), not pi-image's own image layer.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

from builder.errors import ToolError
from builder.run import run

SECTOR = 512
MIB = 1 << 20
BOOT_START = 2048
BOOT_SIZE = 256 * MIB
SYSTEM_BOOT = Path(__file__).parent / "guest" / "system-boot"


def stage_tree(rootfs: Path, overlays: list[tuple[Path, dict[str, str]]], stage: Path, copy: bool = False) -> Path:
    """A copy of `rootfs` with each overlay's files and symlinks added: hard links (the cache is never written
    through them: overlay files replace, not overwrite), or a real copy with `copy` (for a stage that dpkg will
    change in place)."""
    try:
        if copy:
            raise ToolError("a real copy was asked for")
        run(["cp", "-al", str(rootfs), str(stage)])
    except ToolError:  # asked for, or on another filesystem than the cache: a real copy
        shutil.rmtree(stage, ignore_errors=True)
        run(["cp", "-a", str(rootfs), str(stage)])
    for files, links in overlays:
        for source in sorted(files.rglob("*")):
            if source.is_file() and "__pycache__" not in source.parts:  # a host Python's leftovers stay out
                target = stage / source.relative_to(files)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.unlink(missing_ok=True)  # never write through a hard link into the cache
                shutil.copy2(source, target)
        for link, points_to in links.items():
            path = stage / link.lstrip("/")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.unlink(missing_ok=True)
            os.symlink(points_to, path)
    return stage


def install_debs(stage: Path, debs: list[Path]) -> None:
    """Install `debs` into the staged tree with its own apt (chroot), as an image vendor would before shipping it."""
    inside = stage / "tmp" / "pi-image-test-debs"
    inside.mkdir(parents=True)
    for deb in debs:
        shutil.copyfile(deb, inside / deb.name)
    run(["chroot", str(stage), "apt-get", "install", "-y", "-q", "--no-install-recommends",
         *(f"/tmp/pi-image-test-debs/{deb.name}" for deb in debs)], env={"DEBIAN_FRONTEND": "noninteractive"})
    shutil.rmtree(inside)


def make_image(stage: Path, dest: Path, headroom: int = 512 * MIB) -> Path:
    """The Ubuntu raspi layout at `dest` (sparse), root filesystem from `stage`, boot files from its /boot."""
    used = int(run(["du", "-sb", str(stage)]).stdout.split()[0])
    root_size = (used + headroom + MIB - 1) // MIB * MIB
    root_start = BOOT_START * SECTOR + BOOT_SIZE
    with open(dest, "wb") as image:
        image.truncate(root_start + root_size)
    table = (f"label: dos\nlabel-id: 0x6cdb8ee1\nunit: sectors\n\n"
             f"start={BOOT_START}, size={BOOT_SIZE // SECTOR}, type=c, bootable\n"
             f"start={root_start // SECTOR}, type=83\n")
    run(["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", str(dest)], input=table.encode())
    _make_system_boot(stage, dest)
    run(["mkfs.ext4", "-q", "-F", "-L", "writable", "-E", f"offset={root_start}", "-d", str(stage), str(dest),
         f"{root_size // 1024}k"])
    return dest


def _make_system_boot(stage: Path, dest: Path) -> None:
    run(["mkfs.vfat", "-F", "32", "-s", "1", "-n", "system-boot", f"--offset={BOOT_START}", str(dest),
         str(BOOT_SIZE // 1024)])
    fat = f"{dest}@@{BOOT_START * SECTOR}"
    kernels = sorted((stage / "boot").glob("vmlinuz-*"))
    if not kernels:
        raise RuntimeError(f"{stage}/boot has no vmlinuz-*: is linux-image-amd64 installed?")
    release = kernels[-1].name[len("vmlinuz-"):]
    files = {"vmlinuz": stage / "boot" / f"vmlinuz-{release}", "initrd.img": stage / "boot" / f"initrd.img-{release}",
             "cmdline.txt": SYSTEM_BOOT / "cmdline.txt", "config.txt": SYSTEM_BOOT / "config.txt"}
    for name, source in files.items():
        run(["mcopy", "-i", fat, str(source), f"::/{name}"])


def partition_offsets(image: Path) -> dict[int, int]:
    """{partition number: byte offset}, from `sfdisk --json`."""
    table = json.loads(run(["sfdisk", "--json", str(image)]).stdout)["partitiontable"]
    offsets = {}
    for entry in table["partitions"]:
        number = int(re.search(r"(\d+)$", entry["node"]).group(1))
        offsets[number] = entry["start"] * table.get("sectorsize", SECTOR)
    return offsets


def _root_spec(image: Path) -> str:
    return f"{image}?offset={partition_offsets(image)[2]}"


def read_root_file(image: Path, path: str) -> bytes | None:
    """A file of `writable` (partition 2) read with debugfs, or None if it does not exist."""
    spec = _root_spec(image)
    if b"Inode:" not in run(["debugfs", "-R", f"stat {path}", spec], check=False).stdout:
        return None
    return run(["debugfs", "-R", f"cat {path}", spec]).stdout


def write_root_file(image: Path, path: str, data: bytes, mode: int = 0o644) -> None:
    """Put a root-owned file of `mode` at `path` on `writable` with debugfs (its directory must exist), as the
    owner of a machine copies a file onto it: the boot test's way to hand a guest something before its power-on."""
    spec = _root_spec(image)
    with tempfile.TemporaryDirectory() as scratch:
        local = Path(scratch) / "file"
        local.write_bytes(data)
        run(["debugfs", "-w", "-R", f"rm {path}", spec], check=False)
        run(["debugfs", "-w", "-R", f"write {local} {path}", spec])
        run(["debugfs", "-w", "-R", f"sif {path} mode 0{0o100000 | mode:o}", spec])
        for field in ("uid", "gid"):
            run(["debugfs", "-w", "-R", f"sif {path} {field} 0", spec])


def root_file_owner_mode(image: Path, path: str) -> tuple[int, int] | None:
    """(owner uid, permission bits) of a file of `writable` from debugfs's stat, or None if it does not exist."""
    stat = run(["debugfs", "-R", f"stat {path}", _root_spec(image)], check=False).stdout.decode(errors="replace")
    mode, owner = re.search(r"Mode:\s+(\d+)", stat), re.search(r"User:\s+(\d+)", stat)
    return (int(owner.group(1)), int(mode.group(1), 8)) if mode and owner else None


def copy_root_dir(image: Path, path: str, dest: Path) -> Path:
    """A directory of `writable` copied out with debugfs's rdump, to dest/<its name>."""
    dest.mkdir(parents=True, exist_ok=True)
    run(["debugfs", "-R", f"rdump {path} {dest}", _root_spec(image)])
    return dest / Path(path).name


def read_boot_file(image: Path, path: str) -> bytes:
    """A file of `system-boot` (partition 1) read with mtools."""
    return run(["mtype", "-i", f"{image}@@{partition_offsets(image)[1]}", f"::{path}"]).stdout


def copy_boot_file(image: Path, path: str, dest: Path) -> Path:
    run(["mcopy", "-n", "-i", f"{image}@@{partition_offsets(image)[1]}", f"::{path}", str(dest)])
    return dest
