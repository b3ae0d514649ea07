"""Read back what `pi-image build` made, with tools that are not pi-image: sfdisk, debugfs, mtools, e2fsck,
fsck.vfat (and plain os calls for a directory target). A bug in pi-image's own image layer cannot hide behind these.

Also: the real CLI as a subprocess (`PiImage`) and a cluster directory made with it (`make_cluster`), a used card
(`random_card`), and sparse-aware file comparisons (2 GiB samples are mostly holes, and reading holes is what makes
`cmp`/`sha256sum` slow).
"""

from __future__ import annotations

import hashlib
import ipaddress
import itertools
import json
import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
KUBE_KEY = REPO / "tests" / "data" / "test-Release.key"
TEST_PROFILES = REPO / "tests" / "data" / "profiles"
TEST_SSH_KEY = REPO / "tests" / "data" / "test-admin.pub"
SECTOR = 512
EPOCH = "1700000000"  # SOURCE_DATE_EPOCH of every build in these tests
# mtools must not read a user's ~/.mtoolsrc, nor refuse a small FAT32's geometry.
MTOOLS_ENV = {"MTOOLSRC": "/dev/null", "MTOOLS_SKIP_CHECK": "1", "LC_ALL": "C"}


def tool(*argv: str | Path, check: bool = True) -> subprocess.CompletedProcess[bytes]:
    """Run an independent tool; raise with its stderr if `check` and it fails."""
    proc = subprocess.run([str(a) for a in argv], capture_output=True, env={**os.environ, **MTOOLS_ENV})
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, argv))} failed ({proc.returncode}): {proc.stderr.decode()}")
    return proc


