"""Reading systemd unit state from an offline root filesystem: enabled = a wants link, masked = a link to /dev/null."""

from __future__ import annotations

from .image import Filesystem

UNIT_DIR = "/etc/systemd/system"


def unit_masked(root: Filesystem, unit: str) -> bool:
    """True if `unit` is masked (/etc/systemd/system/UNIT -> /dev/null)."""
    st = root.lstat(f"{UNIT_DIR}/{unit}")
    return st is not None and st.is_symlink and root.readlink(f"{UNIT_DIR}/{unit}") == "/dev/null"


def wants_links(root: Filesystem, unit: str) -> list[str]:
    """Paths of every `*.wants/UNIT` link under /etc/systemd/system (how `systemctl enable` records it)."""
    return [f"{UNIT_DIR}/{d}/{unit}" for d in root.listdir(UNIT_DIR)
            if d.endswith((".wants", ".requires")) and root.lstat(f"{UNIT_DIR}/{d}/{unit}") is not None]


def unit_enabled(root: Filesystem, unit: str) -> bool:
    """True if `unit` would start at boot: wanted by some target and not masked."""
    return bool(wants_links(root, unit)) and not unit_masked(root, unit)
