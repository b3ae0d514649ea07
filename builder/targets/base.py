"""What every target knows: its filesystems, where its kernel command line lives, its network stack, its init.

A target is a small class of facts over a common base (like mkosi's distributions): detection picks the class,
the instance binds it to the opened root and boot filesystems. Build steps ask the target, never the image.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from typing import ClassVar

from ..cmdline import append_cmdline_txt, append_extlinux, cmdline_txt_args, extlinux_args
from ..errors import UserError
from ..image import DiskImage, DirectoryFilesystem, Filesystem


@dataclass(frozen=True)
class OsRelease:
    """The fields of /etc/os-release pi-image uses."""

    id: str
    version_id: str | None
    pretty_name: str
    id_like: tuple[str, ...] = ()
    version_codename: str | None = None

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
        return cls(
            id=values.get("ID", "linux").lower(),
            version_id=values.get("VERSION_ID") or None,
            pretty_name=values.get("PRETTY_NAME") or values.get("NAME") or "Linux",
            id_like=tuple(values.get("ID_LIKE", "").lower().split()),
            version_codename=values.get("VERSION_CODENAME") or None,
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
    """A detected target bound to its filesystems. Subclasses set the class attributes and `matches()`."""

    name: ClassVar[str]
    description: ClassVar[str]
    #: "cmdline.txt" (Pi firmware, at the root of the boot partition) or "extlinux" (L4T, in the root fs)
    cmdline_kind: ClassVar[str]
    #: where the distro configures networking: "cloud-init" (netplan) or "networkmanager"
    network_stack: ClassVar[str]
    #: where the boot partition is mounted when the fstab does not say
    default_boot_mount: ClassVar[str | None] = None
    #: the admin user that exists (or that first boot creates) on this OS
    default_user: ClassVar[str | None] = None

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
    def cmdline_location(self) -> tuple[str, str]:
        """("root" | "boot", path) of the file holding the kernel command line."""
        if self.cmdline_kind == "extlinux":
            return "root", "/boot/extlinux/extlinux.conf"
        return "boot", "/cmdline.txt"

    def kernel_args(self) -> list[str]:
        """The effective kernel command line, as a list of arguments."""
        name, path = self.cmdline_location
        fs = self.filesystem(name)
        text = fs.read_text(path)
        if text is None:
            raise UserError(f"{fs.description}: {path} is missing")
        return extlinux_args(text) if self.cmdline_kind == "extlinux" else cmdline_txt_args(text)

    def with_kernel_args(self, text: str, args: list[str]) -> str:
        """The command-line file's text with `args` added where this target's boot loader reads them."""
        return append_extlinux(text, args) if self.cmdline_kind == "extlinux" else append_cmdline_txt(text, args)
