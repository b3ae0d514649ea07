"""A build as data: an ordered list of file operations on named filesystems ("root", "boot").

Steps never touch an image: they read through a `PlanView` (the target's files as the plan has changed them so far)
and add `FileOp`s. The plan can then be printed (`--dry-run`), hashed into the build manifest, rendered elsewhere
(e.g. cloud-init `write_files` for x86 nodes), or applied to any target by `apply()`.
"""

from __future__ import annotations

import hashlib
import posixpath
import stat as statmod
from dataclasses import dataclass, field
from typing import Any

from ..errors import UserError
from ..image import FileStat, Filesystem, normalize
from ..image.fat import FatFilesystem
from ..image.fs import resolve_links
from ..targets import Target

FILESYSTEMS = ("root", "boot")


@dataclass(frozen=True)
class FileOp:
    """One change to one path. `action` is write | mkdir | symlink | remove."""

    action: str
    fs: str
    path: str
    step: str
    content: bytes | None = None
    target: str | None = None
    mode: int | None = None
    uid: int = 0
    gid: int = 0

    def describe(self, secrets: tuple[str, ...] = ()) -> dict[str, Any]:
        """The op as JSON-friendly data (content as its size and sha256). A private file's hash stays private too,
        and so does the hash of content holding one of `secrets` (it would allow guessing them offline)."""
        out: dict[str, Any] = {"step": self.step, "action": self.action, "fs": self.fs, "path": self.path}
        if self.content is not None:
            out["size"] = len(self.content)
            holds_secret = any(secret.encode() in self.content for secret in secrets)
            if (self.mode is None or self.mode & 0o044) and not holds_secret:
                out["sha256"] = hashlib.sha256(self.content).hexdigest()
        if self.target is not None:
            out["target"] = self.target
        if self.mode is not None:
            out.update(mode=f"{self.mode:04o}", owner=f"{self.uid}:{self.gid}")
        return out

    def line(self) -> str:
        """One human-readable line for `--dry-run`."""
        d = self.describe()
        what = {"write": f"write {d.get('size')} B", "mkdir": "mkdir", "symlink": "symlink", "remove": "remove"}
        extra = f" -> {self.target}" if self.target else ""
        mode = f"  {d['mode']} {d['owner']}" if "mode" in d else ""
        return f"[{self.step:18}] {what[self.action]:14} {self.fs}:{self.path}{extra}{mode}"


@dataclass
class Plan:
    """Ordered file operations, plus the latest state of every path they touch."""

    ops: list[FileOp] = field(default_factory=list)
    # an index of `ops` (kept up to date as they are appended): (fs, path) -> the positions of its ops, and the
    # directories some op creates by writing below them
    _positions: dict[tuple[str, str], list[int]] = field(default_factory=dict, init=False, repr=False, compare=False)
    _parents: set[tuple[str, str]] = field(default_factory=set, init=False, repr=False, compare=False)
    _indexed: int = field(default=0, init=False, repr=False, compare=False)

    def add(self, op: FileOp) -> None:
        """Append `op` (paths normalized, `..` refused)."""
        if op.fs not in FILESYSTEMS:
            raise ValueError(f"unknown filesystem {op.fs!r}")
        self.ops.append(FileOp(**{**op.__dict__, "path": normalize(op.path)}))

    def latest(self, fs: str, path: str) -> FileOp | None:
        """The last op on (`fs`, `path`), if the plan touches it."""
        positions = self._index()[0].get((fs, normalize(path)))
        return self.ops[positions[-1]] if positions else None

    def before(self, fs: str, path: str, op: FileOp) -> FileOp | None:
        """The op on (`fs`, `path`) that came before `op` (itself one of the path's ops), if any."""
        positions = self._index()[0].get((fs, normalize(path)), [])
        at = next(index for index, position in enumerate(positions) if self.ops[position] is op)
        return self.ops[positions[at - 1]] if at else None

    def creates_below(self, fs: str, directory: str) -> bool:
        """True if some op makes an entry below `directory` on `fs` (applying it creates the directory)."""
        return (fs, normalize(directory)) in self._index()[1]

    def describe(self, secrets: tuple[str, ...] = ()) -> list[dict[str, Any]]:
        """Every op as JSON-friendly data, in order (no hash of content holding one of `secrets`)."""
        return [op.describe(secrets) for op in self.ops]

    def _index(self) -> tuple[dict[tuple[str, str], list[int]], set[tuple[str, str]]]:
        """The index, brought up to date with ops appended since (rebuilt if ops were taken away)."""
        if self._indexed > len(self.ops):
            self._positions, self._parents, self._indexed = {}, set(), 0
        for position in range(self._indexed, len(self.ops)):
            op = self.ops[position]
            self._positions.setdefault((op.fs, op.path), []).append(position)
            parent = posixpath.dirname(op.path)
            while op.action != "remove" and parent != "/" and (op.fs, parent) not in self._parents:
                self._parents.add((op.fs, parent))
                parent = posixpath.dirname(parent)
        self._indexed = len(self.ops)
        return self._positions, self._parents


