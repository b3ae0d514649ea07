"""Target detection: which OS image this is, found from what it holds (labels, os-release, marker files).

Never from a file name or a fixed offset. Anything unrecognized ends in one line naming what was found.
"""

from __future__ import annotations

from ..errors import UserError
from ..image import DirectoryFilesystem, DiskImage, Filesystem
from .arch import ArchX86, arch_advice
from .base import OsRelease, Probe, Target
from .jetson import JetsonSd, L4tRootfs
from .kali_raspi import KaliRaspi
from .raspios import RaspiOS, RaspiOSCloudInit, cloud_init_reads_boot_seed
from .ubuntu_raspi import UbuntuRaspi
from .x86 import UbuntuX86, seed_iso_advice

# Most specific first: an L4T image is also "ubuntu", a cloud-init Raspberry Pi OS also has the bookworm files.
TARGETS: list[type[Target]] = [JetsonSd, L4tRootfs, KaliRaspi, RaspiOSCloudInit, RaspiOS, UbuntuRaspi, UbuntuX86,
                               ArchX86]
# What a user names (both Raspberry Pi OS generations are `raspios`).
TARGET_NAMES: tuple[str, ...] = tuple(dict.fromkeys(t.name for t in TARGETS))

# Targets with no image to edit (x86-64 machines): the node is set up on the machine itself (`pi-image seed-iso`,
# `pi-image enroll`) from a plan made against a reference tree (builder.samples.catalog.REFERENCE_TREES).
MACHINE_TARGETS: tuple[str, ...] = (UbuntuX86.name, ArchX86.name)
# Names a profile's `target` may also give: a family of targets sharing the hardware it describes.
TARGET_GROUPS: dict[str, tuple[str, ...]] = {"raspberry-pi": ("ubuntu-raspi", "raspios", "kali-raspi")}
# The target a demo image imitates when none is named: the board and OS pi-image is first made for.
DEFAULT_TARGET = UbuntuRaspi.name

__all__ = ["DEFAULT_TARGET", "MACHINE_TARGETS", "TARGETS", "TARGET_GROUPS", "TARGET_NAMES", "OsRelease", "Target",
           "detect", "target_class", "targets_of"]


def targets_of(name: str) -> tuple[str, ...]:
    """The targets a profile's `target` stands for: a group's members, else the one target it names."""
    return TARGET_GROUPS.get(name, (name,))


def target_class(name: str) -> type[Target] | None:
    """The first target class called `name`, or None. Both Raspberry Pi OS generations are called `raspios`: ask a
    name only for a fact they share (`gpu_packages`, `in_catalog`), and a detected target for the others."""
    return next((cls for cls in TARGETS if cls.name == name), None)


def detect(medium: DiskImage | DirectoryFilesystem, like: Target | None = None) -> Target:
    """The target `medium` is, bound to its root and boot filesystems; `like`: the target found on the image that
    `medium` is a byte copy of (a build's output): its kind, bound to `medium` without probing again."""
    root, boot = (_tree_root(medium), None) if isinstance(medium, DirectoryFilesystem) else _image_filesystems(medium)
    if like is not None:
        return type(like)(medium, root, like.os, boot)
    os_release = OsRelease.parse(root.read_text("/etc/os-release") or "")
    probe = Probe(medium, root, os_release, boot, facts={
        "tegra": root.exists("/etc/nv_tegra_release"),
        "rpi_issue": root.exists("/etc/rpi-issue"),
        "cloud_init_boot_seed": cloud_init_reads_boot_seed(root),
    })
    for cls in TARGETS:
        if cls.matches(probe):
            return cls(medium, root, os_release, boot)
    advice = seed_iso_advice(probe) or arch_advice(probe)
    if advice:
        raise UserError(advice)
    where = root.description
    supported = ", ".join(TARGET_NAMES)
    raise UserError(f"{where} holds '{os_release.pretty_name}' (ID={os_release.id}"
                    f"{', boot partition found' if boot else ', no FAT boot partition'}), "
                    f"which pi-image does not support (supported: {supported})")


def _tree_root(tree: DirectoryFilesystem) -> Filesystem:
    if not tree.exists("/etc/os-release"):
        hint = " (for L4T, pass Linux_for_Tegra/rootfs)" if (tree.root / "rootfs").is_dir() else ""
        raise UserError(f"{tree.root} is not a root filesystem: it has no etc/os-release{hint}")
    return tree


def _image_filesystems(image: DiskImage) -> tuple[Filesystem, Filesystem | None]:
    """The root filesystem (the ext4 with /etc/os-release) and the Pi boot partition (FAT with cmdline.txt)."""
    found = ", ".join(p.description for p in image.partitions)
    ext = [p for p in image.partitions if p.fs in ("ext4", "ext2/3")]
    if not ext:
        raise UserError(f"{image.path}: no ext4 root partition (found {found})")
    root = None
    for partition in ext:
        fs = image.filesystem(partition)
        if fs.exists("/etc/os-release"):
            root = fs
            break
    if root is None:
        raise UserError(f"{image.path}: {ext[0].description} is ext4 but has no /etc/os-release "
                        f"(found {found})")
    fats = [image.filesystem(p) for p in image.partitions if p.fs and p.fs.startswith("fat")]
    boot = next((fs for fs in fats if fs.exists("/cmdline.txt") or fs.exists("/config.txt")), None)
    return root, boot
