"""NVIDIA Jetson (L4T): an SD card image (GPT, ext4 `APP`) or a `Linux_for_Tegra/rootfs` directory.

The kernel command line is the APPEND line of /boot/extlinux/extlinux.conf; /etc/nv_tegra_release says L4T.
No user exists and oem-config would wait on a screen, so pi-image creates the admin user itself.
"""

from __future__ import annotations

from ..image import DirectoryFilesystem, DiskImage
from .base import DEBIAN_ADMIN_GROUPS, Probe, Target


class JetsonSd(Target):
    name = "jetson-sd"
    description = "NVIDIA Jetson SD card image (GPT, ext4 APP, extlinux.conf)"
    cmdline_kind = "extlinux"
    network_stack = "networkmanager"
    first_boot = "offline"
    default_user = "jetson"  # no OS default: the one pi-image creates (as l4t_create_default_user.sh would)
    os_overlays = ("networkmanager-wifi",)
    admin_groups = DEBIAN_ADMIN_GROUPS
    swap_services = ("nvzramconfig.service",)
    gpu_packages = ("nvidia-container-runtime",)  # NVIDIA's L4T repository; its runtime is named `nvidia`
    # nvidia-l4t-apt-source.list ships `repo.download.nvidia.com/jetson/<SOC> r32.x main`, filled in by L4T's first
    # boot; the Jetson Nano (the SD image's board and the jetson-* profiles') is a t210
    apt_source_placeholders = {"<SOC>": "t210"}

    @classmethod
    def matches(cls, probe: Probe) -> bool:
        return probe.facts.get("tegra", False) and isinstance(probe.medium, DiskImage)


class L4tRootfs(JetsonSd):
    name = "l4t-rootfs"
    description = "NVIDIA L4T Linux_for_Tegra/rootfs directory (before flash.sh)"
    in_catalog = False  # a directory tree, made by NVIDIA's BSP tarball, never a download pi-image fetches

    @classmethod
    def matches(cls, probe: Probe) -> bool:
        return probe.facts.get("tegra", False) and isinstance(probe.medium, DirectoryFilesystem)
