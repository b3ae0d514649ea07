"""ext4 inside an image file, read and written with e2fsprogs' `debugfs` at a byte offset: no root, no mount.

Reads run one short debugfs command each (a few milliseconds, whatever the image size). Writes are queued as the
final state of each path and applied in ONE `debugfs -w` run per filesystem when `commit()` is called, then every
written entry is read back in one more run and compared: debugfs prints its errors but exits 0, so nothing it says
is trusted without checking. Until commit, reads see the queued writes, so a build reads its own edits.

debugfs cannot rewrite a file in place: `write` always makes a new inode. So replacing a file (or a symlink) by
one of the same type hands the old inode's extended attributes (SELinux label, file capabilities, user.*) and all
its names (hard links) over to the new inode, as an in-place write on a mounted system keeps them. The old
inode's external xattr block is freed explicitly (debugfs's `rm` would leak it); a block the kernel shares between
inodes cannot be released with debugfs, so replacing or removing the last name of such a file is refused.

Names in an image are bytes; they are carried as surrogate-escaped `str` and reach debugfs unchanged (debugfs.py).
"""

from __future__ import annotations

import posixpath
import re
import stat as statmod
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from .debugfs import (
    InodeFacts,
    Listed,
    debugfs,
    ncheck_names,
    parse_stat,
    quote,
    split_listings,
    text,
)
from .dirty import note_debugfs_written, undo_file
from .fs import FileStat, Filesystem
from .superblock import (
    INCOMPAT_EA_INODE,
    INCOMPAT_RECOVER,
    STATE_ERRORS,
    read_superblock,
)

XATTR_BLOCK_MAGIC = 0xEA020000
ROOT = Listed(2, FileStat(statmod.S_IFDIR | 0o755, 0, 0, 0))


@dataclass(frozen=True)
class _Inode:
    """An on-disk inode (not a directory) whose names the queue replaces, removes or changes."""

    facts: InodeFacts
    mode: int  # st_mode: its type, and whether a new entry can take it over
    names: frozenset[str]  # every name it has on disk


@dataclass
class _Queued:
    """The final state of a path: its entry (None = removed) and, for files/links, its content.

    Names of one inode share one `_Queued`, so a change made through one name shows through all.
    """

    stat: FileStat | None
    data: bytes | None = None
    target: str | None = None
    kept: bool = False  # the on-disk entry stays; only its mode/owner change
    heir_of: _Inode | None = None  # the on-disk inode whose xattrs and names this new entry takes over


