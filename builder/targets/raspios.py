"""Raspberry Pi OS (bookworm and later): FAT `bootfs` at /boot/firmware + ext4 `rootfs`, NetworkManager."""

from __future__ import annotations

from .base import Probe, Target


class RaspiOS(Target):
    name = "raspios"
    description = "Raspberry Pi OS bookworm+ (bootfs at /boot/firmware, NetworkManager)"
    cmdline_kind = "cmdline.txt"
    network_stack = "networkmanager"
    default_boot_mount = "/boot/firmware"
    default_user = None  # no default user since bookworm: userconf.txt creates one

    @classmethod
    def matches(cls, probe: Probe) -> bool:
        debian_like = probe.os.id in ("debian", "raspbian") or "debian" in probe.os.id_like
        return debian_like and probe.boot is not None and probe.facts.get("rpi_issue", False)
