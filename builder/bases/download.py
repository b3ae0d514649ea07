"""Downloads of base images: streamed, bounded, resumable, verified, then cached under their SHA-256.

    CACHE/downloads/.KEY.part         the bytes so far (KEY: a hash of the URL); .KEY.part.json: how to resume it
    CACHE/downloads/SHA256.img.xz     a verified download, renamed into place only once its hash matched
    CACHE/downloads/by-url/KEY.json   URL -> that file, its size and SHA-256 (what `cached()` reads, offline too)
    CACHE/downloads/.KEY.lock         flock'd while a process fetches KEY: a second build waits, then uses the result;
                                      the holder removes it when it is done

A cut connection is resumed with `Range` + `If-Range` (a strong ETag, else Last-Modified), up to ATTEMPTS times in
one run and again in the next; a server that answers 200 to a Range request (it ignores ranges, or the file changed)
starts the file over; the bytes from a server that sends neither ETag nor Last-Modified are not kept (nothing could
resume them). The body is read as it is on the wire (no transparent gunzip), piece by piece as it arrives. A wrong
hash deletes the bytes; a full disk removes the partial file. Ctrl-C (or SIGTERM) keeps a resumable partial file and
says so (`errors.Interrupted`).

Every transfer is bounded; a bound that is hit ends the download with one line naming it and how to raise it:
    bytes   a catalog base's size plus 5% (at least 1 MiB); with no size in the catalog, MAX_DOWNLOAD (16 GiB; the
            environment's PI_IMAGE_MAX_DOWNLOAD, e.g. 32G, raises it), whether the server sends a Content-Length or
            not; and never more than the free space of the cache's file system less FREE_MARGIN (1 GiB). A body
            that passes its bound is refused and its partial file removed.
    time    CONNECT_TIMEOUT (15 s) to connect, READ_TIMEOUT (60 s) without a byte, and a floor rate: a transfer whose
            average over the last RATE_WINDOW (60 s) falls below MIN_RATE (32 KiB/s; PI_IMAGE_MIN_RATE, e.g. 8K,
            lowers it, 0 turns it off) is abandoned, its partial file kept to resume. A download of N bytes thus
            ends within about RATE_WINDOW + N / MIN_RATE, whatever the server does once its headers have come.
            Checksum files, signatures and the Kubernetes apt key (`get_small`) have the same floor and
            redirect policy, and their own byte limits.

A download's mtime is the server's Last-Modified: a build's default SOURCE_DATE_EPOCH (the base's mtime) is then the
vendor's date, the same on every machine, not the day it was fetched.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import re
import shlex
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

from .. import __version__
from ..errors import Interrupted, UserError
from ..image.inputs import remember_sha256
from ..outputs import fsync_directory, fsync_file, write_atomic
from ..progress import human_size, progress

CHUNK = 1 << 20
CONNECT_TIMEOUT = 15  # seconds to open a connection
READ_TIMEOUT = 60  # seconds without a byte before a transfer counts as cut
MIN_RATE = 32 << 10  # bytes a second, on average over RATE_WINDOW, below which a transfer is abandoned
RATE_WINDOW = 60.0  # seconds the floor rate is measured over
ATTEMPTS = 3  # tries per run; each resumes where the last one was cut
RETRY_DELAY = 1.0  # seconds before the first retry, doubled after each
MAX_REDIRECTS = 5
MAX_DOWNLOAD = 16 << 30  # bytes: the bound when the catalog gives no size
FREE_MARGIN = 1 << 30  # bytes of the cache's file system a download leaves free
MAX_RECORD = 64 << 10
SUFFIXES = (".img.xz", ".img.zst", ".img.gz", ".img", ".zip", ".xz", ".zst", ".gz")
HINT = "cached bases still work: `pi-image bases`"
_LOOPBACK = re.compile(r"(127(\.\d{1,3}){3}|localhost|::1)")
_CACHED_NAME = re.compile(r"[0-9a-f]{64}(" + "|".join(re.escape(s) for s in SUFFIXES) + ")")
_SIZE = re.compile(r"(\d+)\s*([KMGT]?)(i?B)?", re.IGNORECASE)


@dataclass(frozen=True)
class Request:
    """What to download and what is known of it before the first byte."""

    url: str
    label: str  # what the user calls it (a catalog name, a file name)
    sha256: str | None = None  # pinned: known without the network
    size: int | None = None  # expected bytes: progress, and the bound (with a margin)
    md5: str | None = None  # checked too, where a vendor publishes only that


@dataclass(frozen=True)
class Fetched:
    """A verified download in the cache."""

    path: Path
    sha256: str
    size: int
    downloaded: bool  # False: it was in the cache already


class Failed(UserError):
    """A request that got no usable answer, or a small file (`get_small`) that did not arrive whole: the one-line
    message, and `reason`, what went wrong in a few words without advice (for a caller that gives its own)."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class NotFound(Failed):
    """The server says the file is not there (HTTP 404 or 410)."""


