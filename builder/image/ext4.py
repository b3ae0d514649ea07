"""ext4 inside an image file, read and written with e2fsprogs' `debugfs` at a byte offset: no root, no mount.

Reads run one short debugfs command each (a few milliseconds, whatever the image size). Writes are queued and
applied in ONE `debugfs -w` run per filesystem when `commit()` is called, then every written entry is read back in
one more run and compared: debugfs prints its errors but exits 0, so nothing it says is trusted without checking.
Until commit, reads see the queued writes, so a build reads its own edits.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import re
import stat as statmod
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from ..run import run
from .fs import FileStat, Filesystem

EXT4_MAGIC = 0xEF53
SUPERBLOCK_OFFSET = 1024
INCOMPAT_RECOVER = 0x4  # "needs_recovery": the journal holds writes not yet replayed
INCOMPAT_EXTENTS = 0x40
STATE_ERRORS = 0x2
BANNER = re.compile(rb"^debugfs \d+\.\d+.*\n?", re.M)


@dataclass(frozen=True)
class Superblock:
    """The few superblock fields pi-image needs (read with struct, no tool needed)."""

    block_size: int
    blocks: int
    label: str
    state: int
    incompat: int

    @property
    def size(self) -> int:
        return self.block_size * self.blocks

    @property
    def kind(self) -> str:
        return "ext4" if self.incompat & INCOMPAT_EXTENTS else "ext2/3"


def read_superblock(image: Path, offset: int) -> Superblock | None:
    """The ext2/3/4 superblock of the filesystem at `offset`, or None if there is none."""
    with open(image, "rb") as f:
        f.seek(offset + SUPERBLOCK_OFFSET)
        raw = f.read(1024)
    if len(raw) < 1024 or struct.unpack_from("<H", raw, 0x38)[0] != EXT4_MAGIC:
        return None
    blocks_lo, log_block = struct.unpack_from("<I", raw, 0x4)[0], struct.unpack_from("<I", raw, 0x18)[0]
    blocks_hi = struct.unpack_from("<I", raw, 0x150)[0] if struct.unpack_from("<I", raw, 0x60)[0] & 0x80 else 0
    return Superblock(
        block_size=1024 << min(log_block, 6),
        blocks=blocks_lo | (blocks_hi << 32),
        label=raw[0x78:0x88].split(b"\0", 1)[0].decode("utf-8", errors="replace"),
        state=struct.unpack_from("<H", raw, 0x3A)[0],
        incompat=struct.unpack_from("<I", raw, 0x60)[0],
    )


@dataclass
class _Queued:
    """A write waiting for commit: the entry's new state (None = removed) and, for files/links, its content."""

    stat: FileStat | None
    data: bytes | None = None
    target: str | None = None


