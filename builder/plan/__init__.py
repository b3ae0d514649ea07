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

    def add(self, op: FileOp) -> None:
        """Append `op` (paths normalized, `..` refused)."""
        if op.fs not in FILESYSTEMS:
            raise ValueError(f"unknown filesystem {op.fs!r}")
        self.ops.append(FileOp(**{**op.__dict__, "path": normalize(op.path)}))

    def latest(self, fs: str, path: str) -> FileOp | None:
        """The last op on (`fs`, `path`), if the plan touches it."""
        path = normalize(path)
        return next((op for op in reversed(self.ops) if op.fs == fs and op.path == path), None)

    def describe(self, secrets: tuple[str, ...] = ()) -> list[dict[str, Any]]:
        """Every op as JSON-friendly data, in order (no hash of content holding one of `secrets`)."""
        return [op.describe(secrets) for op in self.ops]


class PlanView:
    """Read a target's files as the plan has changed them so far (for steps that edit existing files)."""

    def __init__(self, target: Target, plan: Plan):
        self.target = target
        self.plan = plan

    def filesystem(self, fs: str) -> Filesystem:
        """The target's filesystem called `fs` ("root" or "boot")."""
        return self.target.filesystem(fs)

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
        op = self.plan.latest(fs, path)
        if op is not None:
            return op.content if op.action == "write" else None
        try:
            return self.filesystem(fs).read(path, follow=follow)
        except FileNotFoundError:
            return None

    def file_meta(self, fs: str, path: str) -> tuple[int, int, int] | None:
        """(permissions, uid, gid) of the regular file at `path` after the plan so far (not following a final
        link), or None if there is none there or `fs` keeps no modes (FAT)."""
        op = self.plan.latest(fs, path)
        if op is not None:
            return (op.mode if op.mode is not None else 0o644, op.uid, op.gid) if op.action == "write" else None
        filesystem = self.filesystem(fs)
        if isinstance(filesystem, FatFilesystem):
            return None
        st = filesystem.lstat(path)
        return (st.permissions, st.uid, st.gid) if st is not None and st.is_file else None

    def listdir(self, fs: str, path: str) -> list[str]:
        """The names in directory `path` on `fs` after the plan so far, sorted (none if it is not a directory)."""
        directory = normalize(path)
        names = set(self.filesystem(fs).listdir(directory))
        for op in self.plan.ops:
            if op.fs == fs and posixpath.dirname(op.path) == directory:
                (names.discard if op.action == "remove" else names.add)(posixpath.basename(op.path))
        return sorted(names)

    def exists(self, fs: str, path: str) -> bool:
        """True if `path` exists on `fs` after the plan so far."""
        op = self.plan.latest(fs, path)
        if op is not None:
            return op.action != "remove"
        return self.filesystem(fs).lstat(path) is not None


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