class _Cut(Exception):
    """The transfer stopped before the end, after `arrived` bytes; what was received is kept for a resume."""

    def __init__(self, reason: str, arrived: int = 0) -> None:
        super().__init__(reason)
        self.arrived = arrived


class _TooSlow(Exception):
    """The transfer fell below the floor rate (the message says how far); not retried."""


@dataclass(frozen=True)
class _Bound:
    """The most bytes a download's file may hold, what sets that, and what to do when a server passes it."""

    size: int
    what: str  # "the 16.0 GiB a download may reach when ...": the value and where it comes from
    fix: str


def url_problem(url: str) -> str | None:
    """Why `url` may not be downloaded from (None if it may): https, or plain http to a loopback address only."""
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return None
    if parts.scheme == "http" and parts.hostname and _LOOPBACK.fullmatch(parts.hostname):
        return None
    return "pi-image downloads over https only (plain http only from this machine's loopback address)"


def cache_suffix(url: str) -> str:
    """The suffix a download of `url` keeps in the cache, which tells the unpacker what it is."""
    name = Path(urlsplit(url).path).name
    suffix = next((s for s in SUFFIXES if name.lower().endswith(s)), None)
    if suffix is None:
        raise UserError(f"{url}: pi-image downloads disk images ({', '.join(SUFFIXES[:5])}), and "
                        f"'{name}' is none of those")
    return suffix


def cached(url: str, cache_dir: Path, sha256: str | None = None) -> Fetched | None:
    """The verified download of `url` in the cache (with hash `sha256`, when given), or None. Never the network."""
    directory = cache_dir / "downloads"
    try:
        with open(directory / "by-url" / f"{_key(url)}.json", "rb") as handle:
            record = json.loads(handle.read(MAX_RECORD))
        name, digest, size = record["file"], record["sha256"], record["size"]
        path = directory / name
        if (record["url"] != url or not _CACHED_NAME.fullmatch(name) or not name.startswith(digest)
                or path.stat().st_size != size or (sha256 and sha256 != digest)):
            return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return Fetched(path, digest, size, downloaded=False)


def fetch(request: Request, cache_dir: Path, sums: Callable[[], str | None] | None = None) -> Fetched:
    """`request`'s file in the cache: already there, or downloaded now and verified against its pinned SHA-256,
    else the one `sums()` finds (asked only when a download is needed), and its MD5 if it has one."""
    problem = url_problem(request.url)
    if problem:
        raise UserError(f"{request.url}: {problem}")
    suffix = cache_suffix(request.url)
    directory = cache_dir / "downloads"
    (directory / "by-url").mkdir(parents=True, exist_ok=True)
    key = _key(request.url)
    part = directory / f".{key}.part"
    with _locked(directory / f".{key}.lock", request.label):
        hit = cached(request.url, cache_dir, request.sha256)
        if hit:
            return hit
        expected = request.sha256 or (sums() if sums else None)
        if not expected and not request.md5:
            raise UserError(f"{request.label}: no hash to check {request.url} against: pi-image never uses an "
                            "unverified download")
        try:
            sha256, size, published = _download(request, part, expected)
        except KeyboardInterrupt:
            raise Interrupted(f"{request.label}: {_kept(part, request.url)}") from None
        final = directory / f"{sha256}{suffix}"
        if published is not None:  # the vendor's date, not the download's: builds default SOURCE_DATE_EPOCH to it
            os.utime(part, (published, published))
        os.replace(part, final)
        _state(part).unlink(missing_ok=True)
        _write_record(directory / "by-url" / f"{key}.json",
                      {"url": request.url, "name": request.label, "file": final.name, "sha256": sha256, "size": size})
        fsync_directory(directory)
        remember_sha256(final, sha256, cache_dir)
        return Fetched(final, sha256, size, downloaded=True)