class Ext4Filesystem(Filesystem):
    """An ext4 filesystem at a byte offset of an image file (or block device)."""

    def __init__(self, image: Path, offset: int, description: str, writable: bool, fake_time: int | None = None):
        self.image = Path(image)
        self.offset = offset
        self.description = description
        self.writable = writable
        self.fake_time = fake_time
        sb = read_superblock(self.image, offset)
        if sb is None:
            raise UserError(f"{description}: no ext4 superblock")
        if sb.incompat & INCOMPAT_RECOVER:
            raise UserError(
                f"{description} needs journal recovery (it was not cleanly unmounted): "
                f"run e2fsck on it, or boot it once and shut it down cleanly, then try again"
            )
        if sb.state & STATE_ERRORS:
            raise UserError(f"{description} is marked as having errors: run e2fsck -f on it first")
        self.superblock = sb
        self._queue: dict[str, _Queued] = {}
        self._order: list[str] = []  # debugfs commands, in order
        self._dirs: dict[str, dict[str, FileStat]] = {}  # cache of on-disk directory listings

    @property
    def _spec(self) -> str:
        return f"{self.image}?offset={self.offset}"

    def _debugfs(self, *commands: str, write: bool = False) -> tuple[bytes, list[str]]:
        """Run debugfs with `commands`; return stdout and the error lines it printed on stderr."""
        argv = ["debugfs", "-w"] if write else ["debugfs"]
        env = {"E2FSPROGS_FAKE_TIME": str(self.fake_time)} if self.fake_time is not None else None
        script = ("\n".join(commands) + "\n").encode()
        proc = run([*argv, "-f", "-", self._spec], input=script, env=env)
        errors = [line for line in BANNER.sub(b"", proc.stderr).decode(errors="replace").splitlines() if line.strip()]
        return proc.stdout, errors

    # --- reads --------------------------------------------------------------------------------------------

    def _listing(self, path: str) -> dict[str, FileStat]:
        """On-disk entries of directory `path` (cached; `ls -p` gives mode/uid/gid/size of each in one run)."""
        if path not in self._dirs:
            out, _ = self._debugfs(f'ls -p {_q(path)}')
            self._dirs[path] = _split_listings(out, [path]).get(path, {})
        return self._dirs[path]

    def _lstat_resolved(self, path: str) -> FileStat | None:
        if path in self._queue:
            return self._queue[path].stat
        if path == "/":
            return FileStat(statmod.S_IFDIR | 0o755, 0, 0, 0)
        parent = self._lstat_resolved(posixpath.dirname(path))
        if parent is None or not parent.is_dir:
            return None
        return self._listing(posixpath.dirname(path)).get(posixpath.basename(path))

    def _listdir_resolved(self, path: str) -> list[str]:
        names = {n for n, st in self._listing(path).items()}
        for queued, q in self._queue.items():
            if posixpath.dirname(queued) == path:
                (names.add if q.stat is not None else names.discard)(posixpath.basename(queued))
        return sorted(names)

    def _read_resolved(self, path: str) -> bytes:
        if path in self._queue and self._queue[path].data is not None:
            return self._queue[path].data  # type: ignore[return-value]
        out, errors = self._debugfs(f'cat {_q(path)}')
        out = out.split(b"\n", 1)[1] if out.startswith(b"debugfs: ") else out  # drop the echoed command
        if errors:
            raise UserError(f"{self.description}: cannot read {path}: {errors[0]}")
        return out

    def _readlink_resolved(self, path: str) -> str:
        if path in self._queue and self._queue[path].target is not None:
            return self._queue[path].target  # type: ignore[return-value]
        out, errors = self._debugfs(f'stat {_q(path)}')
        text = out.decode("utf-8", errors="surrogateescape")
        fast = re.search(r'^Fast link dest: "(.*)"$', text, re.M)
        if fast:
            return fast.group(1)
        # A long target lives in a data block: find it in the extent list and read it from the image directly.
        block = re.search(r"^\(0\):(\d+)", text, re.M)
        size = re.search(r"Size: (\d+)", text)
        if errors or not block or not size or int(size.group(1)) > self.superblock.block_size:
            raise UserError(f"{self.description}: cannot read symlink {path}")
        with open(self.image, "rb") as f:
            f.seek(self.offset + int(block.group(1)) * self.superblock.block_size)
            return f.read(int(size.group(1))).decode("utf-8", errors="surrogateescape")

    # --- queued writes --------------------------------------------------------------------------------------

    def _replace(self, path: str) -> None:
        """Queue removal of whatever is at `path` now, so debugfs can create the new entry."""
        if self._lstat_resolved(path) is not None:
            self._order.append(f'rm {_q(path)}')

    def _write_resolved(self, path: str, data: bytes, mode: int, uid: int, gid: int) -> None:
        self._replace(path)
        self._order.append(("write", path))  # the host file is made at commit time
        self._queue[path] = _Queued(FileStat(statmod.S_IFREG | mode, uid, gid, len(data)), data=data)
        self._order.extend(self._attrs(path, statmod.S_IFREG | mode, uid, gid))

    def _mkdir_resolved(self, path: str, mode: int, uid: int, gid: int) -> None:
        self._order.append(f'mkdir {_q(path)}')
        self._queue[path] = _Queued(FileStat(statmod.S_IFDIR | mode, uid, gid, 0))
        self._order.extend(self._attrs(path, statmod.S_IFDIR | mode, uid, gid))

    def _symlink_resolved(self, path: str, target: str, uid: int, gid: int) -> None:
        self._replace(path)
        self._order.append(f'symlink {_q(path)} {_q(target)}')
        self._queue[path] = _Queued(FileStat(statmod.S_IFLNK | 0o777, uid, gid, len(target)), target=target)
        self._order.extend(self._attrs(path, None, uid, gid))

    def _remove_resolved(self, path: str) -> None:
        self._order.append(f'rm {_q(path)}')
        self._queue[path] = _Queued(None)

    def _set_owner_mode(self, path: str, mode: int | None, uid: int | None, gid: int | None) -> None:
        st = self._lstat_resolved(path)
        assert st is not None
        full_mode = None if mode is None else (statmod.S_IFMT(st.mode) | mode)
        new = FileStat(full_mode if full_mode is not None else st.mode,
                       st.uid if uid is None else uid, st.gid if gid is None else gid, st.size)
        queued = self._queue.get(path)
        self._queue[path] = _Queued(new, queued.data if queued else None, queued.target if queued else None)
        self._order.extend(self._attrs(path, full_mode, uid, gid))

    def _attrs(self, path: str, mode: int | None, uid: int | None, gid: int | None) -> list[str]:
        cmds = [] if mode is None else [f'sif {_q(path)} mode 0{mode:o}']
        cmds += [] if uid is None else [f'sif {_q(path)} uid {uid}']
        cmds += [] if gid is None else [f'sif {_q(path)} gid {gid}']
        return cmds

    def commit(self) -> None:
        """Apply every queued write in one debugfs run, then read all of it back and compare."""
        if not self._order:
            return
        with tempfile.TemporaryDirectory(prefix="pi-image-ext4-") as tmp:
            commands: list[str] = []
            for n, item in enumerate(self._order):
                if isinstance(item, tuple):  # ("write", path): stage the content in a host file
                    host = os.path.join(tmp, f"f{n}")
                    Path(host).write_bytes(self._queue[item[1]].data or b"")
                    commands.append(f'write {_q(host)} {_q(item[1])}')
                else:
                    commands.append(item)
            _, errors = self._debugfs(*commands, write=True)
            if errors:
                raise UserError(f"{self.description}: debugfs could not apply the edits: {'; '.join(errors[:3])}")
        self._verify()
        self._order.clear()
        self._queue.clear()
        self._dirs.clear()

    def _verify(self) -> None:
        """Read every queued entry back from disk (one debugfs run) and compare it with what was asked."""
        with tempfile.TemporaryDirectory(prefix="pi-image-verify-") as tmp:
            paths = sorted(self._queue)
            dumps = {p: os.path.join(tmp, f"d{n}") for n, p in enumerate(paths) if self._queue[p].data is not None}
            self._dirs.clear()
            parents = sorted({posixpath.dirname(p) for p in paths})
            out, _ = self._debugfs(*[f'ls -p {_q(d)}' for d in parents], *[f'dump {_q(p)} {_q(h)}' for p, h in dumps.items()])
            listings = _split_listings(out, parents)
            for path in paths:
                got = listings.get(posixpath.dirname(path), {}).get(posixpath.basename(path))
                if not _matches(self._queue[path], got, dumps.get(path)):
                    raise UserError(f"{self.description}: {path} did not read back as written (disk full?)")


