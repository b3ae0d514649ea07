"""The cache under `default_cache_dir()` (builder/image/inputs.py): what it holds, who uses what, and what may go.

    CACHE/downloads/SHA.img.xz          verified downloads (builder/bases/download.py), named by their SHA-256
    CACHE/downloads/by-url/KEY.json     URL -> download, with the name it was fetched as (a catalog name)
    CACHE/downloads/.KEY.part(.json)    a download not finished yet: the next fetch of its URL resumes it
    CACHE/downloads/.KEY.lock           flock'd while a process fetches KEY (KEY: a hash of the URL)
    CACHE/images/SHA.img                unpacked copies of compressed images, named by the compressed file's SHA-256
    CACHE/images/index.json             (path, size, mtime) -> SHA-256: an unchanged file is hashed once
    CACHE/images/chunks/KEY.sha256s     a base's 4 MiB-chunk digests, valid for its (path, size, mtime): a build
                                        re-hashes only the chunks it wrote (builder/image/dirty.py); `tidy`
                                        removes those of a base that is gone or changed
    CACHE/images/.unpacking-PID.img     an unpack under way in process PID
    CACHE/images/.private-PID-SHA.img   an unpacked pi-image output (it may hold a node's credential): for process
                                        PID only, deleted when it ends, never cached
    CACHE/bundles/                      offline bundles (builder/bundle): listed here, never removed here
    CACHE/keys/                         the Kubernetes apt keys (builder/bases/kubekey.py)

Who uses what is said with flock(2): a process holds a shared lock on every unpacked image it makes or uses until
it ends; a fetch holds its URL's `.lock` exclusively. Whatever is removed is first locked exclusively without
waiting and unlinked while that lock is held, so what a live process uses is never removed and what a dead one left
is (the kernel frees a process's locks when it dies, kill -9 included). A lock taken after waiting is checked to be
on the file still at its path, and taken again if that file was removed meanwhile.

`tidy` (run before every unpack) removes what dead processes left: `.unpacking-*` and `.private-*` nobody holds,
lock files nobody holds, and partial downloads nobody touched for PART_MAX_AGE. `evict` (run after every unpack)
keeps the unpacked copies within their bound; `prune` is `pi-image cache prune`.

Bounds:
    PI_IMAGE_UNPACKED_MAX  default 20 GiB (bytes, or a number with K, M, G or T): the disk the unpacked copies
                           (images/SHA.img, counted in blocks allocated: they are sparse) may take. After each
                           unpack the least recently used are removed until they fit; their last use is their mtime,
                           set at each use (atime is often not kept). Copies in use stay, even above the bound, and
                           so do the downloads they came from.
    PART_MAX_AGE           7 days: a partial download untouched that long is abandoned; younger, the next fetch
                           resumes it (`pi-image cache prune --all` removes it whatever its age).
    CLAIM_GRACE            60 s: an `.unpacking-PID` nobody holds whose PID is alive is left this long (its process
                           may be between creating and locking it); older, that PID belongs to another process now.
"""

from __future__ import annotations

import atexit
import errno
import fcntl
import json
import os
import re
import shutil
import stat
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import UserError
from .progress import human_size

UNPACKED_MAX_ENV = "PI_IMAGE_UNPACKED_MAX"
DEFAULT_UNPACKED_MAX = 20 << 30
PART_MAX_AGE = 7 * 86400
CLAIM_GRACE = 60
CHUNK_RECORDS = "images/chunks"  # bases' remembered chunk digests (builder/image/dirty.py)
MAX_RECORD = 64 << 10  # a by-url or .part.json record is a few hundred bytes
NO_ROOM = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
PRUNE_FIX = "free space with `pi-image cache prune`, or set PI_IMAGE_CACHE to a directory on a bigger disk"
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?", re.IGNORECASE)
_UNPACKED = re.compile(r"[0-9a-f]{64}\.img")
_CLAIMED = re.compile(r"\.(unpacking|private)-(\d+)(?:-[0-9a-f]+)?\.img")
_DOWNLOAD = re.compile(r"[0-9a-f]{64}\.[a-z.]+")
_PART = re.compile(r"\.([0-9a-f]+)\.part")
_PART_STATE = re.compile(r"\.([0-9a-f]+)\.part\.json")
_LOCK = re.compile(r"\.([0-9a-f]+)\.lock")


