"""Inputs as users have them: `.img`, `.img.xz`, `.img.zst`, `.img.gz`, a `.zip` holding one `.img`, or a directory.

A compressed image is streamed once into a cache of raw images named by the SHA-256 of the compressed file, written
sparsely (all-zero runs become holes) under a temporary name and renamed when complete, so an interrupted
decompression never leaves a half image in the cache. xz writes the cache file itself (it makes a regular-file
stdout sparse), so no byte of a vendor's `.img.xz` passes through Python and it unpacks as fast as
`xz -T0 -dc > FILE` (bench/unpack_bench.py; xz >= 5.4 uses every core on the multi-block files the vendors
publish); other formats are streamed through Python, which leaves the holes. An index keyed by (path, size, mtime)
avoids re-hashing an unchanged download on every run. Progress is the decompressor's read position in the input (a
shared file offset).

What is kept (layout, locks and bounds: builder/cache.py):
- nothing that does not start like a disk image: unpacking stops after its first HEAD_BYTES when they hold no
  partition table (an MBR's 0x55AA, GPT's "EFI PART") and no filesystem (an ext superblock, a FAT boot sector);
- no image pi-image made (its root holds PI_IMAGE_DIR, and so maybe a node's credential), nor one that cannot be
  opened to tell: such a copy is private to the process that unpacked it and deleted when it ends;
- the unpacked copies within PI_IMAGE_UNPACKED_MAX (least recently used evicted after each unpack).
Before each unpack, what dead processes left in the cache is removed; a full disk is one line naming the
filesystem, its free space and the fix.
"""

from __future__ import annotations

import fcntl
import json
import os
import struct
import sys
import zipfile
import zlib
from collections.abc import Callable, Generator, Iterable, Iterator
from contextlib import ExitStack, closing
from pathlib import Path
from typing import BinaryIO

from .. import cache
from ..errors import ToolError, UserError
from ..outputs import write_atomic
from ..progress import human_size, progress
from ..run import run_filter, stream
from .copy import sha256_sparse
from .partitions import GPT_SIGNATURE, SECTOR
from .superblock import EXT4_MAGIC, SUPERBLOCK_OFFSET

CHUNK = 1 << 20
DECOMPRESSORS = {".xz": ["xz", "-dc", "-T0"], ".zst": ["zstd", "-dc"], ".gz": ["gzip", "-dc"]}
SPARSE_WRITERS = {".xz": DECOMPRESSORS[".xz"]}  # write the cache file themselves, sparsely (`xz --no-sparse` exists)
HEAD_BYTES = 4096  # what is read of an unpacked image before anything is written: its tables and superblocks
PI_IMAGE_DIR = "/etc/pi-image"  # where pi-image writes into every image it makes (build.json, node.json)