def get_small(url: str, limit: int, what: str) -> bytes:
    """A small file (a checksum file, a signature, an apt key) whole, at most `limit` bytes, through the same
    redirect policy and floor rate as a download; else Failed (a cut transfer too: a part of a sums file is never
    read as the whole), NotFound if the server has none."""
    with _open(url, {}) as response:
        try:
            data = b"".join(_body(response, limit + 1))
        except _TooSlow as slow:
            raise Failed(f"{url}: the transfer of this {what} was abandoned: {slow}; {HINT}",
                         f"the transfer was abandoned: {slow}") from None
        except _transfer_errors() as err:
            raise Failed(f"{url}: the transfer of this {what} was cut ({_reason(err)}): try again; {HINT}",
                         f"the transfer was cut: {_reason(err)}") from None
    if len(data) > limit:
        raise Failed(f"{url}: this {what} is larger than {limit} bytes, which no real one is: refusing it",
                     f"larger than {limit} bytes, which no real {what} is")
    return data


def _download(request: Request, part: Path, expected: str | None) -> tuple[str, int, float | None]:
    """Fetch into `part` (resuming what is there), retrying cut transfers; return the verified (sha256, size) and
    the server's Last-Modified time, if it sent one."""
    delay, arrived = RETRY_DELAY, 0
    for attempt in range(1, ATTEMPTS + 1):
        try:
            return _attempt(request, part, expected)
        except _TooSlow as slow:
            raise UserError(f"{request.label}: the download from {request.url} was abandoned: {slow}; "
                            f"{_kept(part, request.url)}") from None
        except _Cut as cut:
            arrived += cut.arrived
            if attempt == ATTEMPTS:
                raise UserError(f"{request.label}: the download from {request.url} was cut {ATTEMPTS} times "
                                f"({human_size(arrived)} arrived in all; the last cut: {cut}); "
                                f"{_kept(part, request.url)}") from None
            time.sleep(delay)
            delay *= 2
    raise AssertionError("unreachable")


def _attempt(request: Request, part: Path, expected: str | None) -> tuple[str, int, float | None]:
    """One request: resume or restart `part`, stream the rest into it, then check the hashes."""
    state = _state(part)
    offset, validator = _resume_point(part, state, request.url)
    headers = {"Range": f"bytes={offset}-", "If-Range": validator} if offset else {}
    with _open(request.url, headers) as response:
        if response.status_code == 416:  # our part is not a prefix of what the server has now
            _discard(part, state)
            raise _Cut("the server refused to resume, starting over")
        if response.status_code == 206:
            start, total = _content_range(response)
            if start != offset:
                _discard(part, state)
                raise _Cut("the server resumed at the wrong place, starting over")
        else:
            offset, total = 0, _int(response.headers.get("Content-Length"))
            _write_record(state, {"url": request.url, "validator": _validator(response)})
        bound = _bound(request, part.parent, offset)
        if total is not None and total > bound.size:
            _discard(part, state)
            raise UserError(f"{request.url}: the server offers {human_size(total)}, more than {bound.what}: "
                            f"refusing it; {bound.fix}")
        published = _http_date(response.headers.get("Last-Modified"))
        hashes = [hashlib.sha256()] + ([hashlib.md5()] if request.md5 else [])
        done = _rehash(part, offset, hashes)
        with progress(f"{request.label}: downloading", total or request.size or 0) as advance:
            done = _receive(response, part, offset, hashes, bound, advance, request)
    if total is not None and done != total:
        raise _Cut(f"{done} of {total} bytes", done - offset)
    _check(hashes, expected, request, part, state)
    fsync_file(part)
    return hashes[0].hexdigest(), done, published


