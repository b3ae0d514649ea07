"""The samples pi-image can generate: one `Sample` per (target, release), as data.

Where each layout comes from:
- Ubuntu raspi: MBR, p1 FAT32 LBA bootable `system-boot` at sector 2048 (256 MiB up to 22.04, 512 MiB for 24.04),
  p2 ext4 `writable` to the end.
- Kali ARM (kali-arm `raspberry-pi.sh` + `common.d/functions.sh`): `parted mkpart primary fat32 1MiB 256MiB`,
  then ext4 from 256MiB to 100%; `mkfs.vfat -n BOOT -F 32`, `mkfs -O ^64bit,^metadata_csum -L ROOTFS`.
- Raspberry Pi OS (pi-gen): 4 MiB alignment, so p1 `bootfs` (512 MiB) starts at sector 8192; p2 `rootfs`. The
  trixie sample is the cloud-init generation (pi-gen's stage2/04-cloud-init: cloud-init and its NoCloud config in
  the rootfs, a stock seed on bootfs), the one Raspberry Pi Imager 2 customizes in its "cloudinit-rpi" format.
- Ubuntu Server amd64 (not in CATALOG: there is no x86 image to build, its node gets a seed ISO): the reference
  tree `UBUNTU_X86_TREES` that builder/build/seed_iso.py plans against, and the cloud image's disk
  (`ubuntu_x86_disk`: GPT, p14 BIOS boot at sector 2048, p15 ESP `UEFI` at 10240 (106 MiB), p1 ext4
  `cloudimg-rootfs` after it) for the detection that sends such a disk to `pi-image seed-iso`.
- Arch Linux x86_64 (not in CATALOG either: its node gets a seed ISO or an enroll script): the reference tree
  `REFERENCE_TREES["arch"]`, one layer of its own (Arch's /usr merge and shadow files are not Debian's).
- Jetson Nano sd-blob (`jetson-disk-image-creator.sh`): `sgdisk -n N:0:+SIZE` for each partition of
  flash_l4t_t210_max-spi_sd_p3448.xml, so every small partition starts on the next 2048-sector boundary and APP
  (number 1) comes last on the disk.
"""

from __future__ import annotations

from .spec import (
    LINUX_FS_GUID,
    MIB,
    SECTOR,
    Ext4,
    Layout,
    Partition,
    Sample,
    Tree,
    Vfat,
)

GIB = 1024 * MIB * SECTOR
DEFAULT_SIZE = 2 * GIB  # apparent size; the files are sparse and hold a few MiB
# GPT partition types of an x86 disk: the EFI system partition, and GRUB's BIOS boot partition (no filesystem).
ESP_GUID = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
BIOS_BOOT_GUID = "21686148-6449-6E6F-744E-656564454649"


def raspi_mbr(disk_id: str, boot: Vfat, root: Ext4, *, start: int, boot_end: int, bootable: bool,
              writer: str = "sfdisk") -> Layout:
    """The two-partition Raspberry Pi card: FAT32 LBA (0x0c) boot from `start` to `boot_end`, ext4 (0x83) after."""
    return Layout(
        table="dos", disk_id=disk_id, size=DEFAULT_SIZE, writer=writer,
        partitions=(
            Partition(1, start, boot_end - start, "c", bootable=bootable, fs=boot),
            Partition(2, boot_end, None, "83", fs=root),
        ),
    )


def ubuntu(release: str, boot_mib: int, units: str, disk_id: str, *, writer: str = "sfdisk",
           start: int = 2048) -> Sample:
    """An Ubuntu preinstalled-server raspi image of `release`."""
    root = Ext4("writable", "7e5ac7e8-0a62-4c11-9a8c-2b6f0d6f7f%02d" % int(release[:2]),
                Tree(("base", "usrmerge", "debian-units", "ubuntu-raspi/common", f"ubuntu-raspi/{units}",
                      f"ubuntu-raspi/{release}")),
                features="vendor")
    boot = Vfat("system-boot", disk_id[2:].upper(), Tree(("ubuntu-raspi/common", f"ubuntu-raspi/{release}"), "boot"))
    return Sample(
        "ubuntu-raspi", release, f"Ubuntu {release} preinstalled server arm64+raspi ({boot_mib} MiB system-boot)",
        raspi_mbr(disk_id, boot, root, start=start, boot_end=start + boot_mib * MIB, bootable=True, writer=writer),
    )