def _q(arg: str) -> str:
    """`arg` double-quoted for a debugfs command line; refuses what would break out of the quotes.

    Paths can come from hostile images (symlink targets), and one stray quote or newline would let an image
    inject debugfs commands such as `dump` that write to the host.
    """
    if '"' in arg or any(ord(c) < 32 or ord(c) == 127 for c in arg):
        raise UserError(f"refusing a path with a quote or control character: {arg!r}")
    return f'"{arg}"'


def _split_listings(out: bytes, dirs: list[str]) -> dict[str, dict[str, FileStat]]:
    """Parse the output of several `ls -p` commands run in one debugfs session, keyed by directory."""
    result: dict[str, dict[str, FileStat]] = {}
    current: dict[str, FileStat] | None = None
    for line in out.decode("utf-8", errors="surrogateescape").splitlines():
        if line.startswith("debugfs: "):
            m = re.match(r'debugfs: ls -p "(.*)"$', line)
            current = result.setdefault(m.group(1), {}) if m and m.group(1) in dirs else None
            continue
        fields = line.split("/")
        if current is not None and len(fields) == 8 and not fields[0] and fields[5] not in (".", ".."):
            current[fields[5]] = FileStat(int(fields[2], 8), int(fields[3]), int(fields[4]), int(fields[6] or 0))
    return result


def _matches(want: _Queued, got: FileStat | None, dump: str | None) -> bool:
    """True if the entry read back (`got`, and its content dumped to `dump`) is what was queued."""
    if want.stat is None or got is None:
        return want.stat is None and got is None
    if (got.mode, got.uid, got.gid) != (want.stat.mode, want.stat.uid, want.stat.gid):
        return False
    if want.target is not None:
        return got.size == len(want.target.encode())
    if want.data is not None:
        return dump is not None and os.path.exists(dump) and _sha(Path(dump).read_bytes()) == _sha(want.data)
    return True


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