@dataclass(frozen=True)
class Entry:
    """One thing in the cache, as `pi-image cache` lists it.

    kind: download | partial (a download not finished) | unpacked | unpacking (under way) | private (a pi-image
    output's copy for one running process) | digests (a base's chunk digests) | leftover (of a dead process, or
    digests of a base that is gone or changed: `tidy` removes it) | bundles."""

    kind: str
    path: Path
    size: int  # bytes on disk
    when: float | None  # last use (unpacked), the vendor's date (download), last write (the others)
    what: str  # where it came from, or why it is there
    in_use: bool = False  # held by a live process
    lock: Path | None = None  # locked exclusively to remove it (None: removed without a lock)
    companions: tuple[Path, ...] = ()  # removed with it: a partial's .part.json and lock, a download's records

    def to_json(self) -> dict[str, Any]:
        """What `--json` prints for this entry."""
        when = time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(self.when)) if self.when else None
        return {"kind": self.kind, "path": str(self.path), "size": self.size, "when": when, "what": self.what,
                "in_use": self.in_use}


# --- what this process holds -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Held:
    fd: int  # holds the shared lock
    path: Path  # the file: the cached image, or this process's private copy
    private: bool
    pid: int  # a forked child inherits the table, and must not delete what its parent uses


_HELD: dict[Path, _Held] = {}  # final name (images/SHA.img) -> what this process holds for it


def use(final: Path) -> Path | None:
    """The unpacked image `final` (images/SHA.img), held by this process until it ends and marked as used now; or
    this process's private copy of it; None if the cache has neither."""
    held = _HELD.get(final)
    if held is not None and held.path.exists():  # not if someone emptied the cache under a long `build --all`
        return held.path
    fd = claim(final, os.O_RDONLY, fcntl.LOCK_SH)
    if fd is None:
        return None
    _HELD[final] = _Held(fd, final, False, os.getpid())
    with suppress(OSError):  # its last use: what eviction goes by (a cache on a read-only medium just has none)
        os.utime(final)
    return final


class Unpacking:
    """An unpack under way (see `unpacking`): the file `path`, held through the descriptor `fd`."""

    def __init__(self, final: Path, path: Path, fd: int) -> None:
        self.final, self.path, self.fd = final, path, fd
        self.kept = False

    def keep(self) -> Path:
        """Publish it under its final name and hold it until this process ends. If another process published the
        same image meanwhile, theirs is used (the same bytes) and this one removed."""
        while True:
            try:
                os.link(self.path, self.final)
            except FileExistsError:
                theirs = use(self.final)
                if theirs is not None:
                    return theirs
                continue  # removed meanwhile: publish ours after all
            except OSError:  # no hard links on this filesystem (exFAT): rename, the last of two unpacks wins
                os.replace(self.path, self.final)
            else:
                self.path.unlink()
            return self._hold(self.final, private=False)

    def keep_private(self) -> Path:
        """Keep it for this process only (`.private-PID-SHA.img`): deleted when the process ends (`release_all`), or
        by the next unpack's `tidy` if it was killed."""
        private = self.final.with_name(f".private-{os.getpid()}-{self.final.stem[:16]}.img")
        os.replace(self.path, private)
        return self._hold(private, private=True)

    def _hold(self, path: Path, private: bool) -> Path:
        _HELD[self.final] = _Held(self.fd, path, private, os.getpid())
        self.kept = True
        return path


@contextmanager
def unpacking(final: Path) -> Iterator[Unpacking]:
    """An unpack into `.unpacking-PID.img` beside `final`, held by this process from its creation; published
    (`keep`) or kept for this process (`keep_private`) in the block, else removed when the block ends."""
    path = final.with_name(f".unpacking-{os.getpid()}.img")
    fd = claim(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, fcntl.LOCK_SH, 0o600)
    assert fd is not None  # created if missing
    job = Unpacking(final, path, fd)
    try:
        yield job
    finally:
        if not job.kept:
            path.unlink(missing_ok=True)
            os.close(fd)


def release_all() -> None:
    """The command that used the unpacked images ended: delete its private copies and let go of the others (they
    may be evicted from now on). Runs at exit."""
    for final, held in list(_HELD.items()):
        if held.pid != os.getpid():
            continue
        if held.private:
            held.path.unlink(missing_ok=True)
        with suppress(OSError):
            os.close(held.fd)
        del _HELD[final]


atexit.register(release_all)


# --- what the cache holds ----------------------------------------------------------------------------------------