def kali(release: str) -> Sample:
    """A Kali ARM Raspberry Pi (64-bit) image; `release` is the Kali version shown in os-release."""
    disk_id = "0x8f1a3b2c"
    root_uuid = "3c1f6b9e-52d4-4a8e-9f0b-6a2d7c4e8b15"
    root = Ext4("ROOTFS", root_uuid, Tree(("base", "usrmerge", "debian-units", "kali-raspi")), features="kali-arm")
    boot = Vfat("BOOT", "4B414C49", Tree(("kali-raspi",), "boot"))
    version = "2024.2" if release == "rolling" else release
    return Sample(
        "kali-raspi", release, f"Kali Linux {version} ARM for Raspberry Pi 2/3/4/400 (64-bit)",
        raspi_mbr(disk_id, boot, root, start=2048, boot_end=256 * MIB, bootable=False),
        variables={"VERSION": version, "ROOT_UUID": root_uuid, "DISK_ID": disk_id[2:]},
    )


def raspios(release: str, disk_id: str, root_uuid: str, layers: tuple[str, ...] = ()) -> Sample:
    """A Raspberry Pi OS Lite (arm64) image made by pi-gen; `layers` go between the skeleton and the release's."""
    root = Ext4("rootfs", root_uuid, Tree(("base", "usrmerge", *layers, f"raspios/{release}")), features="vendor")
    boot = Vfat("bootfs", disk_id[2:].upper(), Tree((f"raspios/{release}",), "boot"), cluster_sectors=4)
    generation = "cloud-init" if release != "bookworm" else "userconf"
    return Sample(
        "raspios", release, f"Raspberry Pi OS Lite ({release}, arm64, {generation}), 512 MiB bootfs at sector 8192",
        raspi_mbr(disk_id, boot, root, start=8192, boot_end=8192 + 512 * MIB, bootable=False),
        variables={"DISK_ID": disk_id[2:]},
    )


# Jetson Nano sd-blob firmware partitions (number, GPT name, bytes), in the order they sit on the card.
JETSON_NANO_BLOBS = (
    (2, "TBC", 131072), (3, "RP1", 458752), (4, "EBT", 589824), (5, "WB0", 65536), (6, "BPF", 196608),
    (7, "BPF-DTB", 393216), (8, "FX", 65536), (9, "TOS", 589824), (10, "DTB", 458752), (11, "LNX", 655360),
    (12, "EKS", 65536), (13, "BMP", 81920), (14, "RP4", 131072),
)

JETSON_TREE = Tree(("base", "jetson/r32.6.1"))


