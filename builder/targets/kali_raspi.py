"""Kali Linux ARM for Raspberry Pi: FAT boot at /boot + ext4 root; a Debian-family system with NetworkManager."""

from __future__ import annotations

from .base import Probe, Target


class KaliRaspi(Target):
    name = "kali-raspi"
    description = "Kali Linux ARM for Raspberry Pi (boot at /boot, NetworkManager)"
    cmdline_kind = "cmdline.txt"
    network_stack = "networkmanager"
    default_boot_mount = "/boot"
    default_user = "kali"

    @classmethod
    def matches(cls, probe: Probe) -> bool:
        return probe.os.id == "kali" and probe.boot is not None