class PlanView:
    """Read a target's files as the plan has changed them so far (how steps read the image: never directly).

    Each path answers from the plan's latest op on it, else from the target's filesystem; a directory that some op
    writes below exists. Symlinks are resolved as the booted system would, through both the links the plan makes
    and the image's own, inside the filesystem's root (one that climbs out is refused). The calls are
    `Filesystem`'s with the filesystem's name ("root" or "boot") first; `tree(fs)` gives one filesystem's view with
    exactly `Filesystem`'s signatures. `read_bytes` and `read_text` never read through a final symlink unless asked.
    """

    def __init__(self, target: Target, plan: Plan):
        self.target = target
        self.plan = plan

    def filesystem(self, fs: str) -> Filesystem:
        """The target's filesystem called `fs` ("root" or "boot")."""
        return self.target.filesystem(fs)

    def tree(self, fs: str) -> TreeView:
        """Filesystem `fs` as the plan has changed it so far, read with `Filesystem`'s calls (lstat, stat, ...)."""
        return TreeView(self, fs)

    def read_text(self, fs: str, path: str, follow: bool = False) -> str | None:
        """Current text of `path` on `fs` (None if missing or removed). A file a step reads is one it edits, so a
        final symlink is refused unless `follow` (the text is then used on the host, never written back), and so is
        a NUL byte, which no text file holds."""
        data = self.read_bytes(fs, path, follow)
        if data is None:
            return None
        nul = data.find(b"\0")
        if nul >= 0:
            raise UserError(f"{self.filesystem(fs).description}: {path} holds a NUL byte (at offset {nul}), which no "
                            "text file does: restore the vendor's file")
        return data.decode("utf-8", errors="replace")

    def read_bytes(self, fs: str, path: str, follow: bool = False) -> bytes | None:
        """Current bytes of `path` on `fs` (None if missing or removed); a final symlink is refused unless
        `follow`, and anything but a regular file is refused."""
        real = self._resolve(fs, path, follow)
        op = self.plan.latest(fs, real)
        description = self.filesystem(fs).description
        if op is None:
            try:
                return self.filesystem(fs).read(real, follow=follow)
            except FileNotFoundError:
                if not self.plan.creates_below(fs, real):
                    return None
                raise UserError(f"{description}: {path} is a directory the build makes, where pi-image reads or "
                                "edits a file: ship a regular file there") from None
        if op.action == "write":
            return op.content
        if op.action == "remove":
            return None
        st = self._op_entry(fs, real, op)
        if st is not None and st.is_symlink:
            raise UserError(f"{description}: {path} is a symlink (to {self._link_target(fs, real)[:200]!r}) after the "
                            f"build's {op.step} step, where a later step edits a file; pi-image never edits a file "
                            "through a link: ship a regular file there")
        raise UserError(f"{description}: {path} is not a regular file after the build's {op.step} step (pi-image "
                        "reads or edits it): ship a regular file there")

    def file_meta(self, fs: str, path: str) -> tuple[int, int, int] | None:
        """(permissions, uid, gid) of the regular file at `path` after the plan so far (not following a final
        link), or None if there is none there or `fs` keeps no modes (FAT)."""
        real = self._resolve(fs, path, follow_last=False)
        op = self.plan.latest(fs, real)
        if op is not None:
            return (op.mode if op.mode is not None else 0o644, op.uid, op.gid) if op.action == "write" else None
        filesystem = self.filesystem(fs)
        if isinstance(filesystem, FatFilesystem):
            return None
        st = filesystem.lstat(real)
        return (st.permissions, st.uid, st.gid) if st is not None and st.is_file else None

    def lstat(self, fs: str, path: str) -> FileStat | None:
        """Stat `path` on `fs` after the plan so far, not following a final symlink; None if there is nothing."""
        return self._entry(fs, self._resolve(fs, path, follow_last=False))

    def stat(self, fs: str, path: str) -> FileStat | None:
        """Stat `path` on `fs` after the plan so far, following symlinks; None if it (or a link's target) is
        missing."""
        return self._entry(fs, self._resolve(fs, path))

    def exists(self, fs: str, path: str) -> bool:
        """True if `path` exists on `fs` after the plan so far (a link counts, wherever it points)."""
        return self.lstat(fs, path) is not None

    def readlink(self, fs: str, path: str) -> str:
        """Target of the symlink at `path` on `fs` after the plan so far (the link itself is not followed)."""
        real = self._resolve(fs, path, follow_last=False)
        st = self._entry(fs, real)
        if st is None or not st.is_symlink:
            raise UserError(f"{self.filesystem(fs).description}: {path} is not a symlink")
        return self._link_target(fs, real)

    def listdir(self, fs: str, path: str) -> list[str]:
        """The names in directory `path` on `fs` after the plan so far, sorted (none if it is not a directory)."""
        directory = self._resolve(fs, path)
        st = self._entry(fs, directory)
        if st is None or not st.is_dir:
            return []
        names = set(self.filesystem(fs).listdir(directory))
        prefix = directory.rstrip("/") + "/"
        for op in self.plan.ops:
            if op.fs != fs or not op.path.startswith(prefix):
                continue
            name, below, _ = op.path[len(prefix):].partition("/")
            if below:
                if op.action != "remove":  # a write further down creates the directory
                    names.add(name)
            else:
                (names.discard if op.action == "remove" else names.add)(name)
        return sorted(names)

    def _entry(self, fs: str, real: str) -> FileStat | None:
        """What is at the resolved path `real` after the plan so far (a final link not followed)."""
        op = self.plan.latest(fs, real)
        if op is None:
            st = self.filesystem(fs).lstat(real)
            if st is None and self.plan.creates_below(fs, real):
                return FileStat(statmod.S_IFDIR | 0o755, 0, 0, 0)
            return st
        return self._op_entry(fs, real, op)

    def _op_entry(self, fs: str, real: str, op: FileOp) -> FileStat | None:
        """What `op` leaves at `real` (a mkdir leaves a link or a directory that was there in place)."""
        if op.action == "write":
            return FileStat(statmod.S_IFREG | (op.mode if op.mode is not None else 0o644), op.uid, op.gid,
                            len(op.content or b""))
        if op.action == "symlink":
            return FileStat(statmod.S_IFLNK | 0o777, op.uid, op.gid, len(op.target or ""))
        if op.action == "remove":
            return None
        earlier = self.plan.before(fs, real, op)
        there = self._op_entry(fs, real, earlier) if earlier else self.filesystem(fs).lstat(real)
        if there is not None and (there.is_symlink or (there.is_dir and op.mode is None)):
            return there  # mkdir follows a link, and keeps an existing directory's mode unless it names one
        return FileStat(statmod.S_IFDIR | (op.mode if op.mode is not None else 0o755), op.uid, op.gid, 0)

    def _link_target(self, fs: str, real: str) -> str:
        """The target of the link at the resolved path `real` (the plan's, else the image's)."""
        op = self.plan.latest(fs, real)
        if op is not None and op.action == "symlink" and op.target is not None:
            return op.target
        return self.filesystem(fs).readlink(real)

    def _resolve(self, fs: str, path: str, follow_last: bool = True) -> str:
        """`path` with its symlinks resolved through the plan and the image (the last one only if `follow_last`),
        inside the filesystem's root, as `Filesystem.resolve` does for the image alone."""
        return resolve_links(path, lambda real: self._entry(fs, real), lambda real: self._link_target(fs, real),
                             self.filesystem(fs).description, follow_last)


