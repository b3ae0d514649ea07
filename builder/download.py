"""Downloads of base images: streamed, bounded, resumable, verified, then cached under their SHA-256.

    CACHE/downloads/.KEY.part         the bytes so far (KEY: a hash of the URL); .KEY.part.json: how to resume it
    CACHE/downloads/SHA256.img.xz     a verified download, renamed into place only once its hash matched
    CACHE/downloads/by-url/KEY.json   URL -> that file, its size and SHA-256 (what `cached()` reads, offline too)
    CACHE/downloads/.KEY.lock         flock'd while a process fetches KEY: a second build waits, then uses the result

A cut connection is resumed with `Range` + `If-Range` (a strong ETag, else Last-Modified), up to ATTEMPTS times in
one run and again in the next; a server that answers 200 to a Range request (it ignores ranges, or the file changed)
starts the file over. The body is read as it is on the wire (no transparent gunzip) and cut off once it passes the
expected size plus 5% (at least 1 MiB). A wrong hash deletes the bytes; a full disk removes the partial file.
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
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

from . import __version__
from .errors import UserError
from .image.inputs import remember_sha256
from .outputs import fsync_directory, fsync_file, write_private
from .progress import progress

CHUNK = 1 << 20
CONNECT_TIMEOUT = 15  # seconds to open a connection
READ_TIMEOUT = 60  # seconds without a byte before a transfer counts as cut
ATTEMPTS = 3  # tries per run; each resumes where the last one was cut
RETRY_DELAY = 1.0  # seconds before the first retry, doubled after each
MAX_REDIRECTS = 5
MAX_DOWNLOAD = 64 << 30  # the bound when the catalog gives no size
MAX_RECORD = 64 << 10
SUFFIXES = (".img.xz", ".img.zst", ".img.gz", ".img", ".zip", ".xz", ".zst", ".gz")
HINT = "cached bases still work: `pi-image bases`"
_LOOPBACK = re.compile(r"(127(\.\d{1,3}){3}|localhost|::1)")
_CACHED_NAME = re.compile(r"[0-9a-f]{64}(" + "|".join(re.escape(s) for s in SUFFIXES) + ")")


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


class NotFound(UserError):
    """The server says the file is not there (HTTP 404 or 410)."""


class _Cut(Exception):
    """The transfer stopped before the end; what was received is kept for a resume."""


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
    with _locked(directory / f".{key}.lock", request.label):
        hit = cached(request.url, cache_dir, request.sha256)
        if hit:
            return hit
        expected = request.sha256 or (sums() if sums else None)
        if not expected and not request.md5:
            raise UserError(f"{request.label}: no hash to check {request.url} against: pi-image never uses an "
                            "unverified download")
        sha256, size, published = _download(request, directory / f".{key}.part", expected)
        final = directory / f"{sha256}{suffix}"
        if published is not None:  # the vendor's date, not the download's: builds default SOURCE_DATE_EPOCH to it
            os.utime(directory / f".{key}.part", (published, published))
        os.replace(directory / f".{key}.part", final)
        (directory / f".{key}.part.json").unlink(missing_ok=True)
        _write_record(directory / "by-url" / f"{key}.json",
                      {"url": request.url, "name": request.label, "file": final.name, "sha256": sha256, "size": size})
        fsync_directory(directory)
        remember_sha256(final, sha256, cache_dir)
        return Fetched(final, sha256, size, downloaded=True)


def get_small(url: str, limit: int, what: str) -> bytes:
    """A small file (a checksum file, a signature) whole, or a UserError (a cut transfer too: a part of a sums file
    is never read as the whole); NotFound if the server has none."""
    with _open(url, {}) as response:
        try:
            data = b"".join(_body(response, limit + 1))
        except _transfer_errors() as err:
            raise UserError(f"{url}: the transfer of this {what} was cut ({_reason(err)}): try again; {HINT}") from None
    if len(data) > limit:
        raise UserError(f"{url}: this {what} is larger than {limit} bytes, which no real one is: refusing it")
    return data


def _download(request: Request, part: Path, expected: str | None) -> tuple[str, int, float | None]:
    """Fetch into `part` (resuming what is there), retrying cut transfers; return the verified (sha256, size) and
    the server's Last-Modified time, if it sent one."""
    delay = RETRY_DELAY
    for attempt in range(1, ATTEMPTS + 1):
        try:
            return _attempt(request, part, expected)
        except _Cut as cut:
            if attempt == ATTEMPTS:
                done = part.stat().st_size if part.exists() else 0
                raise UserError(f"{request.label}: the download from {request.url} was cut {ATTEMPTS} times, last "
                                f"after {done} bytes ({cut}): run the same command again to resume it") from None
            time.sleep(delay)
            delay *= 2
    raise AssertionError("unreachable")


