"""What every target knows: its filesystems, where its kernel command line lives, its network stack, its init.

A target is a small class of facts over a common base (like mkosi's distributions): detection picks the class,
the instance binds it to the opened root and boot filesystems. Build steps ask the target, never the image.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from typing import ClassVar

from ..errors import UserError, printable
from ..image import DirectoryFilesystem, DiskImage, Filesystem
from .cmdline import (
    CmdlineError,
    append_cmdline_txt,
    append_extlinux,
    check_cmdline_txt,
    check_extlinux,
    cmdline_txt_args,
    extlinux_args,
)

_OS_IDENT = re.compile(r"[a-z0-9._-]{1,64}")
# The groups of a Debian-family system an admin user is added to where pi-image makes that user itself (those the
# image lacks are skipped).
DEBIAN_ADMIN_GROUPS = ("adm", "sudo", "video", "audio", "plugdev", "netdev", "dialout", "gpio", "i2c", "render")


@dataclass(frozen=True)
class OsRelease:
    """The fields of /etc/os-release pi-image uses."""

    id: str
    version_id: str | None
    pretty_name: str
    id_like: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str) -> OsRelease:
        """Parse os-release(5): KEY=value lines, values optionally shell-quoted."""
        values: dict[str, str] = {}
        for line in text.splitlines():
            key, sep, raw = line.strip().partition("=")
            if not sep or key.startswith("#"):
                continue
            try:
                parts = shlex.split(raw)
            except ValueError:
                parts = [raw.strip("\"'")]
            values[key] = parts[0] if parts else ""
        # identifiers are [a-z0-9._-] (os-release(5)): anything else from a hostile image counts as absent
        def ident(key: str) -> str | None:
            value = values.get(key, "").lower()
            return value if _OS_IDENT.fullmatch(value) else None

        return cls(
            id=ident("ID") or "linux",
            version_id=ident("VERSION_ID"),
            pretty_name=printable(values.get("PRETTY_NAME") or values.get("NAME") or "Linux"),
            id_like=tuple(word for word in values.get("ID_LIKE", "").lower().split() if _OS_IDENT.fullmatch(word)),
        )


@dataclass
class Probe:
    """What detection found in a medium, before a target class is chosen."""

    medium: DiskImage | DirectoryFilesystem
    root: Filesystem
    os: OsRelease
    boot: Filesystem | None = None  # the FAT partition holding the Pi firmware files, if any
    facts: dict[str, bool] = field(default_factory=dict)


@dataclass
class Target:
    """A detected target bound to its filesystems. Subclasses set the class attributes and `matches()`.

    What differs between operating systems is decided here, never by a profile: how the admin login is made, where
    networking is configured, which overlays the OS needs, which swap services it ships.
    """

    name: ClassVar[str]
    description: ClassVar[str]
    #: "cmdline.txt" (Pi firmware, at the root of the boot partition) or "extlinux" (L4T, in the root fs)
    cmdline_kind: ClassVar[str]
    #: where pi-image configures networking: "netplan" (cloud-init's network-config, /etc/netplan) or
    #: "networkmanager" (keyfiles in /etc/NetworkManager/system-connections)
    network_stack: ClassVar[str]
    #: what makes the admin login at first boot: "cloud-init" (the seed on the boot partition, which also applies
    #: the locale and the time zone), "userconf" (userconf.txt on the boot partition) or "offline" (pi-image
    #: edits passwd and shadow itself)
    first_boot: ClassVar[str]
    #: the admin login when a profile names none: the OS's own default user, or the one pi-image creates
    default_user: ClassVar[str]
    #: overlays this OS needs, rendered after the runtime's and before the profile's
    os_overlays: ClassVar[tuple[str, ...]] = ()
    #: groups the admin user gets: from the cloud-init seed ("cloud-init"), or from pi-image where it makes the user
    #: itself ("offline"; a group the image lacks is skipped)
    admin_groups: ClassVar[tuple[str, ...]] = ()
    #: the image's own cloud-init config sets a keyboard, so the seed must say the profile's
    seed_sets_keyboard: ClassVar[bool] = False
    #: units a node needs that this OS ships disabled (enabled where the image has them)
    enabled_units: ClassVar[tuple[str, ...]] = ()
    #: swap services this OS ships (masked: the kubelet refuses swap)
    swap_services: ClassVar[tuple[str, ...]] = ()
    #: systemd-rfkill state files of the on-board Wi-Fi, which this OS keeps blocked until a country is set
    wifi_rfkill_states: ClassVar[tuple[str, ...]] = ()
    #: where the boot partition is mounted when the fstab does not say
    default_boot_mount: ClassVar[str | None] = None
    #: an --offline bundle (packages, images) can be written onto this target's root filesystem
    carries_bundle: ClassVar[bool] = True
    #: a vendor's download (a disk image) can hold this target, so a base catalog entry may name it (not so for a
    #: directory tree)
    in_catalog: ClassVar[bool] = True
    #: the packages of the GPU's container runtime, which only this target's vendor repository carries: installed
    #: with the container runtime, and what lets a profile make it the default (`default_runtime: nvidia`)
    gpu_packages: ClassVar[tuple[str, ...]] = ()
    #: placeholders in the image's apt sources that its own first boot fills in, and their value for its board
    #: (the build host resolves an --offline bundle against those sources before that boot)
    apt_source_placeholders: ClassVar[dict[str, str]] = {}
    #: the names a seed's network-config matches the cluster interface by when neither the inventory (a MAC) nor the
    #: profile (network.interface) says which it is: systemd's predictable Ethernet names; None keeps the entry's
    #: own name (eth0)
    seed_interface_glob: ClassVar[str | None] = "en*"
    #: the distribution's package manager, which the agent installs the runtime (and on the release path the
    #: kubelet's dependencies) with: "apt" or "pacman" (node.json `package_manager`)
    package_manager: ClassVar[str] = "apt"
    #: how Kubernetes is installed when a profile does not say (`kube_install`): "packages" (the distribution's
    #: packages from pkgs.k8s.io) or "release" (the upstream release binaries of the cluster's exact patch)
    kube_install: ClassVar[str] = "packages"

    medium: DiskImage | DirectoryFilesystem
    root: Filesystem
    os: OsRelease
    boot: Filesystem | None

    @classmethod
    def matches(cls, probe: Probe) -> bool:
        """True if `probe` is this target."""
        raise NotImplementedError

    @property
    def boot_mount(self) -> str | None:
        """Where the boot partition is mounted on the running system (from the fstab, else the default)."""
        fstab = self.root.read_text("/etc/fstab", "") or ""
        for line in fstab.splitlines():
            fields = line.split()
            if len(fields) >= 3 and not fields[0].startswith("#") and fields[2] == "vfat":
                return fields[1]
        return self.default_boot_mount

    def filesystem(self, name: str) -> Filesystem:
        """The filesystem called `name`: "root" or "boot" (the FAT partition with the Pi firmware)."""
        found = self.root if name == "root" else self.boot if name == "boot" else None
        if found is None:
            raise UserError(f"{self.name}: this target has no {name} filesystem")
        return found

    @property
    def cmdline_location(self) -> tuple[str, str] | None:
        """("root" | "boot", path) of the file holding the kernel command line; None where pi-image edits none."""
        if self.cmdline_kind == "extlinux":
            return "root", "/boot/extlinux/extlinux.conf"
        return "boot", "/cmdline.txt"

    def kernel_cmdline(self) -> tuple[list[str], str | None]:
        """The effective kernel command line as a list of arguments, and what makes its file unfit for the boot
        loader (see `check_cmdline`), or None; ([], None) where pi-image edits none."""
        location = self.cmdline_location
        if location is None:
            return [], None
        name, path = location
        fs = self.filesystem(name)
        text = fs.read_text(path)
        if text is None:
            raise UserError(f"{fs.description}: {path} is missing")
        problem = None
        try:
            self.check_cmdline(text)
        except CmdlineError as err:
            problem = str(err)
        args = extlinux_args(text) if self.cmdline_kind == "extlinux" else cmdline_txt_args(text)
        return args, problem

    def check_cmdline(self, text: str) -> None:
        """Raise CmdlineError if `text`, this target's command-line file, is unfit for its boot loader: a line longer
        than it passes on, a control character, no entry to boot."""
        (check_extlinux if self.cmdline_kind == "extlinux" else check_cmdline_txt)(text)

    def with_kernel_args(self, text: str, args: list[str]) -> str:
        """The command-line file's text with `args` added where this target's boot loader reads them."""
        return append_extlinux(text, args) if self.cmdline_kind == "extlinux" else append_cmdline_txt(text, args)

    @property
    def netplan_regulatory_domain(self) -> bool:
        """True if the image's netplan takes `regulatory-domain` (netplan 0.105 and later)."""
        return False

    @property
    def locale_list(self) -> str:
        """The file `locale-gen` (run without arguments) reads the locales to build from: Debian's /etc/locale.gen,
        or on Ubuntu a file in /var/lib/locales/supported.d/."""
        ubuntu = self.os.id == "ubuntu" or "ubuntu" in self.os.id_like
        return "/var/lib/locales/supported.d/pi-image" if ubuntu else "/etc/locale.gen"