class TreeView:
    """One filesystem of a `PlanView`, read with `Filesystem`'s own calls (for code that reads either, like the
    systemd unit helpers)."""

    def __init__(self, view: PlanView, fs: str):
        self.view = view
        self.fs = fs

    def lstat(self, path: str) -> FileStat | None:
        """See `PlanView.lstat`."""
        return self.view.lstat(self.fs, path)

    def stat(self, path: str) -> FileStat | None:
        """See `PlanView.stat`."""
        return self.view.stat(self.fs, path)

    def listdir(self, path: str) -> list[str]:
        """See `PlanView.listdir`."""
        return self.view.listdir(self.fs, path)

    def readlink(self, path: str) -> str:
        """See `PlanView.readlink`."""
        return self.view.readlink(self.fs, path)


def apply(plan: Plan, target: Target) -> list[FileOp]:
    """Carry out `plan` on `target`'s filesystems; return the ops that changed something.

    An op whose result is already there (same content, mode and owner; same link) is skipped, so rebuilding a
    built image touches nothing. Writes are batched per filesystem until the caller commits.
    """
    changed = []
    for name in {op.fs for op in plan.ops}:
        target.filesystem(name).prefetch({op.path: len(op.content or b"") for op in plan.ops
                                          if op.fs == name and op.action == "write"})
    for op in plan.ops:
        fs = target.filesystem(op.fs)
        if _already_done(fs, op):
            continue
        changed.append(op)
        if op.action == "write":
            assert op.content is not None
            fs.write(op.path, op.content, mode=op.mode if op.mode is not None else 0o644, uid=op.uid, gid=op.gid)
        elif op.action == "mkdir":
            fs.mkdir(op.path, mode=op.mode if op.mode is not None else 0o755, uid=op.uid, gid=op.gid)
            _ensure_owner_mode(fs, op)
        elif op.action == "symlink":
            assert op.target is not None
            fs.symlink(op.path, op.target, uid=op.uid, gid=op.gid)
        elif op.action == "remove":
            fs.remove(op.path)
        else:
            raise ValueError(f"unknown action {op.action!r}")
    return changed