def default_cache_dir() -> Path:
    """`$PI_IMAGE_CACHE`, else `$XDG_CACHE_HOME/pi-image`, else `~/.cache/pi-image`."""
    if os.environ.get("PI_IMAGE_CACHE"):
        return Path(os.environ["PI_IMAGE_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pi-image"


def is_compressed(path: Path) -> bool:
    """True if `path` is a compressed image or zip that must be unpacked before use."""
    return path.suffix in DECOMPRESSORS or path.suffix == ".zip"


def raw_image(path: Path, cache_dir: Path | None = None) -> Path:
    """The raw disk image for `path`: `path` itself if it is raw, else its unpacked copy in the cache (held by this
    process until it ends: see builder/cache.py)."""
    if not path.exists():
        raise UserError(f"{path}: no such file")
    if not os.access(path, os.R_OK):
        raise UserError(f"{path}: permission denied (cannot read it)")
    if not is_compressed(path):
        return path
    root = cache_dir or default_cache_dir()
    _private_dir(root / "images")
    removed = cache.tidy(root)
    _say(cache.summary([e for e in removed if e.size], "what interrupted runs left in the cache goes"))  # not locks
    final = root / "images" / f"{cached_sha256(path, cache_dir)}.img"
    return cache.use(final) or _unpack_into(path, final)


def _unpack_into(path: Path, final: Path) -> Path:
    """Unpack `path` as `final` (or privately, if pi-image made it), then keep the cache within its bound."""
    bound = cache.unpacked_max()  # a bad setting is said before the work, not after
    with ExitStack() as stack:
        try:
            unpacking = stack.enter_context(cache.unpacking(final))
            with open(path, "rb") as src, progress(f"{path.name}: unpacking", path.stat().st_size) as advance:
                def tick() -> None:
                    advance(os.lseek(src.fileno(), 0, os.SEEK_CUR))

                if path.suffix in SPARSE_WRITERS:
                    _decompress_into(path, src, unpacking.fd, tick)
                else:
                    with closing(_unpack(path, src)) as chunks:
                        _write_sparse(unpacking.fd, _checked(path, chunks), tick)
        except OSError as err:
            if err.errno not in cache.NO_ROOM:
                raise
            raise UserError(cache.no_room(final.parent, err, f"unpack {path.name}")) from None
        if _made_by_pi_image(unpacking.path):
            return unpacking.keep_private()
        kept = unpacking.keep()
    _say(cache.summary(cache.evict(final.parent.parent, bound),
                       f"the unpacked images passed {cache.UNPACKED_MAX_ENV}={human_size(bound)}, so the least "
                       "recently used go", f"; what they were unpacked from stays (raise {cache.UNPACKED_MAX_ENV} "
                       "to keep more)"))
    return kept


def looks_like_disk_image(head: bytes) -> bool:
    """True if `head` (an image's first HEAD_BYTES) holds a partition table (MBR or GPT) or a filesystem pi-image
    reads (an ext superblock, or a FAT boot sector, which ends in 0x55AA like an MBR)."""
    mbr_or_fat = head[SECTOR - 2:SECTOR] == b"\x55\xaa"
    gpt = head[SECTOR:SECTOR + len(GPT_SIGNATURE)] == GPT_SIGNATURE
    magic_at = SUPERBLOCK_OFFSET + 0x38
    ext = len(head) >= magic_at + 2 and struct.unpack_from("<H", head, magic_at)[0] == EXT4_MAGIC
    return mbr_or_fat or gpt or ext


def _checked(path: Path, chunks: Iterable[bytes]) -> Iterator[bytes]:
    """`chunks`, once their first HEAD_BYTES are seen to start a disk image; a UserError, reading no further, if
    they do not."""
    chunks = iter(chunks)
    first: list[bytes] = []
    for chunk in chunks:
        first.append(chunk)
        if sum(map(len, first)) >= HEAD_BYTES:
            break
    head = b"".join(first)[:HEAD_BYTES]
    if not looks_like_disk_image(head):
        what = "nothing" if not head else "data that is not a disk image (no partition table, no filesystem)"
        raise UserError(f"{path} unpacks to {what}: nothing was kept; is it the image you meant? (a vendor's "
                        ".img.xz holds a whole disk)")
    yield from first
    yield from chunks


def _made_by_pi_image(raw: Path) -> bool:
    """True if pi-image made the image `raw`: a filesystem in it holds PI_IMAGE_DIR, where a node's credential may
    be. True too if `raw` cannot be opened as a disk image: no command can use it, and it is not kept either. A
    filesystem pi-image cannot open is one it never wrote to."""
    from . import DiskImage  # the image layer imports this module

    try:
        image = DiskImage(raw)
    except UserError:
        return True
    for partition in image.partitions:
        if partition.fs in ("ext4", "ext2/3"):
            try:
                if image.filesystem(partition).lstat(PI_IMAGE_DIR) is not None:
                    return True
            except UserError:
                continue
    return False


def _say(line: str | None) -> None:
    if line:
        print(line, file=sys.stderr, flush=True)


def cached_sha256(path: Path, cache_dir: Path | None = None) -> str:
    """SHA-256 of `path`, remembered by (path, size, mtime) so an unchanged file is hashed once."""
    index_file = _private_dir((cache_dir or default_cache_dir()) / "images") / "index.json"
    key = _index_key(path)
    known = _load_index(index_file).get(key)
    if known is not None:
        return known
    with progress(f"{path.name}: SHA-256", path.stat().st_size) as advance:
        digest = sha256_sparse(path, advance)
    _record(index_file, key, digest)
    return digest


def remember_sha256(path: Path, digest: str, cache_dir: Path | None = None) -> None:
    """Record the SHA-256 of `path` where it is known already (a download verified while it streamed), so that
    unpacking it does not read it again."""
    index_file = _private_dir((cache_dir or default_cache_dir()) / "images") / "index.json"
    _record(index_file, _index_key(path), digest)


def _index_key(path: Path) -> str:
    stat = path.stat()
    return f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"


def _private_dir(directory: Path) -> Path:
    """`directory`, made if needed, readable by its owner only (unpacked images may hold secrets)."""
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    return directory


def _decompress_into(path: Path, src: BinaryIO, fd: int, tick: Callable[[], None]) -> None:
    """Unpack `path` (open as `src`) into the empty file `fd` with its decompressor writing the file itself (see
    SPARSE_WRITERS), once a first short run has shown that it starts like a disk image; `tick` every 0.2 s."""
    with open(path, "rb") as head, closing(_unpack(path, head, HEAD_BYTES)) as chunks:
        next(_checked(path, chunks))  # raises for what is not a disk image (its decompressor is stopped there)
    with os.fdopen(fd, "wb", closefd=False) as out:
        try:
            run_filter(SPARSE_WRITERS[path.suffix], src, out, tick)
        except ToolError as err:  # its own write failed (a full disk), or the input is corrupt further on
            for code in cache.NO_ROOM:
                if os.strerror(code) in str(err):
                    raise OSError(code, os.strerror(code)) from None
            raise _corrupt(path, err) from None


def _corrupt(path: Path, err: ToolError) -> UserError:
    return UserError(f"{path}: cannot unpack it, the file is incomplete or corrupt ({err}): download it again")


def _unpack(path: Path, src: BinaryIO, chunk_size: int = CHUNK) -> Generator[bytes, None, None]:
    """Decompressed bytes of `path`, read from the open file `src`, in chunks of `chunk_size`."""
    if path.suffix != ".zip":
        try:
            yield from stream(DECOMPRESSORS[path.suffix], src, chunk_size)
        except ToolError as err:
            raise _corrupt(path, err) from None
        return
    try:
        archive = zipfile.ZipFile(src)
    except zipfile.BadZipFile:
        raise UserError(f"{path}: not a valid zip file") from None
    images = [i for i in archive.infolist() if i.filename.endswith(".img") and not i.is_dir()]
    if len(images) != 1:
        raise UserError(f"{path}: expected exactly one .img inside the zip, found {len(images)}")
    try:
        with archive.open(images[0]) as member:
            while chunk := member.read(CHUNK):
                yield chunk
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as err:
        raise UserError(f"{path}: cannot unpack {images[0].filename} from it ({err}): download it again") from None


def _write_sparse(fd: int, chunks: Iterable[bytes], tick: Callable[[], None]) -> int:
    """Write `chunks` to the open file `fd`, leaving holes where a chunk is all zero; call `tick` after each chunk;
    return the bytes written (holes included)."""
    zero = bytes(CHUNK)
    size = 0
    with os.fdopen(fd, "wb", closefd=False) as out:
        for chunk in chunks:
            if chunk == zero[: len(chunk)]:
                out.seek(len(chunk), os.SEEK_CUR)
            else:
                out.write(chunk)
            size += len(chunk)
            tick()
        out.truncate(size)
    return size


def _load_index(index_file: Path) -> dict[str, str]:
    try:
        index = json.loads(index_file.read_text())
    except (OSError, ValueError):
        return {}
    return index if isinstance(index, dict) else {}


def _record(index_file: Path, key: str, digest: str) -> None:
    """Add `key` -> `digest` to the index, holding the lock on its directory while it is read, changed and saved,
    so that builds running at once never lose each other's entries."""
    fd = os.open(index_file.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        index = _load_index(index_file)
        index[key] = digest
        _save_index(index_file, index)
    finally:
        os.close(fd)  # releases the lock


def _save_index(index_file: Path, index: dict[str, str]) -> None:
    """Save the index; on a full disk it is not saved (it only saves hashing again), and what is said is the
    unpack's own message, if it fails too."""
    try:
        write_atomic(index_file, json.dumps(index, indent=1, sort_keys=True), 0o644)
    except OSError as err:
        if err.errno not in cache.NO_ROOM:
            raise
