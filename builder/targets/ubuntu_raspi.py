"""Ubuntu preinstalled server for Raspberry Pi (20.04/22.04/24.04): FAT `system-boot` + ext4 `writable`, cloud-init.

cloud-init's NoCloud seed on system-boot (overlays/cloud-init-seed) makes the user and the network at first boot;
Wi-Fi goes to a private netplan file (overlays/netplan-wifi), never into the world-readable seed.
"""

from __future__ import annotations

import re

from .base import Probe, Target

DPKG_STATUS = "/var/lib/dpkg/status"
# netplan learned `regulatory-domain` in 0.105: jammy-updates and later have it, focal (0.103/0.104) never did.
NETPLAN_REGDOM = (0, 105)


class UbuntuRaspi(Target):
    name = "ubuntu-raspi"
    description = "Ubuntu Server for Raspberry Pi (system-boot at /boot/firmware, cloud-init)"
    cmdline_kind = "cmdline.txt"
    network_stack = "netplan"
    first_boot = "cloud-init"
    default_user = "ubuntu"
    os_overlays = ("cloud-init-seed", "netplan-wifi")
    admin_groups = ("adm", "dialout", "plugdev", "sudo", "video", "netdev")
    default_boot_mount = "/boot/firmware"

    @classmethod
    def matches(cls, probe: Probe) -> bool:
        return probe.os.id == "ubuntu" and probe.boot is not None and not probe.facts.get("tegra")

    @property
    def netplan_regulatory_domain(self) -> bool:
        """The installed netplan.io's version where dpkg's status says it, else the release's (22.04 and later)."""
        installed = netplan_version(self.root.read_text(DPKG_STATUS) or "")
        if installed is not None:
            return installed >= NETPLAN_REGDOM
        return tuple(int(part) for part in (self.os.version_id or "0").split(".")[:2]) >= (22, 4)


def netplan_version(status: str) -> tuple[int, int] | None:
    """(major, minor) of the installed netplan.io in a dpkg status file, or None if it is not listed there."""
    for stanza in status.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in stanza.splitlines() if ": " in line and not line[0].isspace())
        if fields.get("Package") == "netplan.io" and "install ok installed" in fields.get("Status", ""):
            found = re.match(r"(?:\d+:)?(\d+)\.(\d+)", fields.get("Version", ""))
            return (int(found.group(1)), int(found.group(2))) if found else None
    return None
