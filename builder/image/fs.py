"""The one interface every filesystem offers: FAT (mtools), ext4 (debugfs) and a plain directory tree.

Build steps and inspection talk only to `Filesystem`; they never know which kind they touch. Paths are always
absolute POSIX paths *inside* the filesystem ("/etc/hostname"). Symbolic links are resolved here, inside the
filesystem's own root, the way the booted system would see them: an absolute target starts again at the root, and a
link that climbs above the root is refused as hostile rather than clamped.
"""

from __future__ import annotations

import posixpath
import stat as statmod
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import UserError

MAX_SYMLINK_HOPS = 40  # the kernel's limit (ELOOP)
MAX_READ_BYTES = 64 * 1024 * 1024  # no config file we read is this big; a bigger one is hostile or a mistake


@dataclass(frozen=True)
class FileStat:
    """What pi-image needs to know about one directory entry (symlinks are not followed)."""

    mode: int  # full st_mode: type bits and permission bits
    uid: int
    gid: int
    size: int

    @property
    def is_dir(self) -> bool:
        return statmod.S_ISDIR(self.mode)

    @property
    def is_file(self) -> bool:
        return statmod.S_ISREG(self.mode)

    @property
    def is_symlink(self) -> bool:
        return statmod.S_ISLNK(self.mode)

    @property
    def permissions(self) -> int:
        return statmod.S_IMODE(self.mode)


def normalize(path: str) -> str:
    """Validate an in-filesystem path and return it absolute and normalized; refuse `..` and odd characters."""
    if not path or "\x00" in path or "\n" in path or '"' in path:
        raise UserError(f"invalid path {path!r} (empty, or holds a NUL, newline or quote)")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UserError(f"path {path!r} contains '..': refusing a path that could leave the filesystem root")
    return "/" + "/".join(parts)


def resolve_links(path: str, lstat: Callable[[str], FileStat | None], readlink: Callable[[str], str],
                  description: str, follow_last: bool = True) -> str:
    """`path` with its symlinks resolved inside a filesystem's root, the way the booted system would see them (an
    absolute target starts again at the root; the last link only if `follow_last`). `lstat` and `readlink` answer for
    paths already resolved; a link that climbs above the root, an empty one or a loop is a one-line UserError that
    names `description`."""
    pending = [part for part in normalize(path).split("/") if part]
    last = pending.pop() if pending and not follow_last else None
    resolved: list[str] = []
    hops = 0
    while pending:
        name = pending.pop(0)
        if name == ".":
            continue
        if name == "..":
            if not resolved:
                raise UserError(f"{description}: a symlink in {path} points outside the filesystem root")
            resolved.pop()
            continue
        candidate = "/" + "/".join([*resolved, name])
        st = lstat(candidate)
        if st is None or not st.is_symlink:
            resolved.append(name)
            continue
        hops += 1
        if hops > MAX_SYMLINK_HOPS:
            raise UserError(f"{description}: too many levels of symlinks resolving {path}")
        target = readlink(candidate)
        if not target or "\x00" in target:
            raise UserError(f"{description}: {candidate} is an empty or invalid symlink")
        if target.startswith("/"):
            resolved = []
        pending = [part for part in target.split("/") if part] + pending
    return "/" + "/".join([*resolved, *([last] if last else [])])