def entries(cache: Path) -> list[Entry]:
    """Everything in the cache directory `cache` worth a line: downloads, unpacked images, leftovers, bundles."""
    return _downloads(cache) + _images(cache) + _bundles(cache)


def disk_usage(tree: Path) -> int:
    """Bytes the files under `tree` take on disk (the whole cache: metadata and keys included)."""
    total = 0
    for directory, _, files in os.walk(tree):
        for name in files:
            with suppress(OSError):
                total += _on_disk(os.lstat(os.path.join(directory, name)))
    return total


def _downloads(cache: Path) -> list[Entry]:
    directory = cache / "downloads"
    records = _records(directory / "by-url")
    found = []
    for path, st in _files(directory):
        name = path.name
        if _DOWNLOAD.fullmatch(name):
            named = records.get(name, [])
            what = ", ".join(label for _, label in named) or "a download with no record of its URL"
            found.append(Entry("download", path, _on_disk(st), st.st_mtime, what,
                               companions=tuple(record for record, _ in named)))
        elif match := _PART.fullmatch(name):
            found.append(_partial(path, st, directory / f".{match[1]}.lock"))
        elif (match := _PART_STATE.fullmatch(name)) and not (directory / f".{match[1]}.part").exists():
            lock = directory / f".{match[1]}.lock"
            found.append(Entry("leftover", path, _on_disk(st), st.st_mtime, "the record of a partial download that "
                               "is gone", lock=lock, companions=(lock,)))
        elif _LOCK.fullmatch(name) and not _in_use(path):
            found.append(Entry("leftover", path, _on_disk(st), st.st_mtime, "the lock file of a fetch that ended",
                               lock=path))
    return found


def _partial(path: Path, st: os.stat_result, lock: Path) -> Entry:
    """A `.KEY.part`: a download under way (its lock is held), resumable, or abandoned (older than PART_MAX_AGE)."""
    state = path.with_name(path.name + ".json")
    url = _read_record(state).get("url") or "an unknown URL"
    companions = (state, lock)
    if lock.exists() and _in_use(lock):
        return Entry("partial", path, _on_disk(st), st.st_mtime, f"{url}: being downloaded", True, lock, companions)
    age = time.time() - st.st_mtime
    if age > PART_MAX_AGE:
        return Entry("leftover", path, _on_disk(st), st.st_mtime, f"{url}: a download abandoned "
                     f"{age // 86400:.0f} days ago", lock=lock, companions=companions)
    return Entry("partial", path, _on_disk(st), st.st_mtime, f"{url}: the next fetch of it resumes it", lock=lock,
                 companions=companions)


def _images(cache: Path) -> list[Entry]:
    directory = cache / "images"
    sources = _sources(cache)
    found = []
    for path, st in _files(directory):
        if _UNPACKED.fullmatch(path.name):
            source = sources.get(path.name[:64], "a compressed image no longer where it was")
            found.append(Entry("unpacked", path, _on_disk(st), st.st_mtime, f"unpacked from {source}",
                               _in_use(path), lock=path))
        elif match := _CLAIMED.fullmatch(path.name):
            found.append(_claimed(path, st, match[1], int(match[2])))
    return found + [_digests(path, st) for path, st in _files(cache / CHUNK_RECORDS)]


def _digests(path: Path, st: os.stat_result) -> Entry:
    """A base's remembered chunk digests (builder/image/dirty.py; its first line: "PATH:SIZE:MTIME_NS:CHUNK"): a
    leftover once that base is gone or changed, since no build can use it again."""
    try:
        with open(path, "rb") as handle:
            fields = handle.readline(8192).decode(errors="replace").rstrip("\n").rsplit(":", 3)
        base = Path(fields[0])
        current = base.stat()
        valid = len(fields) == 4 and [current.st_size, current.st_mtime_ns] == [int(fields[1]), int(fields[2])]
    except (OSError, ValueError):
        base, valid = Path(path.name), False
    if not valid:
        return Entry("leftover", path, _on_disk(st), st.st_mtime, f"chunk digests of {base}, which is gone or changed")
    return Entry("digests", path, _on_disk(st), st.st_mtime, f"4 MiB-chunk digests of {base} (a build re-hashes only "
                 "what it writes)")