# --- the CLI --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PiImage:
    """`python -m builder ...` with a private cache, the way a user runs `pi-image ...`."""

    cache: Path

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        path = os.environ.get("PYTHONPATH")
        return {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{path}" if path else str(REPO),
                "PI_IMAGE_CACHE": str(self.cache), "SOURCE_DATE_EPOCH": EPOCH, **(extra or {})}

    def argv(self, *args: str | Path) -> list[str]:
        """`build` runs as a user with an SSH key would, unless the test chooses the login itself."""
        words = list(map(str, args))
        if words[:1] == ["build"] and not {"--ssh-key", "--no-login", "--password-file", "--password"} & set(words):
            words += ["--ssh-key", str(TEST_SSH_KEY)]
        return [sys.executable, "-m", "builder", *words]

    def __call__(self, *args: str | Path, env: dict[str, str] | None = None,
                 timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.argv(*args), capture_output=True, text=True, env=self.env(env), timeout=timeout)

    def popen(self, *args: str | Path, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        """Started as from a terminal: Ctrl-C (SIGINT) reaches it even when the tests run as a background job,
        which starts with SIGINT ignored."""
        return subprocess.Popen(self.argv(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=self.env(env), preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def succeeded(proc: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    """`proc`, after asserting it exited 0 (with its output in the failure message)."""
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr}"
    return proc


def make_cluster(cli: PiImage, directory: Path, subnet: str, nodes: dict[str, list[str]],
                 version: str = "1.31") -> Path:
    """`pi-image cluster init` (gateway: the subnet's first address), then `cluster add-node NAME ARGS...` each node."""
    gateway = str(next(ipaddress.ip_network(subnet).hosts()))
    succeeded(cli("cluster", "init", directory, "--api-server", "192.168.6.10:6443", "--endpoint",
                  "192.168.6.10:8443", "--kubernetes-version", version, "--node-subnet", subnet,
                  "--gateway", gateway, "--dns", f"{gateway},1.1.1.1"))
    for name, args in nodes.items():
        succeeded(cli("cluster", "add-node", directory, name, *args))
    return directory


# --- filesystems ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Entry:
    """What `stat` says about one path. `mode` is the permission bits; None on FAT (it has none)."""

    kind: str  # file | dir | link
    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    size: int = 0
    target: str | None = None  # for links


class Ext4Reader:
    """An ext4 filesystem inside an image, read with debugfs (`cat`, `stat`, `ls -p`, `rdump`)."""

    KINDS = {"regular": "file", "directory": "dir", "symlink": "link"}

    def __init__(self, image: Path, offset: int):
        self.image, self.offset = image, offset
        self.spec = f"{image}?offset={offset}"

    def _debugfs(self, request: str) -> subprocess.CompletedProcess[bytes]:
        return tool("debugfs", "-R", request, self.spec)

    @staticmethod
    def _missing(proc: subprocess.CompletedProcess[bytes]) -> bool:
        return b"not found" in proc.stderr or b"File not found" in proc.stderr

    def read(self, path: str) -> bytes | None:
        """The content of the regular file `path` (None if absent)."""
        proc = self._debugfs(f'cat "{path}"')
        return None if self._missing(proc) else proc.stdout

    def text(self, path: str) -> str | None:
        data = self.read(path)
        return None if data is None else data.decode()

    def stat(self, path: str) -> Entry | None:
        proc = self._debugfs(f'stat "{path}"')
        if self._missing(proc):
            return None
        out = proc.stdout.decode(errors="replace")
        fields = out.split()
        kind = self.KINDS.get(fields[fields.index("Type:") + 1], "other")
        target = None
        if kind == "link":
            target = out.split('Fast link dest: "', 1)[1].split('"\n', 1)[0] if "Fast link dest:" in out \
                else self._slow_link(path)
        return Entry(kind, int(fields[fields.index("Mode:") + 1], 8), int(fields[fields.index("User:") + 1]),
                     int(fields[fields.index("Group:") + 1]), int(fields[fields.index("Size:") + 1]), target)

    def _slow_link(self, path: str) -> str:
        """A symlink too long for the inode (> 59 bytes): `rdump` recreates it on the host, then readlink."""
        with tempfile.TemporaryDirectory() as tmp:
            tool("debugfs", "-R", f'rdump "{path}" "{tmp}"', self.spec)
            return os.readlink(Path(tmp) / Path(path).name)

    def listdir(self, path: str) -> list[str]:
        proc = self._debugfs(f'ls -p "{path}"')
        names = [line.split("/")[5] for line in proc.stdout.decode().splitlines() if line.startswith("/")]
        return sorted(n for n in names if n not in (".", ".."))

    def fsck(self, scratch: Path) -> subprocess.CompletedProcess[bytes]:
        """`e2fsck -fn` in place (`scratch` is for readers that must extract their partition first)."""
        return tool("e2fsck", "-fn", self.spec, check=False)


class FatReader:
    """A FAT filesystem inside an image, read with mtools (`mcopy ... -`, `mdir -b`)."""

    def __init__(self, image: Path, offset: int, size: int):
        self.image, self.offset, self.size = image, offset, size
        self.spec = f"{image}@@{offset}"

    def read(self, path: str) -> bytes | None:
        proc = tool("mcopy", "-n", "-i", self.spec, f"::{path}", "-", check=False)
        return proc.stdout if proc.returncode == 0 else None

    def text(self, path: str) -> str | None:
        data = self.read(path)
        return None if data is None else data.decode()

    def stat(self, path: str) -> Entry | None:
        data = self.read(path)
        return None if data is None else Entry("file", size=len(data))

    def listdir(self, path: str) -> list[str]:
        out = tool("mdir", "-b", "-i", self.spec, f"::{path}").stdout.decode()
        return sorted(line.rstrip("/").rsplit("/", 1)[-1] for line in out.splitlines() if line.strip())

    def fsck(self, scratch: Path) -> subprocess.CompletedProcess[bytes]:
        """`fsck.vfat -n` on the partition extracted into `scratch` (it has no offset option)."""
        extracted = scratch / f"{self.image.name}-fat-{self.offset}.img"
        tool("dd", f"if={self.image}", f"of={extracted}", "bs=4M", "iflag=skip_bytes,count_bytes", "conv=sparse",
             f"skip={self.offset}", f"count={self.size}", "status=none")
        try:
            return tool("fsck.vfat", "-n", extracted, check=False)
        finally:
            extracted.unlink()


class TreeReader:
    """A directory target (L4T rootfs) read with plain os calls, never following a symlink."""

    def __init__(self, root: Path):
        self.root = root

    def _host(self, path: str) -> Path:
        return self.root / path.lstrip("/")

    def read(self, path: str) -> bytes | None:
        host = self._host(path)
        return host.read_bytes() if host.is_file() and not host.is_symlink() else None

    def text(self, path: str) -> str | None:
        data = self.read(path)
        return None if data is None else data.decode()

    def stat(self, path: str) -> Entry | None:
        try:
            st = os.lstat(self._host(path))
        except FileNotFoundError:
            return None
        kind = "link" if os.path.islink(self._host(path)) else "dir" if os.path.isdir(self._host(path)) else "file"
        return Entry(kind, st.st_mode & 0o7777, st.st_uid, st.st_gid, st.st_size,
                     os.readlink(self._host(path)) if kind == "link" else None)

    def listdir(self, path: str) -> list[str]:
        return sorted(os.listdir(self._host(path)))

    def fsck(self, scratch: Path) -> None:
        """A directory has no filesystem of its own to check."""
        return None


Reader = Ext4Reader | FatReader | TreeReader


class Card:
    """A disk image as `sfdisk --json` lays it out: its ext4 root and (Raspberry Pi) FAT boot partition.

    Root: the GPT partition named APP (Jetson), else the MBR Linux partition (0x83). Boot: the MBR FAT32 LBA (0x0c).
    """

    def __init__(self, path: Path):
        self.path = path
        self.table = json.loads(tool("sfdisk", "--json", path).stdout)["partitiontable"]

    def _find(self, test) -> dict | None:
        return next((p for p in self.table["partitions"] if test(p)), None)

    @property
    def root(self) -> Ext4Reader:
        part = self._find(lambda p: p.get("name") == "APP") or self._find(lambda p: p["type"] == "83")
        assert part is not None, f"{self.path}: no root partition in {self.table}"
        return Ext4Reader(self.path, part["start"] * SECTOR)

    @property
    def boot(self) -> FatReader | None:
        part = self._find(lambda p: p["type"] == "c")
        return None if part is None else FatReader(self.path, part["start"] * SECTOR, part["size"] * SECTOR)


def filesystems(output: Path) -> dict[str, Reader]:
    """{"root": reader, "boot": reader} of a built image or directory target."""
    if output.is_dir():
        return {"root": TreeReader(output)}
    card = Card(output)
    found: dict[str, Reader] = {"root": card.root}
    if card.boot is not None:
        found["boot"] = card.boot
    return found


def fsck_all(image: Path, scratch: Path) -> None:
    """e2fsck and fsck.vfat find every filesystem of `image` clean."""
    for name, reader in filesystems(image).items():
        proc = reader.fsck(scratch)
        assert proc.returncode == 0, f"{name}: {proc.stdout.decode()}{proc.stderr.decode()}"


def random_card(path: Path, size: int) -> Path:
    """A used card: `size` bytes of random data."""
    with open(path, "wb") as card:
        for _ in range(size // (8 << 20)):
            card.write(os.urandom(8 << 20))
        card.write(os.urandom(size % (8 << 20)))
    return path


# --- sparse files ---------------------------------------------------------------------------------------------

def data_extents(path: Path) -> list[tuple[int, int]]:
    """(start, end) of every data extent of `path` (SEEK_DATA/SEEK_HOLE)."""
    found = []
    with open(path, "rb") as f:
        size, pos = os.fstat(f.fileno()).st_size, 0
        while pos < size:
            try:
                start = os.lseek(f.fileno(), pos, os.SEEK_DATA)
            except OSError:  # ENXIO: only a hole is left
                break
            end = min(os.lseek(f.fileno(), start, os.SEEK_HOLE), size)
            found.append((start, end))
            pos = end
    return found


def _ranges(path: Path, extents: list[tuple[int, int]]):
    with open(path, "rb") as f:
        for start, end in extents:
            f.seek(start)
            while start < end:
                chunk = f.read(min(end - start, 4 << 20))
                yield start, chunk
                start += len(chunk)


def sha256_of(path: Path) -> str:
    """SHA-256 of the whole file, holes hashed as the zeros they read as (what `sha256sum` prints, faster)."""
    digest, pos, zeros = hashlib.sha256(), 0, bytes(4 << 20)
    size = path.stat().st_size
    for offset, chunk in itertools.chain(_ranges(path, data_extents(path)), [(size, b"")]):
        while pos < offset:
            step = min(offset - pos, len(zeros))
            digest.update(zeros[:step])
            pos += step
        digest.update(chunk)
        pos += len(chunk)
    return digest.hexdigest()


def same_bytes(a: Path, b: Path) -> bool:
    """True if the two files read the same, comparing only where either has data (both read zeros elsewhere)."""
    if a.stat().st_size != b.stat().st_size:
        return False
    union = sorted(data_extents(a) + data_extents(b))
    with open(a, "rb") as fa, open(b, "rb") as fb:
        for start, end in union:
            fa.seek(start)
            fb.seek(start)
            while start < end:
                n = min(end - start, 4 << 20)
                if fa.read(n) != fb.read(n):
                    return False
                start += n
    return True


def fingerprint(path: Path) -> tuple:
    """What must not change when pi-image reads `path` (a base): size, mtime, content; for a tree, every entry's.

    A file's content is hashed as its non-zero 64 KiB blocks with their offsets: cheap on a sparse image, and blind
    to how the filesystem happens to split the data into extents (that changes as pages are written back).
    """
    if path.is_dir():
        return _tree_fingerprint(path)
    st = path.stat()
    digest, block, done = hashlib.sha256(), 64 << 10, -1
    with open(path, "rb") as f:
        for start, end in data_extents(path):
            for offset in range(start - start % block, end, block):
                if offset <= done:
                    continue
                f.seek(offset)
                data = f.read(block)
                if data.count(0) != len(data):
                    digest.update(offset.to_bytes(8, "little") + data)
                done = offset
    return st.st_size, st.st_mtime_ns, digest.hexdigest()


def _tree_fingerprint(path: Path) -> tuple:
    found = []
    for current, dirs, files in os.walk(path):
        dirs.sort()
        for name in sorted(dirs + files):
            host = Path(current) / name
            st = os.lstat(host)
            body = os.readlink(host) if host.is_symlink() else \
                hashlib.sha256(host.read_bytes()).hexdigest() if host.is_file() else ""
            found.append((str(host.relative_to(path)), st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns, body))
    return tuple(found)


def entries(directory: Path) -> list[str]:
    """Every name in `directory`, hidden temporaries included."""
    return sorted(os.listdir(directory)) if directory.exists() else []