class Filesystem(ABC):
    """A filesystem pi-image can read and edit. Backends implement the primitives; links are resolved here."""

    #: human name used in messages, e.g. "partition 2 (ext4 'writable')"
    description: str
    #: False when opened read-only: any write is then a bug in pi-image, not a user error
    writable: bool

    # --- primitives every backend implements (paths are normalized and already resolved) ---------------

    @abstractmethod
    def _lstat_resolved(self, path: str) -> FileStat | None:
        """Stat `path` without following a final symlink; None if it does not exist."""

    @abstractmethod
    def _listdir_resolved(self, path: str) -> list[str]:
        """Names in directory `path`, sorted, without '.' and '..'."""

    @abstractmethod
    def _read_resolved(self, path: str) -> bytes:
        """Contents of the regular file at `path` (already resolved)."""

    @abstractmethod
    def _readlink_resolved(self, path: str) -> str:
        """Target of the symlink at `path`."""

    @abstractmethod
    def _write_resolved(self, path: str, data: bytes, mode: int, uid: int, gid: int) -> None:
        """Create or replace the file at `path` (its parent exists)."""

    @abstractmethod
    def _mkdir_resolved(self, path: str, mode: int, uid: int, gid: int) -> None:
        """Create the directory `path` (its parent exists, it does not)."""

    @abstractmethod
    def _symlink_resolved(self, path: str, target: str, uid: int, gid: int) -> None:
        """Create or replace a symlink at `path` pointing to `target`."""

    @abstractmethod
    def _remove_resolved(self, path: str) -> None:
        """Remove the file or symlink at `path`."""

    @abstractmethod
    def _set_owner_mode(self, path: str, mode: int | None, uid: int | None, gid: int | None) -> None:
        """Change permission bits and/or owner of `path` (not following a final symlink)."""

    def _require_writable(self) -> None:
        if not self.writable:
            raise RuntimeError(f"{self.description} was opened read-only")

    def commit(self) -> None:  # noqa: B027 - an optional hook, deliberately a no-op by default
        """Apply and verify any batched writes. Backends that write immediately need not override it."""

    def prefetch(self, sizes: dict[str, int]) -> None:
        """Read ahead, in one go where the backend can, the regular files among `sizes` (path -> size) that have the
        size given (a rebuild or a stamp compares every planned file with the one there, and only a file of the same
        size can be the same); later `read`s of them cost nothing."""
        resolved = []
        for path, size in sizes.items():
            try:
                real = self.resolve(path)
            except UserError:
                continue
            st = self._lstat_resolved(real)
            if st is not None and st.is_file and st.size == size:
                resolved.append(real)
        if resolved:
            self._prefetch_resolved(resolved)

    def _prefetch_resolved(self, paths: list[str]) -> None:  # noqa: B027 - an optional hook, a no-op by default
        """Read ahead these resolved regular files (backends whose reads are cheap need not)."""

    # --- the interface build steps use ------------------------------------------------------------------

    def resolve(self, path: str, follow_last: bool = True) -> str:
        """Resolve symlinks in `path` inside this filesystem; refuse links that climb out of the root."""
        return resolve_links(path, self._lstat_resolved, self._readlink_resolved, self.description, follow_last)

    def lstat(self, path: str) -> FileStat | None:
        """Stat `path` without following a final symlink (links in the middle are followed, inside the fs)."""
        return self._lstat_resolved(self.resolve(path, follow_last=False))

    def listdir(self, path: str) -> list[str]:
        """Names in the directory `path` (sorted); [] if it does not exist or is not a directory."""
        real = self.resolve(path)
        st = self._lstat_resolved(real)
        return self._listdir_resolved(real) if st is not None and st.is_dir else []

    def stat(self, path: str) -> FileStat | None:
        """Stat `path`, following symlinks inside the filesystem; None if it (or a link's target) is missing."""
        return self._lstat_resolved(self.resolve(path))

    def exists(self, path: str) -> bool:
        """True if `path` exists (after following symlinks inside the filesystem)."""
        return self.stat(path) is not None

    def read(self, path: str, follow: bool = True) -> bytes:
        """Contents of the file at `path`, following symlinks inside the filesystem; with `follow=False` a final
        symlink is refused (a file that is edited in place is read as it is, never through a link, which could
        copy what the link points at into the edited file)."""
        real = self.resolve(path, follow_last=follow)
        st = self._lstat_resolved(real)
        if st is None:
            raise FileNotFoundError(f"{self.description}: {path} does not exist")
        if st.is_symlink:
            target = self._readlink_resolved(real)
            raise UserError(f"{self.description}: {path} is a symlink (to {target[:200]!r}) where the vendor "
                            f"ships a file pi-image edits; it never reads an edited file through a link: make {path} "
                            "a regular file in the base, or start from the vendor's image")
        if not st.is_file:
            raise UserError(f"{self.description}: {path} is not a regular file (pi-image reads or edits it): make it "
                            "one in the base, or start from the vendor's image")
        if st.size > MAX_READ_BYTES:
            raise UserError(f"{self.description}: {path} is {st.size} bytes, more than the {MAX_READ_BYTES} a file "
                            "pi-image reads may be (no config file is this big): restore the vendor's file")
        return self._read_resolved(real)

    def read_text(self, path: str, default: str | None = None) -> str | None:
        """Text of `path` (UTF-8, bad bytes replaced), or `default` if it does not exist."""
        try:
            return self.read(path).decode("utf-8", errors="replace")
        except FileNotFoundError:
            return default

    def readlink(self, path: str) -> str:
        """Target of the symlink at `path` (the link itself is not followed)."""
        real = self.resolve(path, follow_last=False)
        st = self._lstat_resolved(real)
        if st is None or not st.is_symlink:
            raise UserError(f"{self.description}: {path} is not a symlink")
        return self._readlink_resolved(real)

    def write(self, path: str, data: bytes, mode: int = 0o644, uid: int = 0, gid: int = 0) -> None:
        """Create or replace the file `path` (parents created as root-owned 0755 directories)."""
        real = self._prepare_entry(path)
        existing = self._lstat_resolved(real)
        if existing is not None and existing.is_dir:
            raise UserError(f"{self.description}: cannot write {path}: it is a directory")
        self._write_resolved(real, data, mode, uid, gid)

    def mkdir(self, path: str, mode: int = 0o755, uid: int = 0, gid: int = 0) -> None:
        """`mkdir -p`: create `path` and any missing parents; an existing directory keeps its mode and owner."""
        real = self.resolve(path)
        if real == "/":
            return
        st = self._lstat_resolved(real)
        if st is not None:
            if not st.is_dir:
                raise UserError(f"{self.description}: cannot create directory {path}: a file is in the way")
            return
        self.mkdir(posixpath.dirname(real))
        self._require_writable()
        self._mkdir_resolved(real, mode, uid, gid)

    def symlink(self, path: str, target: str, uid: int = 0, gid: int = 0) -> None:
        """Create or replace the symlink `path` -> `target`."""
        if not target or "\x00" in target or "\n" in target or '"' in target:
            raise UserError(f"invalid symlink target {target!r} for {path}")
        real = self._prepare_entry(path)
        existing = self._lstat_resolved(real)
        if existing is not None and existing.is_dir:
            raise UserError(f"{self.description}: cannot create symlink {path}: a directory is in the way")
        self._symlink_resolved(real, target, uid, gid)

    def remove(self, path: str) -> None:
        """Remove the file or symlink `path`; nothing happens if it does not exist."""
        real = self.resolve(path, follow_last=False)
        st = self._lstat_resolved(real)
        if st is None:
            return
        if st.is_dir:
            raise UserError(f"{self.description}: refusing to remove directory {path}")
        self._require_writable()
        self._remove_resolved(real)

    def chmod(self, path: str, mode: int) -> None:
        """Set the permission bits of `path`."""
        self._set_owner_mode(self._existing(path), mode, None, None)

    def chown(self, path: str, uid: int, gid: int) -> None:
        """Set the owner of `path`."""
        self._set_owner_mode(self._existing(path), None, uid, gid)

    def _existing(self, path: str) -> str:
        self._require_writable()
        real = self.resolve(path, follow_last=False)
        if self._lstat_resolved(real) is None:
            raise UserError(f"{self.description}: {path} does not exist")
        return real

    def _prepare_entry(self, path: str) -> str:
        """Resolve the parent of `path`, create it if missing, and return the entry's real path."""
        self._require_writable()
        real = self.resolve(path, follow_last=False)
        if real == "/":
            raise UserError(f"{self.description}: cannot replace the root directory")
        self.mkdir(posixpath.dirname(real))
        return real
