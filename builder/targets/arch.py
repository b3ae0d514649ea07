"""Arch Linux on x86-64: an installed machine, or Arch's cloud image (archlinux/arch-boxes, which ships cloud-init).

Like Ubuntu on x86 (x86.py) there is no image for pi-image to edit: the node's plan is made against a reference tree of
a stock install (builder/samples/data/arch) and reaches the machine as a cloud-init NoCloud seed (`pi-image seed-iso`,
for the cloud image's first boot) or as an enroll script run on an installed system (`pi-image enroll`). Kubernetes
comes from the upstream release binaries (`kube_install: release`): Arch packages no kubeadm pinned to a cluster's
minor, and the runtime and the kubelet's dependencies come from pacman.

Detection needs both os-release (ID=arch, or ID_LIKE=arch for a derivative) and pacman's local database, whose
`pacman` entry gives the architecture: Arch Linux ARM (ID=archarm, ID_LIKE=arch) is the same OS for another machine.

Swap: the cloud image's is a swap file in the fstab (/swap/swapfile, on btrfs), which the agent comments out at first
boot as on Ubuntu; zram-generator is no part of a stock install (a machine that has it keeps its own config, which the
agent's swap check then reports). No kernel command line to edit: Arch boots with the unified cgroup hierarchy.
"""

from __future__ import annotations

import re

from ..image import DirectoryFilesystem, DiskImage, Filesystem
from .base import Probe, Target

ARCHITECTURE = "x86_64"  # pacman's name for amd64
ALPM_DB_VERSION = "/var/lib/pacman/local/ALPM_DB_VERSION"
PACMAN_LOCAL = "/var/lib/pacman/local"
# a package's desc in pacman's local database is a few KiB: a bigger one is not read
MAX_DESC_BYTES = 64 << 10
_DESC_ARCH = re.compile(r"^%ARCH%\n(\S+)$", re.MULTILINE)
_PACMAN_ENTRY = re.compile(r"pacman-[^-/]+-[^-/]+")
SETUP_COMMANDS = ("pi-image seed-iso --profile arch-worker --cluster DIR --node NAME (the cloud image), or "
                  "pi-image enroll --cluster DIR --node NAME (an installed machine)")


class ArchX86(Target):
    name = "arch"
    description = ("Arch Linux x86_64 (the cloud image, or an installed machine): `pi-image seed-iso` or "
                   "`pi-image enroll`")
    cmdline_kind = "none"
    network_stack = "netplan"  # cloud-init's network-config (v2), which cloud-init renders for systemd-networkd
    first_boot = "cloud-init"
    default_user = "arch"  # cloud-init's default user on Arch (arch-boxes' cloud image)
    os_overlays = ("cloud-init-seed",)  # no netplan on Arch: no Wi-Fi file for it
    admin_groups = ("wheel", "users")  # cloud-init's default user on Arch (config/cloud.cfg.tmpl)
    carries_bundle = False  # a seed ISO's user-data is text for cloud-init: no room for packages and images
    # cloud-init renders network-config for systemd-networkd here, which takes the entry's name, not a match glob;
    # the cloud image boots with net.ifnames=0, so its first Ethernet interface is eth0 (the seed's default)
    seed_interface_glob = None
    package_manager = "pacman"
    kube_install = "release"  # kubeadm, kubelet, kubectl of the cluster's exact patch from the upstream release

    @classmethod
    def matches(cls, probe: Probe) -> bool:
        return isinstance(probe.medium, DirectoryFilesystem) and is_x86_arch(probe)

    @property
    def cmdline_location(self) -> None:
        """None: Arch's boot loader needs nothing for Kubernetes (cgroup v2 with its memory controller is on)."""
        return None


def is_x86_arch(probe: Probe) -> bool:
    """True for an Arch Linux root (or a derivative's) whose pacman is x86_64, with no Pi boot partition."""
    arch = probe.os.id == "arch" or "arch" in probe.os.id_like
    return (arch and probe.boot is None and probe.root.exists(ALPM_DB_VERSION)
            and pacman_architecture(probe.root) == ARCHITECTURE)


def pacman_architecture(root: Filesystem) -> str | None:
    """The architecture of the `pacman` package in pacman's local database (%ARCH% of its desc), or None (no entry,
    or a desc bigger than MAX_DESC_BYTES, which is then not read)."""
    for entry in root.listdir(PACMAN_LOCAL):
        if not _PACMAN_ENTRY.fullmatch(entry):
            continue
        path = f"{PACMAN_LOCAL}/{entry}/desc"
        status = root.stat(path)
        if status is None or not status.is_file or status.size > MAX_DESC_BYTES:
            return None
        match = _DESC_ARCH.search(root.read_text(path) or "")
        return match.group(1) if match else None
    return None


def arch_advice(probe: Probe) -> str | None:
    """What to tell a user who gave `pi-image build` (or `inspect`) an Arch disk, or None for anything else."""
    if not isinstance(probe.medium, DiskImage) or not is_x86_arch(probe):
        return None
    return (f"{probe.medium.path} is an Arch Linux disk ({probe.os.pretty_name}, {ARCHITECTURE}): pi-image does not "
            f"edit it; the node gets its setup on the machine itself: use `{SETUP_COMMANDS}`")