def _already_done(fs: Filesystem, op: FileOp) -> bool:
    st = fs.lstat(op.path)
    if op.action == "remove":
        return st is None
    if st is None:
        return False
    if op.action == "symlink":
        return st.is_symlink and fs.readlink(op.path) == op.target and (st.uid, st.gid) == (op.uid, op.gid)
    if op.action == "mkdir":
        return st.is_dir and (op.mode is None or (st.permissions, st.uid, st.gid) == (op.mode, op.uid, op.gid))
    return (st.is_file and st.size == len(op.content or b"")
            and _meta_matches(fs, st, op) and fs.read(op.path) == op.content)


def _meta_matches(fs: Filesystem, st: FileStat, op: FileOp) -> bool:
    """Mode and owner match what the op asks (FAT has neither, so anything matches there)."""
    if isinstance(fs, FatFilesystem):
        return True
    return (st.permissions, st.uid, st.gid) == (op.mode if op.mode is not None else 0o644, op.uid, op.gid)


def _ensure_owner_mode(fs: Filesystem, op: FileOp) -> None:
    """An existing directory gets the mode/owner the plan asks for (e.g. a home's `.ssh` must be 0700)."""
    st = fs.stat(op.path)
    if st is None or op.mode is None:
        return
    if statmod.S_IMODE(st.mode) != op.mode:
        fs.chmod(op.path, op.mode)
    if (st.uid, st.gid) != (op.uid, op.gid):
        fs.chown(op.path, op.uid, op.gid)