def _claimed(path: Path, st: os.stat_result, how: str, pid: int) -> Entry:
    """An `.unpacking-PID` or `.private-PID-*` file: in use while its process holds it (or is just creating it)."""
    live = _in_use(path) or (_alive(pid) and time.time() - st.st_mtime < CLAIM_GRACE)
    if not live:
        what = "an unpack that never ended" if how == "unpacking" else "a pi-image output's private copy"
        return Entry("leftover", path, _on_disk(st), st.st_mtime, f"{what} (process {pid} is gone)", lock=path)
    what = (f"being unpacked by process {pid}" if how == "unpacking" else
            f"a pi-image output (it may hold a node's credential) for process {pid} only: deleted when it ends")
    return Entry(how, path, _on_disk(st), st.st_mtime, what, True, lock=path)


def _bundles(cache: Path) -> list[Entry]:
    directory = cache / "bundles"
    found = []
    for path in sorted(directory.iterdir()) if directory.is_dir() else []:
        count = sum(len(names) for _, _, names in os.walk(path))
        found.append(Entry("bundles", path, disk_usage(path), None, f"{count} files for offline builds "
                           "(`pi-image bundle` makes them; never pruned)"))
    return found


def _sources(cache: Path) -> dict[str, str]:
    """SHA-256 -> what the unpacked image was unpacked from: a download's name, or the file's path."""
    index = _read_record(cache / "images" / "index.json", limit=None)
    records = _records(cache / "downloads" / "by-url")
    sources = {}
    for key, digest in index.items():
        where = Path(str(key).rsplit(":", 2)[0])
        named = records.get(where.name, []) if where.parent == (cache / "downloads").resolve() else []
        sources[str(digest)] = ", ".join(label for _, label in named) or str(where)
    return sources


def _records(directory: Path) -> dict[str, list[tuple[Path, str]]]:
    """Download file name -> its by-url records and the name each was fetched as."""
    records: dict[str, list[tuple[Path, str]]] = {}
    for path, _ in _files(directory):
        record = _read_record(path)
        if isinstance(record.get("file"), str):
            records.setdefault(record["file"], []).append((path, str(record.get("name") or record.get("url"))))
    return records


def _read_record(path: Path, limit: int | None = MAX_RECORD) -> dict[str, Any]:
    """The JSON object in `path`, or {} if it is missing, too big or not one."""
    try:
        with open(path, "rb") as handle:
            data = json.loads(handle.read(limit if limit is not None else -1))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _files(directory: Path) -> list[tuple[Path, os.stat_result]]:
    """The regular files in `directory` with their lstat, by name ([] if there is no such directory)."""
    found = []
    with suppress(OSError):
        for name in sorted(os.listdir(directory)):
            with suppress(OSError):
                st = os.lstat(directory / name)
                if stat.S_ISREG(st.st_mode):
                    found.append((directory / name, st))
    return found


def _on_disk(st: os.stat_result) -> int:
    return st.st_blocks * 512


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's
        return True
    return True


# --- removing -----------------------------------------------------------------------------------------------------

def tidy(cache: Path) -> list[Entry]:
    """Remove what dead processes left in `cache` (see the module docstring); return what was removed."""
    return _remove_all(e for e in _downloads(cache) + _images(cache) if e.kind == "leftover")


def evict(cache: Path, bound: int) -> list[Entry]:
    """Remove the least recently used unpacked copies not in use until all of them take at most `bound` bytes;
    return what was removed."""
    unpacked = sorted((e for e in _images(cache) if e.kind == "unpacked"), key=lambda e: e.when or 0)
    total = sum(e.size for e in unpacked)
    removed = []
    for entry in unpacked:
        if total <= bound:
            break
        if not entry.in_use and _remove(entry):
            removed.append(entry)
            total -= entry.size
    return removed


def prune(cache: Path, everything: bool = False, dry_run: bool = False) -> tuple[list[Entry], list[Entry]]:
    """(removed, kept): leftovers and unpacked copies go; with `everything`, downloads and partial downloads too;
    never what is in use, nor bundles. `dry_run`: removed is what would go, and nothing does."""
    wanted = {"leftover", "unpacked"} | ({"download", "partial", "digests"} if everything else set())
    found = entries(cache)
    chosen = [e for e in found if e.kind in wanted and not e.in_use]
    removed = chosen if dry_run else _remove_all(chosen)
    return removed, [e for e in found if e not in removed]


def _remove_all(chosen: Iterable[Entry]) -> list[Entry]:
    return [entry for entry in chosen if _remove(entry)]


