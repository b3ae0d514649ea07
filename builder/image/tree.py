"""A plain directory tree used as a root filesystem (an L4T `Linux_for_Tegra/rootfs`), behind the same interface.

Every path is resolved inside the tree by `Filesystem.resolve` (symlinks included), and the final operation never
follows a symlink (O_NOFOLLOW), so nothing outside the tree is ever read or written.

Ownership: running as root, files get the owner asked for. Running as a normal user, chown is impossible, so the
wanted owners are recorded in `/etc/pi-image/owners.tsv` inside the tree ("uid<TAB>gid<TAB>path") for the first-boot
agent (or `sudo` tooling) to apply; NVIDIA's flow runs `sudo ./apply_binaries.sh` on this tree anyway.
"""

from __future__ import annotations

import os
import stat as statmod
from pathlib import Path

from ..errors import UserError
from .fs import FileStat, Filesystem

OWNER_MAP = "/etc/pi-image/owners.tsv"


class DirectoryFilesystem(Filesystem):
    """A directory on the host treated as the root of a filesystem."""

    def __init__(self, root: Path, writable: bool):
        self.root = Path(root).resolve()
        if not self.root.is_dir():
            raise UserError(f"{root} is not a directory")
        self.description = f"directory {self.root}"
        self.writable = writable
        self._can_chown = os.geteuid() == 0
        self._owners: dict[str, tuple[int, int]] = {}

    def _host(self, path: str) -> str:
        return os.path.join(str(self.root), path.lstrip("/"))

    def _lstat_resolved(self, path: str) -> FileStat | None:
        try:
            st = os.lstat(self._host(path))
        except (FileNotFoundError, NotADirectoryError):
            return None
        uid, gid = self._owners.get(path, (st.st_uid, st.st_gid))
        return FileStat(st.st_mode, uid, gid, st.st_size)

    def _listdir_resolved(self, path: str) -> list[str]:
        return sorted(os.listdir(self._host(path)))

    def _read_resolved(self, path: str) -> bytes:
        fd = os.open(self._host(path), os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd, "rb") as f:
            return f.read()

    def _readlink_resolved(self, path: str) -> str:
        return os.readlink(self._host(path))

    def _write_resolved(self, path: str, data: bytes, mode: int, uid: int, gid: int) -> None:
        host = self._host(path)
        tmp = host + ".pi-image-tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, host)  # atomic: the old file or the new one, never half of either
        self._own(path, uid, gid)

    def _mkdir_resolved(self, path: str, mode: int, uid: int, gid: int) -> None:
        os.mkdir(self._host(path), mode)
        os.chmod(self._host(path), mode)  # mkdir's mode is filtered by the umask
        self._own(path, uid, gid)

    def _symlink_resolved(self, path: str, target: str, uid: int, gid: int) -> None:
        host = self._host(path)
        if os.path.lexists(host):
            os.unlink(host)
        os.symlink(target, host)
        self._own(path, uid, gid)

    def _remove_resolved(self, path: str) -> None:
        os.unlink(self._host(path))
        self._owners.pop(path, None)

    def _set_owner_mode(self, path: str, mode: int | None, uid: int | None, gid: int | None) -> None:
        host = self._host(path)
        if mode is not None and not statmod.S_ISLNK(os.lstat(host).st_mode):
            os.chmod(host, mode)
        if uid is not None or gid is not None:
            st = self._lstat_resolved(path)
            assert st is not None
            self._own(path, st.uid if uid is None else uid, st.gid if gid is None else gid)

    def _own(self, path: str, uid: int, gid: int) -> None:
        if self._can_chown:
            os.lchown(self._host(path), uid, gid)
        elif (uid, gid) != (os.getuid(), os.getgid()):
            self._owners[path] = (uid, gid)

    def commit(self) -> None:
        """Without root, record the owners the files should have (see the module docstring)."""
        if not self._owners:
            return
        recorded = {}
        for line in (self.read_text(OWNER_MAP) or "").splitlines():
            uid, gid, path = line.split("\t", 2)
            recorded[path] = (int(uid), int(gid))
        recorded.update(self._owners)
        self._owners = {}
        lines = "".join(f"{uid}\t{gid}\t{path}\n" for path, (uid, gid) in sorted(recorded.items()))
        self.write(OWNER_MAP, lines.encode(), mode=0o644, uid=os.getuid(), gid=os.getgid())