def _receive(response: Any, part: Path, offset: int, hashes: list[Any], bound: _Bound,
             advance: Callable[[int], None], request: Request) -> int:
    """Append the body to `part` (from `offset`), hashing as it goes; return the bytes `part` then holds. A body
    that passes `bound` is refused and `part` removed; one that falls below the floor rate raises _TooSlow."""
    done = offset
    try:
        with open(os.open(part, os.O_WRONLY | os.O_CREAT, 0o644), "wb") as handle:  # not truncated: resumed
            handle.truncate(offset)
            handle.seek(offset)
            for chunk in _body(response, bound.size - offset + 1):
                handle.write(chunk)  # a buffered file writes all of it (or raises)
                for h in hashes:
                    h.update(chunk)
                done += len(chunk)
                advance(done)
    except _transfer_errors() as err:
        raise _Cut(_reason(err), done - offset) from None
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            raise
        _discard(part, _state(part))
        raise UserError(f"no room for {request.label} in {part.parent} ({err.strerror}): the partial download was "
                        "removed; free some space (or set PI_IMAGE_CACHE to a bigger disk) and run again") from None
    if done > bound.size:
        _discard(part, _state(part))
        raise UserError(f"{request.url}: the server sent more than {bound.what}: refusing it, and the partial "
                        f"download was removed; {bound.fix}")
    return done