def _remove(entry: Entry) -> bool:
    """Unlink `entry` and its companions while holding an exclusive lock on entry.lock taken without waiting
    (created if missing); False if a live process holds it."""
    if entry.lock is None:
        return _unlink(entry)
    fd = claim(entry.lock, os.O_RDONLY | (0 if entry.lock == entry.path else os.O_CREAT),
                fcntl.LOCK_EX | fcntl.LOCK_NB, 0o644)
    if fd is None:
        return False
    try:
        return _unlink(entry)
    finally:
        os.close(fd)


def _unlink(entry: Entry) -> bool:
    try:
        entry.path.unlink()
    except FileNotFoundError:
        return False  # someone else removed it
    for companion in entry.companions:
        companion.unlink(missing_ok=True)
    return True


# --- locks ---------------------------------------------------------------------------------------------------------

def claim(path: Path, flags: int, how: int, mode: int = 0o600) -> int | None:
    """A descriptor of the file at `path` with flock `how` held on it, opened again if that file was removed or
    replaced while this process waited for the lock; None if there is no file at `path` (and O_CREAT was not
    asked for), or if `how` has LOCK_NB and another process holds a lock on it.

    Every holder of a lock file that `tidy` may remove must take it this way: a process that opened the file
    before it was removed would otherwise lock a file no other process can see, beside one that locks its
    replacement."""
    while True:
        try:
            fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
        except FileNotFoundError:
            if flags & os.O_CREAT:
                raise
            return None
        try:
            fcntl.flock(fd, how)
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        if _same_file(fd, path):
            return fd
        os.close(fd)


def _same_file(fd: int, path: Path) -> bool:
    try:
        there = os.lstat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (there.st_dev, there.st_ino) == (mine.st_dev, mine.st_ino)


def _in_use(path: Path) -> bool:
    """True if a process holds a flock on `path` (this one included). Tried without waiting, let go at once."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


# --- bounds and messages -------------------------------------------------------------------------------------------

def unpacked_max() -> int:
    """The bound on the unpacked copies' disk use: $PI_IMAGE_UNPACKED_MAX, else DEFAULT_UNPACKED_MAX."""
    value = os.environ.get(UNPACKED_MAX_ENV, "").strip()
    if not value:
        return DEFAULT_UNPACKED_MAX
    match = _SIZE.fullmatch(value)
    if not match:
        raise UserError(f"{UNPACKED_MAX_ENV}={value!r} is not a size: give bytes, or a number with K, M, G or T "
                        "(binary units), like 20G")
    return int(float(match[1]) * _UNITS[match[2].upper()])


def no_room(directory: Path, err: OSError, what: str) -> str:
    """One line for a write into `directory` that failed for want of room (`err`): which filesystem, its free
    space, and the fix."""
    mount, device = filesystem_of(directory)
    try:
        free = f"{human_size(shutil.disk_usage(directory).free)} free"
    except OSError:
        free = "its free space unknown"
    return (f"no room to {what} in {directory} ({err.strerror or err}): the filesystem there ({device} on {mount}) "
            f"has {free}; nothing was kept: {PRUNE_FIX}")


def filesystem_of(path: Path) -> tuple[Path, str]:
    """(mount point, device) of the filesystem holding `path` (device "?" when /proc does not say)."""
    path = path.resolve()
    device = os.stat(path).st_dev
    while path.parent != path and os.stat(path.parent).st_dev == device:
        path = path.parent
    source = "?"
    with suppress(OSError), open("/proc/self/mounts", encoding="utf-8", errors="replace") as mounts:
        for line in mounts:
            fields = line.split()
            if len(fields) > 1 and _unescape(fields[1]) == str(path):
                source = _unescape(fields[0])  # the last mount on a point is the one seen
    return path, source


def _unescape(field: str) -> str:
    """A /proc/mounts field, its octal escapes (\\040 for a space) decoded."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), field)


def summary(removed: list[Entry], why: str, after: str = "") -> str | None:
    """One stderr line saying what was removed and why (None if nothing was): at most three named, then a count."""
    if not removed:
        return None
    named = "; ".join(f"{short_name(e.path)} ({human_size(e.size)}, {e.what})" for e in removed[:3])
    more = f" and {len(removed) - 3} more" if len(removed) > 3 else ""
    return f"pi-image: {why}: removed {named}{more} ({human_size(sum(e.size for e in removed))} freed){after}"


def short_name(path: Path) -> str:
    """A cache file's name, a SHA-256 in it cut to 12 digits (messages and tables; --json has the path)."""
    return re.sub(r"\b([0-9a-f]{12})[0-9a-f]{52}\b", "\\1…", path.name)
