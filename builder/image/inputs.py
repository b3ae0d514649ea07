"""Inputs as users have them: `.img`, `.img.xz`, `.img.zst`, `.img.gz`, a `.zip` holding one `.img`, or a directory.

A compressed image is streamed once into a cache of raw images named by the SHA-256 of the compressed file, written
sparsely (all-zero MiBs become holes) under a temporary name and renamed when complete, so an interrupted
decompression never leaves a half image in the cache. An index keyed by (path, size, mtime) avoids re-hashing an
unchanged download on every run. Progress is the decompressor's read position in the input (a shared file offset).
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from ..errors import ToolError, UserError
from ..copy import sha256_sparse
from ..progress import progress
from ..run import stream

CHUNK = 1 << 20
DECOMPRESSORS = {".xz": ["xz", "-dc", "-T0"], ".zst": ["zstd", "-dc"], ".gz": ["gzip", "-dc"]}


def default_cache_dir() -> Path:
    """`$PI_IMAGE_CACHE`, else `$XDG_CACHE_HOME/pi-image`, else `~/.cache/pi-image`."""
    if os.environ.get("PI_IMAGE_CACHE"):
        return Path(os.environ["PI_IMAGE_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pi-image"


def is_compressed(path: Path) -> bool:
    """True if `path` is a compressed image or zip that must be unpacked before use."""
    return path.suffix in DECOMPRESSORS or path.suffix == ".zip"


def raw_image(path: Path, cache_dir: Path | None = None) -> Path:
    """The raw disk image for `path`: `path` itself if it is raw, else its unpacked copy in the cache."""
    if not path.exists():
        raise UserError(f"{path}: no such file")
    if not os.access(path, os.R_OK):
        raise UserError(f"{path}: permission denied (cannot read it)")
    if not is_compressed(path):
        return path
    cache = (cache_dir or default_cache_dir()) / "images"
    digest = cached_sha256(path, cache_dir)
    final = cache / f"{digest}.img"
    if not final.exists():
        tmp = cache / f".unpacking-{os.getpid()}.img"
        try:
            with open(path, "rb") as src, progress(f"{path.name}: unpacking", path.stat().st_size) as advance:
                _write_sparse(tmp, _unpack(path, src), lambda: advance(os.lseek(src.fileno(), 0, os.SEEK_CUR)))
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)
    return final


def cached_sha256(path: Path, cache_dir: Path | None = None) -> str:
    """SHA-256 of `path`, remembered by (path, size, mtime) so an unchanged file is hashed once."""
    index_file = _private_dir((cache_dir or default_cache_dir()) / "images") / "index.json"
    index = _load_index(index_file)
    key = _index_key(path)
    if key not in index:
        with progress(f"{path.name}: SHA-256", path.stat().st_size) as advance:
            index[key] = sha256_sparse(path, advance)
        _save_index(index_file, index)
    return index[key]


def remember_sha256(path: Path, digest: str, cache_dir: Path | None = None) -> None:
    """Record the SHA-256 of `path` where it is known already (a download verified while it streamed), so that
    unpacking it does not read it again."""
    index_file = _private_dir((cache_dir or default_cache_dir()) / "images") / "index.json"
    index = _load_index(index_file)
    index[_index_key(path)] = digest
    _save_index(index_file, index)


def _index_key(path: Path) -> str:
    stat = path.stat()
    return f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"


def _private_dir(directory: Path) -> Path:
    """`directory`, made if needed, readable by its owner only (unpacked images may hold secrets)."""
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    return directory


def _unpack(path: Path, src: BinaryIO) -> Iterator[bytes]:
    """Decompressed bytes of `path`, read from the open file `src`."""
    if path.suffix != ".zip":
        try:
            yield from stream(DECOMPRESSORS[path.suffix], src)
        except ToolError as err:
            raise UserError(f"{path}: cannot unpack it, the file is incomplete or corrupt ({err}): "
                            "download it again") from None
        return
    try:
        archive = zipfile.ZipFile(src)
    except zipfile.BadZipFile:
        raise UserError(f"{path}: not a valid zip file") from None
    images = [i for i in archive.infolist() if i.filename.endswith(".img") and not i.is_dir()]
    if len(images) != 1:
        raise UserError(f"{path}: expected exactly one .img inside the zip, found {len(images)}")
    with archive.open(images[0]) as member:
        while chunk := member.read(CHUNK):
            yield chunk


def _write_sparse(dest: Path, chunks: Iterable[bytes], tick: Callable[[], None]) -> None:
    """Write `chunks` to `dest`, leaving holes where a chunk is all zero; call `tick` after each chunk."""
    zero = bytes(CHUNK)
    size = 0
    # private from its first byte: an image may hold a node's credential or a cluster's keys
    with os.fdopen(os.open(dest, os.O_CREAT | os.O_TRUNC | os.O_WRONLY | os.O_NOFOLLOW, 0o600), "wb") as out:
        for chunk in chunks:
            if chunk == zero[: len(chunk)]:
                out.seek(len(chunk), os.SEEK_CUR)
            else:
                out.write(chunk)
            size += len(chunk)
            tick()
        out.truncate(size)
    if size == 0:
        raise UserError(f"{dest}: the compressed input unpacked to nothing")


def _load_index(index_file: Path) -> dict[str, str]:
    try:
        return json.loads(index_file.read_text())
    except (OSError, ValueError):
        return {}


def _save_index(index_file: Path, index: dict[str, str]) -> None:
    tmp = index_file.with_name(f".index-{os.getpid()}.tmp")
    tmp.write_text(json.dumps(index, indent=1, sort_keys=True))
    os.replace(tmp, index_file)