def _bound(request: Request, directory: Path, offset: int) -> _Bound:
    """The byte bound of `request`'s file: the catalog's size plus 5% (at least 1 MiB), else MAX_DOWNLOAD (or
    $PI_IMAGE_MAX_DOWNLOAD); never more than `offset` (the bytes the partial file holds) plus the free space of
    `directory` less FREE_MARGIN."""
    if request.size:
        size = request.size + max(request.size // 20, 1 << 20)
        bound = _Bound(size, f"the {human_size(size)} that {request.label}'s size in the catalog "
                             f"({human_size(request.size)}) allows", "a wrong mirror, or a wrong size in the catalog?")
    else:
        size = _setting("PI_IMAGE_MAX_DOWNLOAD", MAX_DOWNLOAD)
        bound = _Bound(size, f"the {human_size(size)} a download may reach when the catalog gives no size "
                             "(PI_IMAGE_MAX_DOWNLOAD)",
                       "if the file really is that large, set PI_IMAGE_MAX_DOWNLOAD higher (e.g. 64G) and run again")
    disk = os.statvfs(directory)
    room = max(offset + disk.f_bavail * disk.f_frsize - FREE_MARGIN, 0)
    if room < bound.size:
        return _Bound(room, f"the {human_size(room)} the cache can take (the free space of {directory} less "
                            f"{human_size(FREE_MARGIN)} kept spare)",
                      "free some space (or set PI_IMAGE_CACHE to a bigger disk) and run again")
    return bound


def _setting(name: str, default: int) -> int:
    """The byte count the environment variable `name` sets ("16G", "512K", "1048576"; K, M, G, T are powers of
    1024), else `default`."""
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    match = _SIZE.fullmatch(value)
    if not match:
        raise UserError(f"{name}={value}: not a number of bytes: write one like 1048576, 512K, 16G")
    return int(match.group(1)) << 10 * " KMGT".index(match.group(2).upper() or " ")


def _check(hashes: list[Any], expected: str | None, request: Request, part: Path, state: Path) -> None:
    """Delete the download unless its SHA-256 (and MD5) are the expected ones."""
    for h, want, name in ((hashes[0], expected, "SHA-256"), (hashes[-1], request.md5, "MD5")):
        got = h.hexdigest()
        if want and got != want:
            _discard(part, state)
            raise UserError(f"{request.label}: the download from {request.url} is not the file its {name} names "
                            f"(expected {want}, got {got}): it was deleted and nothing was cached; run again, and "
                            "if it persists the mirror or the catalog entry is wrong")


@contextmanager
def _open(url: str, headers: dict[str, str]) -> Iterator[Any]:
    """The response to GET `url` with `headers`, redirects followed by hand (each hop https, or loopback http);
    network and HTTP errors become one-line UserErrors (NotFound for 404/410)."""
    import requests

    headers = {"User-Agent": f"pi-image/{__version__}", "Accept-Encoding": "identity", **headers}
    with requests.Session() as session:
        for _ in range(MAX_REDIRECTS + 1):
            problem = url_problem(url)
            if problem:
                raise Failed(f"{url}: {problem}", f"{url}: {problem}")
            host = urlsplit(url).hostname
            try:
                response = session.get(url, headers=headers, stream=True, allow_redirects=False,
                                       timeout=(CONNECT_TIMEOUT, READ_TIMEOUT))
            except requests.exceptions.SSLError as err:
                reason = f"cannot reach {host} securely ({_reason(err)})"
                raise Failed(f"{reason}; {HINT}", reason) from None
            except requests.exceptions.ConnectTimeout:
                reason = f"cannot reach {host}: no answer within {CONNECT_TIMEOUT} s"
                raise Failed(f"{reason}; {HINT}", reason) from None
            except requests.exceptions.ReadTimeout:
                reason = f"{host} accepted the connection but did not answer within {READ_TIMEOUT} s"
                raise Failed(f"{reason}: try again later; {HINT}", reason) from None
            except requests.RequestException as err:
                reason = f"cannot reach {host}: {_reason(err)}"
                raise Failed(f"{reason}; {HINT}", reason) from None
            if not response.is_redirect:
                break
            url = urljoin(url, response.headers["Location"])
            response.close()
        else:
            raise Failed(f"{url}: more than {MAX_REDIRECTS} redirects: refusing to follow them",
                         f"more than {MAX_REDIRECTS} redirects")
        with response:
            status = f"HTTP {response.status_code} {response.reason}"
            if response.status_code in (404, 410):
                raise NotFound(f"{url}: {status} (the vendor may have moved it: see `pi-image bases`, or override the "
                               "entry in your catalog)", status)
            if response.status_code >= 400 and response.status_code != 416:
                raise Failed(f"{url}: {status}", status)
            yield response


def _transfer_errors() -> tuple[type[BaseException], ...]:
    """What reading a response's body raises when the connection is cut or stalls (requests' and urllib3's own:
    ProtocolError, ReadTimeoutError, ChunkedEncodingError, ...; and the socket's)."""
    import requests
    import urllib3

    return requests.RequestException, urllib3.exceptions.HTTPError, ConnectionError, TimeoutError


def _body(response: Any, limit: int) -> Iterator[bytes]:
    """The body as sent (never transparently decompressed), each piece as soon as it arrives, stopping once `limit`
    bytes have come; _TooSlow once less than the floor rate arrives over a window (see _Pace)."""
    pace = _Pace()
    received = 0
    while received < limit:
        chunk = response.raw.read1(min(CHUNK, limit - received), decode_content=False)
        if not chunk:
            return
        received += len(chunk)
        yield chunk
        pace.check(received)


class _Pace:
    """The floor rate of one transfer: at least MIN_RATE bytes a second (or $PI_IMAGE_MIN_RATE; 0: no floor) on
    average over the last RATE_WINDOW seconds, checked each time bytes arrive (a read waits READ_TIMEOUT at most)."""

    def __init__(self) -> None:
        self.rate = _setting("PI_IMAGE_MIN_RATE", MIN_RATE)
        self.window = RATE_WINDOW
        self.marks = deque([(time.monotonic(), 0)])  # (when, bytes by then): the first at or before now - window

    def check(self, received: int) -> None:
        """Raise _TooSlow if less than the floor arrived since the last mark at least a window old."""
        now = time.monotonic()
        while len(self.marks) > 1 and self.marks[1][0] <= now - self.window:
            self.marks.popleft()
        since, then = self.marks[0]
        if self.rate and now - since >= self.window and received - then < self.rate * (now - since):
            raise _TooSlow(f"{human_size(received - then)} in the last {now - since:.0f} s, below the floor of "
                           f"{human_size(self.rate)}/s (on a link that slow, set PI_IMAGE_MIN_RATE lower, e.g. 8K; "
                           "0 turns the floor off)")
        if now - self.marks[-1][0] >= self.window / 60:  # a mark every 1/60 window: a short deque at any speed
            self.marks.append((now, received))


@contextmanager
def _locked(path: Path, label: str) -> Iterator[None]:
    """Hold an exclusive flock on `path` (saying so when another process has it and we wait), and remove `path` when
    done. The holder removes it while it still holds it, so a lock taken on a file that is no longer at `path` is
    not a lock: take the one at `path` again."""
    waited = False
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not waited:
                    print(f"pi-image: waiting for another pi-image that is downloading {label}", file=sys.stderr,
                          flush=True)
                    waited = True
                fcntl.flock(fd, fcntl.LOCK_EX)
            if _is_at(fd, path):
                break
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
    try:
        yield
    finally:
        path.unlink(missing_ok=True)
        os.close(fd)


def _is_at(fd: int, path: Path) -> bool:
    """Whether the open file `fd` is the file at `path` now."""
    try:
        here, there = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


def _resume_point(part: Path, state: Path, url: str) -> tuple[int, str]:
    """(bytes to keep, If-Range validator) of a partial download; (0, "") when it cannot be resumed safely."""
    try:
        with open(state, "rb") as handle:
            saved = json.loads(handle.read(MAX_RECORD))
        size = part.stat().st_size
    except (OSError, ValueError):
        _discard(part, state)
        return 0, ""
    if not isinstance(saved, dict) or saved.get("url") != url or not saved.get("validator") or size == 0:
        _discard(part, state)
        return 0, ""
    return size, str(saved["validator"])


def _validator(response: Any) -> str:
    """What If-Range may quote to resume this response: a strong ETag, else Last-Modified ("" if neither)."""
    etag = response.headers.get("ETag", "")
    if etag and not etag.startswith("W/"):
        return etag
    return response.headers.get("Last-Modified", "")


def _content_range(response: Any) -> tuple[int, int | None]:
    """(first byte, total length or None) of a 206 answer."""
    match = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+|\*)", response.headers.get("Content-Range", "").strip())
    if not match:
        raise _Cut("the server's Content-Range is unreadable, starting over")
    return int(match.group(1)), None if match.group(3) == "*" else int(match.group(3))


