"""Kali Linux ARM for Raspberry Pi: FAT boot at /boot + ext4 root; a Debian-family system with NetworkManager.

Its `kali` user exists in the image; its kubelet needs systemd-resolved, which Kali ships disabled.
"""

from __future__ import annotations

from .base import DEBIAN_ADMIN_GROUPS, Probe, Target


class KaliRaspi(Target):
    name = "kali-raspi"
    description = "Kali Linux ARM for Raspberry Pi (boot at /boot, NetworkManager)"
    cmdline_kind = "cmdline.txt"
    network_stack = "networkmanager"
    first_boot = "offline"
    default_user = "kali"
    os_overlays = ("networkmanager-wifi",)
    admin_groups = DEBIAN_ADMIN_GROUPS  # for a login other than `kali`, which pi-image adds itself
    enabled_units = ("systemd-resolved.service",)
    default_boot_mount = "/boot"

    @classmethod
    def matches(cls, probe: Probe) -> bool:
        return probe.os.id == "kali" and probe.boot is not None