def _attempt(request: Request, part: Path, expected: str | None) -> tuple[str, int, float | None]:
    """One request: resume or restart `part`, stream the rest into it, then check the hashes."""
    state = part.with_name(part.name + ".json")
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
        limit = request.size + max(request.size // 20, 1 << 20) if request.size else MAX_DOWNLOAD
        if total is not None and total > limit:
            _discard(part, state)
            raise UserError(f"{request.url}: the server offers {total} bytes, far more than the "
                            f"{request.size or limit} expected: refusing it (a wrong mirror or catalog entry?)")
        published = _http_date(response.headers.get("Last-Modified"))
        hashes = [hashlib.sha256()] + ([hashlib.md5()] if request.md5 else [])
        done = _rehash(part, offset, hashes)
        with progress(f"{request.label}: downloading", total or request.size or 0) as advance:
            done = _receive(response, part, offset, hashes, limit, advance, request)
    if total is not None and done != total:
        raise _Cut(f"{done} of {total} bytes")
    _check(hashes, expected, request, part, state)
    fsync_file(part)
    return hashes[0].hexdigest(), done, published


def _receive(response: Any, part: Path, offset: int, hashes: list[Any], limit: int,
             advance: Callable[[int], None], request: Request) -> int:
    """Append the body to `part` (from `offset`), hashing as it goes; return the bytes `part` then holds."""
    done = offset
    try:
        with open(os.open(part, os.O_WRONLY | os.O_CREAT, 0o644), "wb") as handle:  # not truncated: resumed
            handle.truncate(offset)
            handle.seek(offset)
            for chunk in _body(response, limit - offset + 1):
                handle.write(chunk)  # a buffered file writes all of it (or raises)
                for h in hashes:
                    h.update(chunk)
                done += len(chunk)
                advance(done)
        if done > limit:
            raise UserError(f"{request.url}: the server sent more than the {limit} bytes this download may have: "
                            "refusing it (a wrong mirror or catalog entry?)")
    except _transfer_errors() as err:
        raise _Cut(_reason(err)) from None
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            raise
        _discard(part, part.with_name(part.name + ".json"))
        raise UserError(f"no room for {request.label} in {part.parent} ({err.strerror}): the partial download was "
                        "removed; free some space (or set PI_IMAGE_CACHE to a bigger disk) and run again") from None
    except UserError:
        _discard(part, part.with_name(part.name + ".json"))
        raise
    return done


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
                raise UserError(f"{url}: {problem}")
            host = urlsplit(url).hostname
            try:
                response = session.get(url, headers=headers, stream=True, allow_redirects=False,
                                       timeout=(CONNECT_TIMEOUT, READ_TIMEOUT))
            except requests.exceptions.SSLError as err:
                raise UserError(f"cannot reach {host} securely ({_reason(err)}); {HINT}") from None
            except requests.exceptions.ConnectTimeout:
                raise UserError(f"cannot reach {host}: no answer within {CONNECT_TIMEOUT} s; {HINT}") from None
            except requests.exceptions.ReadTimeout:
                raise UserError(f"{host} accepted the connection but did not answer within {READ_TIMEOUT} s: try "
                                f"again later; {HINT}") from None
            except requests.RequestException as err:
                raise UserError(f"cannot reach {host}: {_reason(err)}; {HINT}") from None
            if not response.is_redirect:
                break
            url = urljoin(url, response.headers["Location"])
            response.close()
        else:
            raise UserError(f"{url}: more than {MAX_REDIRECTS} redirects: refusing to follow them")
        with response:
            if response.status_code in (404, 410):
                raise NotFound(f"{url}: HTTP {response.status_code} {response.reason} (the vendor may have moved "
                               "it: see `pi-image bases`, or override the entry in your catalog)")
            if response.status_code >= 400 and response.status_code != 416:
                raise UserError(f"{url}: HTTP {response.status_code} {response.reason}")
            yield response


def _transfer_errors() -> tuple[type[BaseException], ...]:
    """What reading a response's body raises when the connection is cut or stalls (requests' and urllib3's own:
    ProtocolError, ReadTimeoutError, ChunkedEncodingError, ...; and the socket's)."""
    import requests
    import urllib3

    return requests.RequestException, urllib3.exceptions.HTTPError, ConnectionError, TimeoutError


def _body(response: Any, limit: int) -> Iterator[bytes]:
    """The body as sent (never transparently decompressed), stopping once `limit` bytes have come."""
    received = 0
    for chunk in response.raw.stream(CHUNK, decode_content=False):
        received += len(chunk)
        yield chunk
        if received >= limit:
            return


@contextmanager
def _locked(path: Path, label: str) -> Iterator[None]:
    """Hold an exclusive flock on `path`; say so when another process has it and we wait."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"pi-image: waiting for another pi-image that is downloading {label}", file=sys.stderr, flush=True)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


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


def _discard(part: Path, state: Path) -> None:
    part.unlink(missing_ok=True)
    state.unlink(missing_ok=True)


def _write_record(path: Path, data: dict[str, Any]) -> None:
    """Write the JSON record `data` to `path` atomically (ASCII: non-ASCII escaped), readable like the cache."""
    write_private(path, json.dumps(data, indent=1, sort_keys=True) + "\n", mode=0o644)


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
