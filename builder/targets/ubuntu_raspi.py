"""Ubuntu preinstalled server for Raspberry Pi (20.04/22.04/24.04): FAT `system-boot` + ext4 `writable`, cloud-init."""

from __future__ import annotations

from .base import Probe, Target


class UbuntuRaspi(Target):
    name = "ubuntu-raspi"
    description = "Ubuntu Server for Raspberry Pi (system-boot at /boot/firmware, cloud-init)"
    cmdline_kind = "cmdline.txt"
    network_stack = "cloud-init"
    default_boot_mount = "/boot/firmware"
    default_user = "ubuntu"

    @classmethod
    def matches(cls, probe: Probe) -> bool:
        return probe.os.id == "ubuntu" and probe.boot is not None and not probe.facts.get("tegra")