def _rehash(part: Path, offset: int, hashes: list[Any]) -> int:
    """Feed the first `offset` bytes of `part` (kept from an earlier attempt) to `hashes`."""
    if not offset:
        return 0
    with open(part, "rb") as handle:
        left = offset
        while left:
            chunk = handle.read(min(CHUNK, left))
            if not chunk:
                raise _Cut("the partial download shrank, starting over")
            for h in hashes:
                h.update(chunk)
            left -= len(chunk)
    return offset


def _kept(part: Path, url: str) -> str:
    """What of an unfinished download stays for the next run, and what to do with it, said for the user. A partial
    file that could not be resumed (the server named no ETag or Last-Modified) is removed now."""
    held, _ = _resume_point(part, _state(part), url)
    if not held:
        return "nothing was kept to resume from: run the same command again to start over"
    return (f"{human_size(held)} kept in {part}: run the same command again to resume it, or "
            f"`rm {shlex.quote(str(part))}*` to drop it")


def _state(part: Path) -> Path:
    """Where how to resume `part` is recorded."""
    return part.with_name(part.name + ".json")


def _discard(part: Path, state: Path) -> None:
    part.unlink(missing_ok=True)
    state.unlink(missing_ok=True)


def _write_record(path: Path, data: dict[str, Any]) -> None:
    """Write the JSON record `data` to `path` atomically (ASCII: non-ASCII escaped), readable like the cache."""
    write_atomic(path, json.dumps(data, indent=1, sort_keys=True) + "\n", 0o644)


def _key(url: str) -> str:
    return hashlib.sha256(url.encode()).hexdigest()[:32]


def _http_date(value: str | None) -> float | None:
    try:
        return parsedate_to_datetime(value).timestamp() if value else None
    except (TypeError, ValueError):
        return None


def _int(value: str | None) -> int | None:
    return int(value) if value and value.isdigit() else None


def _reason(err: BaseException) -> str:
    """The useful part of a requests/urllib3 error: 'Connection refused', 'Name or service not known', ..."""
    text = str(err)
    for pattern in (r"\[Errno -?\d+\] ([^'\")\]]+)", r"(Connection (?:refused|reset by peer|aborted))",
                    r"(IncompleteRead\([^)]*\))", r"(Read timed out)", r"(certificate verify failed[^'\")]*)"):
        match = re.search(pattern, text)
        if match:
            return match.group(1).strip()
    return type(err).__name__
