"""Ubuntu Server 22.04/24.04 on x86-64 (amd64): a PC, a laptop or a VM, with no image for pi-image to edit.

Its node gets the same plan as a card, delivered as a cloud-init NoCloud seed (`pi-image seed-iso`,
builder/build/seed_iso.py) that a stock Ubuntu reads at first boot: the amd64 cloud image, or the live server installer
(`--autoinstall`). The plan is made against a reference tree of a stock install (builder/samples/data/ubuntu-x86),
which is what this target is bound to; a real x86 disk given to `pi-image build` is refused with that advice.

No boot partition, and no kernel command line to edit: Ubuntu 22.04 and later boot x86 with the unified cgroup
hierarchy (cgroup v2) and its memory controller on, which is all the kubelet needs (the `cgroup_enable=memory`
flags are for the Raspberry Pi kernels, which ship the controller off). Login, hostname, time zone, locale and a
fixed address are cloud-init's, as on Ubuntu for the Pi.
"""

from __future__ import annotations

import re

from ..image import DirectoryFilesystem, DiskImage, Filesystem
from .base import Probe, Target
from .ubuntu_raspi import DPKG_STATUS, UbuntuRaspi

ARCHITECTURE = "amd64"
# dpkg's status of a real install is a few MiB (an Ubuntu desktop's about 3): a bigger one is not read
MAX_DPKG_STATUS_BYTES = 16 << 20
# dpkg's own entry in its status (a stanza: lines up to a blank one) and the Architecture field in it
_DPKG_STANZA = re.compile(r"^Package: dpkg$(?:\n.+)*?\nArchitecture: (\S+)$", re.MULTILINE)
SEED_ISO_COMMAND = "pi-image seed-iso --profile x86-worker --cluster DIR --node NAME"


class UbuntuX86(Target):
    name = "ubuntu-x86"
    description = (f"Ubuntu Server 22.04/24.04 {ARCHITECTURE} (cloud image, or the live server installer): "
                   "`pi-image seed-iso`")
    cmdline_kind = "none"
    network_stack = "netplan"
    first_boot = "cloud-init"
    default_user = "ubuntu"
    os_overlays = ("cloud-init-seed", "netplan-wifi")
    admin_groups = ("adm", "cdrom", "dip", "lxd", "sudo")  # cloud-init's default user on Ubuntu
    carries_bundle = False  # a seed ISO's user-data is text for cloud-init: no room for packages and images

    netplan_regulatory_domain = UbuntuRaspi.netplan_regulatory_domain  # the same netplan.io packages

    @classmethod
    def matches(cls, probe: Probe) -> bool:
        return isinstance(probe.medium, DirectoryFilesystem) and is_x86_ubuntu(probe)

    @property
    def cmdline_location(self) -> None:
        """None: GRUB's command line needs nothing for Kubernetes here (see the module docstring)."""
        return None


def is_x86_ubuntu(probe: Probe) -> bool:
    """True for an Ubuntu root of the amd64 architecture with no Raspberry Pi boot partition (and no L4T).

    dpkg's status is read last, only for a root the cheap checks leave (not for a card or a Jetson image)."""
    ubuntu = probe.os.id == "ubuntu" or "ubuntu" in probe.os.id_like
    return (ubuntu and probe.boot is None and not probe.facts.get("tegra")
            and dpkg_architecture(probe.root) == ARCHITECTURE)


def seed_iso_advice(probe: Probe) -> str | None:
    """What to tell a user who gave `pi-image build` (or `inspect`) an x86 Ubuntu disk, or None for anything else."""
    if not isinstance(probe.medium, DiskImage) or not is_x86_ubuntu(probe):
        return None
    return (f"{probe.medium.path} is an x86 Ubuntu install image/disk ({probe.os.pretty_name}, {ARCHITECTURE}, no "
            "Raspberry Pi boot partition): pi-image does not edit it; the node gets the same setup from a cloud-init "
            f"seed that the stock system reads at first boot: use `{SEED_ISO_COMMAND}`")


def dpkg_architecture(root: Filesystem) -> str | None:
    """The native architecture of a Debian-family root: that of its installed `dpkg` package (dpkg's status), or
    None (no dpkg entry, or a status file bigger than MAX_DPKG_STATUS_BYTES, which is then not read)."""
    status = root.stat(DPKG_STATUS)
    if status is None or not status.is_file or status.size > MAX_DPKG_STATUS_BYTES:
        return None
    match = _DPKG_STANZA.search(root.read_text(DPKG_STATUS) or "")
    return match.group(1) if match else None