def jetson_sd(release: str) -> Sample:
    """A Jetson Nano developer-kit SD card image (JetPack 4.6, L4T r32.6.1, Ubuntu 18.04)."""
    partitions = [Partition(number, 2048 * index, size // SECTOR, LINUX_FS_GUID, name)
                  for index, (number, name, size) in enumerate(JETSON_NANO_BLOBS, start=1)]
    app_start = 2048 * (len(JETSON_NANO_BLOBS) + 1)
    app = Partition(1, app_start, None, LINUX_FS_GUID, "APP", fs=Ext4("", "b5a3e7c1-6f2d-4c8b-9e1a-0d4f7a2c6e93",
                                                                     JETSON_TREE, features="vendor"))
    return Sample(
        "jetson-sd", release, "Jetson Nano SD card image, JetPack 4.6 (L4T r32.6.1, Ubuntu 18.04): GPT, APP is p1 "
        "after 13 firmware partitions",
        Layout("gpt", "6E7F4C2A-3B1D-4E5F-8A9B-0C1D2E3F4A5B", DEFAULT_SIZE, (*partitions, app)),
    )


def l4t_rootfs(release: str) -> Sample:
    """`Linux_for_Tegra/rootfs` after `apply_binaries.sh` (r32.6.1), as a plain directory."""
    return Sample("l4t-rootfs", release, "Linux_for_Tegra/rootfs directory of L4T r32.6.1 (Ubuntu 18.04)",
                  tree=JETSON_TREE)


def ubuntu_x86_tree(release: str) -> Tree:
    """The root of a stock Ubuntu Server amd64 `release` (22.04, 24.04), as far as build steps read it."""
    return Tree(("base", "usrmerge", "ubuntu-x86/common", f"ubuntu-x86/{release}"))


UBUNTU_X86_RELEASES = ("22.04", "24.04")
UBUNTU_X86_TREES: dict[str, Tree] = {release: ubuntu_x86_tree(release) for release in UBUNTU_X86_RELEASES}
UBUNTU_X86_REFERENCE = "24.04"  # the 22.04 tree plans the same seed (tests/unit/test_seed_documents.py proves it)
# The reference tree of each target with no image to edit (its node gets a seed ISO or an enroll script): the plan is
# made against it, and it holds only what every stock install shares.
REFERENCE_TREES: dict[str, Tree] = {"ubuntu-x86": UBUNTU_X86_TREES[UBUNTU_X86_REFERENCE], "arch": Tree(("arch",))}


def ubuntu_x86_disk(release: str) -> Sample:
    """Ubuntu's amd64 cloud image (`RELEASE-server-cloudimg-amd64.img`): GPT, BIOS boot + ESP, then the root."""
    root = Ext4("cloudimg-rootfs", "5b1e7d3a-3c2f-4e8a-9d61-0a7c4f2e%04d" % int(release.replace(".", "")),
                ubuntu_x86_tree(release), features="vendor")
    esp = Vfat("UEFI", "7A3B9C1D", Tree(("ubuntu-x86/esp",), "boot"))
    partitions = (Partition(14, 2048, 8192, BIOS_BOOT_GUID), Partition(15, 10240, 217088, ESP_GUID, fs=esp),
                  Partition(1, 227328, None, LINUX_FS_GUID, fs=root))
    return Sample("ubuntu-x86", release, f"Ubuntu Server {release} amd64 cloud image (GPT, ESP, ext4 cloudimg-rootfs)",
                  Layout("gpt", "1D6E2B4F-8A3C-4F5E-9B7D-2C6A8E0F%04d" % int(release.replace(".", "")), DEFAULT_SIZE,
                         partitions))


DEFAULTS = {"ubuntu-raspi": "22.04", "kali-raspi": "2024.2", "raspios": "bookworm", "jetson-sd": "r32.6.1",
            "l4t-rootfs": "r32.6.1"}

CATALOG: dict[tuple[str, str], Sample] = {
    (s.target, s.release): s
    for s in (
        ubuntu("20.04", 256, "units-lib", "0x6d1c6a3e"),
        ubuntu("22.04", 256, "units-lib", "0x9a7b2c51"),
        ubuntu("24.04", 512, "units-usr-lib", "0x3f5e8d27"),
        kali("2024.2"),
        kali("rolling"),
        raspios("bookworm", "0x4e639091", "93b4d4a8-2e07-4a8e-8a6b-7f2c1d9e5a3b"),
        raspios("trixie", "0x5f7a2c13", "c2e8a6d4-71b3-4f0e-9d5a-3b6e8f1a2c47", layers=("debian-units",)),
        jetson_sd("r32.6.1"),
        l4t_rootfs("r32.6.1"),
    )
}

# Deliberately built another way: table by libparted (pyparted) instead of sfdisk, boot at sector 8192 and
# 300 MiB instead of 2048 and 512 MiB, so that readers are proven on an image their own fixtures did not shape.
ALTERNATES: dict[tuple[str, str], Sample] = {
    ("ubuntu-raspi", "24.04"): ubuntu("24.04", 300, "units-usr-lib", "0x5a17e2d4", writer="parted", start=8192),
}
