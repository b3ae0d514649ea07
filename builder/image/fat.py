"""FAT (boot partitions) inside an image file, through mtools at the partition's byte offset: `-i image@@offset`.

FAT has no owners, permissions or symlinks: stat reports root-owned 0755 directories and 0644 files, ownership and
mode requests are accepted and ignored (they are meaningless there), and symlinks are refused.
Every write is read back with `mcopy` and compared before it counts as done.
"""

from __future__ import annotations

import posixpath
import re
import stat as statmod
import struct
import tempfile
from pathlib import Path

from ..errors import UserError
from ..run import run
from .fs import FileStat, Filesystem

# One `mdir` entry line: 8.3 name, size or <DIR>, date, time, then the long name if there is one. A short name
# never starts with a space; the summary lines ("7 files  4 626 bytes", "264 281 088 bytes free") always do.
MDIR_LINE = re.compile(r"^(?P<base>\S.{7}) (?P<ext>.{3}) +(?P<size><DIR>|\d+) +\S+ +\S+ ?(?P<long>.*)$")


def read_fat_label(image: Path, offset: int) -> tuple[str, str] | None:
    """(FAT kind, volume label) from the boot sector at `offset`, or None if it is not FAT."""
    with open(image, "rb") as f:
        f.seek(offset)
        bs = f.read(512)
    sector_size = struct.unpack_from("<H", bs, 11)[0] if len(bs) == 512 else 0
    if bs[510:512] != b"\x55\xaa" or sector_size not in (512, 1024, 2048, 4096):
        return None
    for kind, label_at, type_at in (("fat32", 71, 82), ("fat16", 43, 54)):
        fs_type = bs[type_at:type_at + 8]
        if fs_type.startswith(b"FAT"):
            kind = "fat12" if fs_type.startswith(b"FAT12") else kind
            label = bs[label_at:label_at + 11].decode("ascii", errors="replace").strip()
            return kind, ("" if label == "NO NAME" else label)
    return None


class FatFilesystem(Filesystem):
    """A FAT12/16/32 filesystem at a byte offset of an image file."""

    def __init__(self, image: Path, offset: int, description: str, writable: bool, fake_time: int | None = None):
        self.image = Path(image)
        # FAT names are UTF-16 (long) or codepage (8.3): in a UTF-8 locale mtools shows and takes every one of them
        self.env = {"LC_ALL": "C.UTF-8", **({"SOURCE_DATE_EPOCH": str(fake_time)} if fake_time is not None else {})}
        self.offset = offset
        self.description = description
        self.writable = writable
        self._dirs: dict[str, dict[str, FileStat]] = {}
        self._names: dict[str, dict[str, str]] = {}  # lower-cased name -> name as stored, per directory

    def _m(self, tool: str, *args: str, check: bool = True):
        return run([tool, "-i", f"{self.image}@@{self.offset}", *args], check=check, env=self.env)

    def _lstat_resolved(self, path: str) -> FileStat | None:
        if path == "/":
            return FileStat(statmod.S_IFDIR | 0o755, 0, 0, 0)
        parent = self._lstat_resolved(posixpath.dirname(path))
        if parent is None or not parent.is_dir:
            return None
        return self._listing(posixpath.dirname(path)).get(posixpath.basename(path).lower())

    def _listing(self, path: str) -> dict[str, FileStat]:
        """Entries of directory `path`, keyed by lower-cased name (FAT names are case-insensitive)."""
        if path not in self._dirs:
            proc = self._m("mdir", "-a", "-f", "::" + path, check=False)  # -f: no free-space count
            entries: dict[str, FileStat] = {}
            for line in proc.stdout.decode("utf-8", errors="replace").splitlines():
                m = MDIR_LINE.match(line)
                if not m or m["base"].strip() in (".", ".."):
                    continue
                short = m["base"].strip() + ("." + m["ext"].strip() if m["ext"].strip() else "")
                name = m["long"].strip() or short
                is_dir = m["size"] == "<DIR>"
                mode = (statmod.S_IFDIR | 0o755) if is_dir else (statmod.S_IFREG | 0o644)
                entries[name.lower()] = FileStat(mode, 0, 0, 0 if is_dir else int(m["size"]))
                self._names.setdefault(path, {})[name.lower()] = name
            self._dirs[path] = entries
        return self._dirs[path]

    def _listdir_resolved(self, path: str) -> list[str]:
        self._listing(path)
        return sorted(self._names.get(path, {}).values())

    def _read_resolved(self, path: str) -> bytes:
        """Copy the file out with `mcopy` (binary-safe, unlike `mtype`'s text conversions)."""
        with tempfile.TemporaryDirectory(prefix="pi-image-fat-") as tmp:
            host = Path(tmp) / "out"
            self._m("mcopy", "-n", "::" + path, str(host))
            return host.read_bytes()

    def _readlink_resolved(self, path: str) -> str:
        raise UserError(f"{self.description}: FAT has no symlinks ({path})")

    def _forget(self, path: str) -> None:
        self._dirs.pop(posixpath.dirname(path), None)
        self._names.pop(posixpath.dirname(path), None)

    def _write_resolved(self, path: str, data: bytes, mode: int, uid: int, gid: int) -> None:
        with tempfile.TemporaryDirectory(prefix="pi-image-fat-") as tmp:
            host = Path(tmp) / "in"
            host.write_bytes(data)
            self._m("mcopy", "-o", "-D", "o", str(host), "::" + path)
        self._forget(path)
        if self._read_resolved(path) != data:
            raise UserError(f"{self.description}: {path} did not read back as written (partition full?)")

    def _mkdir_resolved(self, path: str, mode: int, uid: int, gid: int) -> None:
        self._m("mmd", "::" + path)
        self._forget(path)

    def _symlink_resolved(self, path: str, target: str, uid: int, gid: int) -> None:
        raise UserError(f"{self.description}: FAT cannot hold symlinks ({path} -> {target})")

    def _remove_resolved(self, path: str) -> None:
        self._m("mdel", "::" + path)
        self._forget(path)

    def _set_owner_mode(self, path: str, mode: int | None, uid: int | None, gid: int | None) -> None:
        """FAT has no owners or permission bits: nothing to do."""