_Groups = list[tuple[_Queued, list[str]]]  # each queued entry with its names
_Carried = dict[int, list[tuple[str, Path]]]  # id(new entry) -> the xattrs it takes over: (name, file with value)


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
        self._dirs: dict[str, dict[str, Listed]] = {}  # cache of on-disk directory listings
        self._read_ahead: dict[str, bytes] = {}  # on-disk content of files prefetch() read
        self._inodes: dict[int, _Inode] = {}  # on-disk inodes the queue touches, by number

    def _debugfs(self, *commands: str, write: bool = False, undo: Path | None = None) -> tuple[bytes, list[str]]:
        return debugfs(f"{self.image}?offset={self.offset}", self.description, commands, write=write,
                       fake_time=self.fake_time, undo=undo)

    # --- the disk as it is ----------------------------------------------------------------------------------

    def _listing(self, path: str) -> dict[str, Listed]:
        """On-disk entries of directory `path` (cached; `ls -p` gives inode/mode/uid/gid/size of each in one run)."""
        if path not in self._dirs:
            out, _ = self._debugfs(f'ls -p {quote(path)}')
            self._dirs[path] = split_listings(out, [path]).get(path, {})
        return self._dirs[path]

    def _on_disk(self, path: str) -> Listed | None:
        """The entry at `path` on disk, ignoring the queue."""
        if path == "/":
            return ROOT
        parent = self._on_disk(posixpath.dirname(path))
        if parent is None or not parent.stat.is_dir:
            return None
        return self._listing(posixpath.dirname(path)).get(posixpath.basename(path))

    def _inode(self, path: str) -> _Inode | None:
        """The on-disk inode still at `path` (read the first time it is needed); None for a directory, for
        nothing, or if the queue already put something else there."""
        queued = self._queue.get(path)
        listed = None if queued is not None and not queued.kept else self._on_disk(path)
        if listed is None or listed.stat.is_dir:
            return None
        if listed.inode not in self._inodes:
            out, errors = self._debugfs(f'stat {quote(path)}')
            facts = parse_stat(text(out))
            if errors or facts is None:
                raise UserError(f"{self.description}: cannot stat {path}: {errors[0] if errors else 'no inode'}")
            names = {path} if facts.links == 1 else self._names_of(facts.number)
            self._inodes[listed.inode] = _Inode(facts, listed.stat.mode, frozenset(names))
        return self._inodes[listed.inode]

    def _names_of(self, number: int) -> set[str]:
        """Every path of the hard-linked inode `number` (`ncheck` walks the whole directory tree)."""
        out, errors = self._debugfs(f"ncheck {number}")
        names = ncheck_names(out, number)
        if errors or not names:
            raise UserError(f"{self.description}: cannot find the hard links of inode {number}")
        return names

    def _live_names(self, inode: _Inode) -> list[str]:
        """The names of `inode` that still point to it once the queue is applied."""
        return sorted(n for n in inode.names if n not in self._queue or self._queue[n].kept)

    # --- reads (the queue first, then the disk) -------------------------------------------------------------

    def _disk_children(self, path: str) -> dict[str, Listed]:
        """The on-disk entries of the directory `path`; none if the queue makes it anew."""
        queued = self._queue.get(path)
        listed = None if queued is not None and not queued.kept else self._on_disk(path)
        return self._listing(path) if listed is not None and listed.stat.is_dir else {}

    def _lstat_resolved(self, path: str) -> FileStat | None:
        if path in self._queue:
            return self._queue[path].stat
        if path == "/":
            return ROOT.stat
        parent = self._lstat_resolved(posixpath.dirname(path))
        if parent is None or not parent.is_dir:
            return None
        listed = self._disk_children(posixpath.dirname(path)).get(posixpath.basename(path))
        return listed.stat if listed else None

    def _listdir_resolved(self, path: str) -> list[str]:
        names = set(self._disk_children(path))
        for queued, q in self._queue.items():
            if posixpath.dirname(queued) == path:
                (names.add if q.stat is not None else names.discard)(posixpath.basename(queued))
        return sorted(names)

    def _read_resolved(self, path: str) -> bytes:
        queued = self._queue.get(path)
        if queued is not None and queued.data is not None:
            return queued.data
        if path in self._read_ahead:
            return self._read_ahead[path]
        out, errors = self._debugfs(f'cat {quote(path)}')
        out = out.split(b"\n", 1)[1] if out.startswith(b"debugfs: ") else out  # drop the echoed command
        if errors:
            raise UserError(f"{self.description}: cannot read {path}: {errors[0]}")
        return out

    def _prefetch_resolved(self, paths: list[str]) -> None:
        """`dump` every on-disk file of `paths` in one debugfs run into a private directory, and keep their bytes."""
        wanted = [path for path in paths if path not in self._queue and path not in self._read_ahead]
        if not wanted:
            return
        with tempfile.TemporaryDirectory(prefix="pi-image-read-") as tmp:
            self._debugfs(*(f"dump {quote(path)} {quote(f'{tmp}/{i}')}" for i, path in enumerate(wanted)))
            for i, path in enumerate(wanted):
                dumped = Path(tmp) / str(i)
                if dumped.is_file():
                    self._read_ahead[path] = dumped.read_bytes()

    def _readlink_resolved(self, path: str) -> str:
        queued = self._queue.get(path)
        if queued is not None and queued.target is not None:
            return queued.target
        out, errors = self._debugfs(f'stat {quote(path)}')
        stat_text = text(out)
        fast = re.search(r'^Fast link dest: "(.*)"$', stat_text, re.M)
        if fast:
            return fast.group(1)
        # A long target lives in a data block: find it in the extent list and read it from the image directly.
        block = re.search(r"^\(0\):(\d+)", stat_text, re.M)
        size = re.search(r"Size: (\d+)", stat_text)
        if errors or not block or not size or int(size.group(1)) > self.superblock.block_size:
            raise UserError(f"{self.description}: cannot read symlink {path}")
        return self._read_block(int(block.group(1)), int(size.group(1))).decode("utf-8", errors="surrogateescape")

    def _read_block(self, block: int, size: int) -> bytes:
        with open(self.image, "rb") as f:
            f.seek(self.offset + block * self.superblock.block_size)
            return f.read(size)

    # --- queued writes --------------------------------------------------------------------------------------

    def _replace(self, path: str, entry: _Queued) -> None:
        """Queue `entry` as the new inode at `path`. If the old inode there is of the same type, the new one
        takes over all its names and (at commit) its xattrs."""
        assert entry.stat is not None
        old = self._inode(path)
        if old is not None and statmod.S_IFMT(old.mode) == statmod.S_IFMT(entry.stat.mode):
            entry.heir_of = old
            names = self._live_names(old)
        else:
            names = [path]
        for name in names:
            self._queue[name] = entry

    def _write_resolved(self, path: str, data: bytes, mode: int, uid: int, gid: int) -> None:
        new = FileStat(statmod.S_IFREG | mode, uid, gid, len(data))
        queued = self._queue.get(path)
        if queued is not None and queued.data is not None:  # written earlier in this batch: new content only
            queued.stat, queued.data = new, data
        else:
            self._replace(path, _Queued(new, data=data))

    def _mkdir_resolved(self, path: str, mode: int, uid: int, gid: int) -> None:
        self._queue[path] = _Queued(FileStat(statmod.S_IFDIR | mode, uid, gid, 0))

    def _symlink_resolved(self, path: str, target: str, uid: int, gid: int) -> None:
        new = FileStat(statmod.S_IFLNK | 0o777, uid, gid, len(target.encode("utf-8", errors="surrogateescape")))
        queued = self._queue.get(path)
        if queued is not None and queued.target is not None:
            queued.stat, queued.target = new, target
        else:
            self._replace(path, _Queued(new, target=target))

    def _remove_resolved(self, path: str) -> None:
        self._inode(path)  # known at commit: it may lose its last name
        self._queue[path] = _Queued(None)

    def _set_owner_mode(self, path: str, mode: int | None, uid: int | None, gid: int | None) -> None:
        st = self._lstat_resolved(path)
        assert st is not None
        new = FileStat(st.mode if mode is None or st.is_symlink else statmod.S_IFMT(st.mode) | mode,
                       st.uid if uid is None else uid, st.gid if gid is None else gid, st.size)
        if path in self._queue:
            self._queue[path].stat = new
            return
        entry = _Queued(new, kept=True)
        inode = self._inode(path)
        for name in self._live_names(inode) if inode is not None else [path]:
            self._queue[name] = entry

    # --- commit ---------------------------------------------------------------------------------------------

    def commit(self) -> None:
        """Apply the queue in one debugfs run, then read all of it back and compare.

        The commands run in four phases: the xattrs of inodes about to lose their last name are saved and their
        external xattr blocks freed; the old names are removed; the new entries are made (parents first) and
        given the saved xattrs and their other names; then every entry gets its mode and owner.
        """
        if not self._queue:
            return
        groups = self._groups()
        with tempfile.TemporaryDirectory(prefix="pi-image-ext4-") as tmp:
            staging = Path(tmp)
            carried: _Carried = {}
            commands = self._release(groups, carried, staging) + self._unlinks()
            commands += self._creations(groups, carried, staging) + self._attributes(groups)
            undo = undo_file(self.image, self.offset, staging)  # what it overwrites: builder.image.dirty
            _, errors = self._debugfs(*commands, write=True, undo=undo)
            note_debugfs_written(self.image, self.offset, self.superblock.size, undo)
            if errors:
                raise UserError(f"{self.description}: debugfs could not apply the edits: {'; '.join(errors[:3])}")
            self._verify(groups, carried, staging)
        self._queue.clear()
        self._dirs.clear()
        self._inodes.clear()
        self._read_ahead.clear()

    def _groups(self) -> _Groups:
        """Each queued entry with its names (sorted, so parents come first)."""
        groups: dict[int, tuple[_Queued, list[str]]] = {}
        for path in sorted(self._queue):
            groups.setdefault(id(self._queue[path]), (self._queue[path], []))[1].append(path)
        return list(groups.values())

    def _release(self, groups: _Groups, carried: _Carried, staging: Path) -> list[str]:
        """Save the xattrs of each inode that loses its last name (for its heir) and free its xattr block.

        debugfs's `rm` frees an inode but not its external xattr block, which would leak and fail e2fsck.
        """
        heirs = {id(entry.heir_of): entry for entry, _ in groups if entry.heir_of is not None}
        commands: list[str] = []
        for inode in self._inodes.values():
            if self._live_names(inode):
                continue
            name, facts = min(inode.names), inode.facts
            if facts.xattrs and self.superblock.incompat & INCOMPAT_EA_INODE:
                raise UserError(f"{self.description}: cannot replace or remove {name}: this filesystem keeps "
                                f"extended attributes in inodes of their own (ea_inode), which debugfs cannot free")
            heir = heirs.get(id(inode))
            for n, xattr in enumerate(facts.xattrs if heir is not None else ()):
                host = staging / f"x{facts.number}-{n}"
                carried.setdefault(id(heir), []).append((xattr, host))
                commands.append(f"ea_get -r -f {quote(str(host))} {quote(name)} {quote(xattr)}")
            if facts.xattr_block:
                commands += self._free_xattr_block(name, facts.xattr_block, staging)
        return commands

    def _free_xattr_block(self, name: str, block: int, staging: Path) -> list[str]:
        """Detach the xattr block of `name` and free it.

        debugfs's `freeb` leaves the free-block counts wrong, so the block is made the one data block of a scratch
        file, which `rm` then frees the way it frees any file's blocks. A block shared with other inodes cannot be
        freed nor its reference count lowered with debugfs: that is refused.
        """
        header = self._read_block(block, 8)
        magic, refcount = struct.unpack("<II", header) if len(header) == 8 else (0, 0)
        if magic != XATTR_BLOCK_MAGIC:
            raise UserError(f"{self.description}: {name} points to a damaged extended attribute block ({block}): "
                            f"run e2fsck -f on it first")
        if refcount != 1:
            raise UserError(f"{self.description}: cannot replace or remove {name}: its extended attributes live "
                            f"in block {block}, shared with other files, which debugfs cannot release")
        empty, scratch = staging / "empty", self._scratch_name()
        empty.write_bytes(b"")
        s = quote(scratch)
        return [f"sif {quote(name)} file_acl 0", f"write {quote(str(empty))} {s}", f"sif {s} flags 0",
                f"sif {s} block[0] {block}", f"sif {s} block[1] 0", f"sif {s} block[2] 0", f"rm {s}"]

    def _scratch_name(self) -> str:
        """A name in the root directory that nothing uses, on disk or in the queue."""
        n = 0
        while self._on_disk(f"/.pi-image-scratch-{n}") is not None or f"/.pi-image-scratch-{n}" in self._queue:
            n += 1
        return f"/.pi-image-scratch-{n}"

    def _unlinks(self) -> list[str]:
        """`rm` every on-disk name whose entry is replaced or removed."""
        return [f'rm {quote(path)}' for path, entry in sorted(self._queue.items())
                if not entry.kept and (listed := self._on_disk(path)) is not None and not listed.stat.is_dir]

    def _creations(self, groups: _Groups, carried: _Carried, staging: Path) -> list[str]:
        """Make each new entry at its first name; give it the saved xattrs and link its other names."""
        commands = []
        for n, (entry, names) in enumerate(groups):
            if entry.stat is None or entry.kept:
                continue
            first = quote(names[0])
            if entry.data is not None:
                host = staging / f"w{n}"
                host.write_bytes(entry.data)
                commands.append(f"write {quote(str(host))} {first}")
            elif entry.target is not None:
                commands.append(f"symlink {first} {quote(entry.target)}")
            else:
                commands.append(f"mkdir {first}")
            commands += [f"ea_set -r -f {quote(str(value))} {first} {quote(xattr)}"
                         for xattr, value in carried.get(id(entry), [])]
            commands += [f"ln {first} {quote(other)}" for other in names[1:]]
            commands += [f"sif {first} links_count {len(names)}"] if len(names) > 1 else []
        return commands

    def _attributes(self, groups: _Groups) -> list[str]:
        """Mode (not for symlinks: theirs is always 0777) and owner of every entry."""
        commands = []
        for entry, names in groups:
            if entry.stat is not None:
                first = quote(names[0])
                commands += [] if entry.stat.is_symlink else [f"sif {first} mode 0{entry.stat.mode:o}"]
                commands += [f"sif {first} uid {entry.stat.uid}", f"sif {first} gid {entry.stat.gid}"]
        return commands

    def _verify(self, groups: _Groups, carried: _Carried, staging: Path) -> None:
        """Read every queued entry back from disk (one debugfs run) and compare it with what was asked: type,
        mode, owner and content of each name, one inode for all names of an entry, and the carried xattrs."""
        self._dirs.clear()
        paths = sorted(self._queue)
        dumps = {p: staging / f"d{n}" for n, p in enumerate(paths) if self._queue[p].data is not None}
        xattrs = [(names[0], xattr, host) for entry, names in groups for xattr, host in carried.get(id(entry), [])]
        parents = sorted({posixpath.dirname(p) for p in paths})
        out, _ = self._debugfs(
            *[f'ls -p {quote(d)}' for d in parents],
            *[f'dump {quote(p)} {quote(str(h))}' for p, h in dumps.items()],
            *[f'ea_get -r -f {quote(str(host) + ".back")} {quote(p)} {quote(x)}' for p, x, host in xattrs])
        listings = split_listings(out, parents)
        found = {p: listings.get(posixpath.dirname(p), {}).get(posixpath.basename(p)) for p in paths}
        for path in paths:
            got = found[path]
            if not _matches(self._queue[path], got.stat if got else None, dumps.get(path)):
                raise UserError(f"{self.description}: {path} did not read back as written (disk full?)")
        for entry, names in groups:
            if entry.stat is not None and len({got.inode for got in (found[n] for n in names) if got}) != 1:
                raise UserError(f"{self.description}: {names[0]} lost a hard link while being replaced")
        for path, xattr, host in xattrs:
            back = host.with_name(host.name + ".back")
            if not back.exists() or back.read_bytes() != host.read_bytes():
                raise UserError(f"{self.description}: {path} lost its extended attribute {xattr} while being replaced")


def _matches(want: _Queued, got: FileStat | None, dump: Path | None) -> bool:
    """True if the entry read back (`got`, and its content dumped to `dump`) is what was queued."""
    if want.stat is None or got is None:
        return want.stat is None and got is None
    if (got.mode, got.uid, got.gid) != (want.stat.mode, want.stat.uid, want.stat.gid):
        return False
    if want.target is not None:
        return got.size == want.stat.size
    if want.data is not None:
        return dump is not None and dump.exists() and dump.read_bytes() == want.data
    return True
