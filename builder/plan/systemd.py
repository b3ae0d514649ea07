"""Reading systemd unit state from an offline root filesystem: enabled = a wants link, masked = a link to /dev/null.

The readers take a `UnitTree`: the image's own `Filesystem` (what `pi-image inspect` reads), or a build's view of it
as planned so far (`PlanView.tree("root")`), so that a unit an earlier step or an overlay adds counts.
"""

from __future__ import annotations

from typing import Protocol

from ..errors import UserError
from ..image import FileStat
from . import PlanView

UNIT_DIR = "/etc/systemd/system"


class UnitTree(Protocol):
    """What reading unit state needs of a root filesystem (a `Filesystem` or a `TreeView` has it)."""

    def lstat(self, path: str) -> FileStat | None:
        """Stat without following a final symlink; None if missing."""

    def stat(self, path: str) -> FileStat | None:
        """Stat following symlinks; None if missing."""

    def listdir(self, path: str) -> list[str]:
        """The names in a directory ([] if it is none)."""

    def readlink(self, path: str) -> str:
        """The target of a symlink."""


def unit_masked(root: UnitTree, unit: str) -> bool:
    """True if `unit` is masked (/etc/systemd/system/UNIT -> /dev/null)."""
    st = root.lstat(f"{UNIT_DIR}/{unit}")
    return st is not None and st.is_symlink and root.readlink(f"{UNIT_DIR}/{unit}") == "/dev/null"


def wants_links(root: UnitTree, unit: str) -> list[str]:
    """Paths of every `*.wants/UNIT` link under /etc/systemd/system (how `systemctl enable` records it)."""
    return [f"{UNIT_DIR}/{d}/{unit}" for d in root.listdir(UNIT_DIR)
            if d.endswith((".wants", ".requires")) and root.lstat(f"{UNIT_DIR}/{d}/{unit}") is not None]


def unit_enabled(root: UnitTree, unit: str) -> bool:
    """True if `unit` would start at boot: wanted by some target and not masked."""
    return bool(wants_links(root, unit)) and not unit_masked(root, unit)


UNIT_PATHS = (UNIT_DIR, "/usr/lib/systemd/system", "/lib/systemd/system")


def unit_file(root: UnitTree, unit: str) -> str | None:
    """Where `unit`'s file is in the image (first of /etc, /usr/lib, /lib systemd dirs), or None."""
    for directory in UNIT_PATHS:
        st = root.stat(f"{directory}/{unit}")
        if st is not None and st.is_file:
            return f"{directory}/{unit}"
    return None


def enable_links(view: PlanView, unit: str) -> list[tuple[str, str]]:
    """The (link, target) symlinks `systemctl enable UNIT` would create for a unit in the image as planned so far
    (the unit file is read through a link, as systemd does: its text is parsed here, never written back)."""
    path = unit_file(view.tree("root"), unit)
    if path is None:
        raise UserError(f"{view.filesystem('root').description}: {unit} is not installed in the image")
    return install_links(view.read_text("root", path, follow=True) or "", unit, path)


def install_links(unit_text: str, unit: str, path: str) -> list[tuple[str, str]]:
    """The (link, target) symlinks the [Install] section of `unit_text` asks for, the unit living at `path`."""
    links = []
    section = ""
    for line in unit_text.splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line
            continue
        key, _, value = line.partition("=")
        if section != "[Install]" or not value:
            continue
        for name in value.split():
            if key.strip() in ("WantedBy", "RequiredBy"):
                suffix = "wants" if key.strip() == "WantedBy" else "requires"
                links.append((f"{UNIT_DIR}/{name}.{suffix}/{unit}", path))
            elif key.strip() == "Alias":
                links.append((f"{UNIT_DIR}/{name}", path))
    if not links:
        raise UserError(f"{unit} ({path}) has no [Install] section to enable it with: restore the vendor's unit file")
    return links
