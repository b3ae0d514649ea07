"""How a build's outputs appear: complete or not at all.

Everything is made under a temporary name beside the output (`.NAME.pi-image-PID.tmp...`), fsync'd, then renamed
into place, the image and its OUTPUT.json together; a directory output is swapped in with one atomic exchange.
A build killed with -9 cannot clean up after itself, so every build first removes the temporaries of builds whose
process is gone. A small file (a record, a key, an index, a cluster's settings) is written the same way by
`write_atomic`, the one write-then-rename of pi-image.
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
import secrets
import shutil
from pathlib import Path
from typing import BinaryIO

from .errors import UserError

# filters from stdin to stdout (so that how far the tool has read shows in its stdin's file offset)
COMPRESSORS = {".zst": ["zstd", "-q", "-T0", "-c"], ".xz": ["xz", "-T0", "-c"], ".gz": ["gzip", "-n", "-c"]}
REFUSED_SUFFIXES = (".zip", ".iso", ".bz2", ".7z", ".tar", ".lz4", ".json")
_TEMPORARY_RE = re.compile(r"^\..+\.pi-image-(\d+)\.tmp")
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def temporary(path: Path) -> Path:
    """The name `path` is made under until it is complete."""
    return path.parent / f".{path.name}.pi-image-{os.getpid()}.tmp"


def create_private(path: Path) -> BinaryIO:
    """The new file `path`, open for writing and readable by its owner only from its first byte (an output may be
    given a node's secrets; its final mode is set once it is complete)."""
    return os.fdopen(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600), "wb")


def check_image_output(output: Path, force: bool) -> None:
    """Refuse an output that is a directory, an archive format pi-image cannot write, or exists without --force."""
    if output.suffix in REFUSED_SUFFIXES:
        compressed = ", ".join(".img" + suffix for suffix in COMPRESSORS)
        raise UserError(f"{output}: pi-image writes raw images (.img) or compressed ones ({compressed}),"
                        f" not {output.suffix}: pick one of those names")
    if output.is_dir():
        raise UserError(f"{output} is a directory: name the image file, like {output / 'node.img'}")
    if output.exists() and not force:
        raise UserError(f"{output} exists: pass --force to replace it")
    _check_directory(output.parent)


def check_tree_output(output: Path, force: bool) -> None:
    """A directory target's output is a directory: refuse a file there, or an existing tree without --force."""
    if output.exists() and not output.is_dir():
        raise UserError(f"{output} is a file, but this base is a directory tree and so is its output: "
                        "pick a directory name for --output")
    if output.exists() and not force:
        raise UserError(f"{output} exists: pass --force to replace it (or --in-place to edit the base)")
    _check_directory(output.parent)


def _check_directory(directory: Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create the output directory {directory}: {err.strerror}") from None
    if not os.access(directory, os.W_OK | os.X_OK):
        raise UserError(f"cannot write in the output directory {directory}: permission denied")


def remove_stale_temporaries(directory: Path) -> list[Path]:
    """Delete `.NAME.pi-image-PID.tmp*` files and trees left in `directory` by builds whose process is gone."""
    removed: list[Path] = []
    try:
        entries = list(directory.iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = _TEMPORARY_RE.match(entry.name)
        if match and not _alive(int(match.group(1))):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def fsync_file(path: Path) -> None:
    """Flush `path`'s data to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_directory(directory: Path) -> None:
    """Make renames in `directory` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(pairs: list[tuple[Path, Path]]) -> None:
    """Rename each fsync'd (temporary, final) pair into place, back to back, then fsync their directory."""
    for tmp, _ in pairs:
        fsync_file(tmp)
    for tmp, final in pairs:
        os.replace(tmp, final)
    for directory in {final.parent for _, final in pairs}:
        fsync_directory(directory)


def swap_in_tree(new: Path, output: Path) -> None:
    """Put the tree `new` at `output` in one step (RENAME_EXCHANGE when `output` exists), then remove the old."""
    if not output.exists():
        os.replace(new, output)
        fsync_directory(output.parent)
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.renameat2(_AT_FDCWD, os.fsencode(new), _AT_FDCWD, os.fsencode(output), _RENAME_EXCHANGE) != 0:
        err = ctypes.get_errno()
        raise UserError(f"cannot replace {output} atomically: {os.strerror(err)}"
                        + (" (this filesystem cannot exchange names)" if err == errno.EINVAL else ""))
    fsync_directory(output.parent)
    shutil.rmtree(new)  # `new` now holds the old tree


def write_atomic(path: Path, data: bytes | str, mode: int = 0o600) -> None:
    """Put `data` (text as UTF-8) at `path` complete or not at all, never readable beyond `mode` on the way.

    It is written under a name of this process's own beside `path` (`.NAME.pi-image-PID.tmp-RANDOM`: created new,
    never a file planted under that name in a shared directory nor a link's target), fsync'd, renamed over `path`,
    and the rename made durable (fsync of the directory). On a failure the temporary is removed and the OSError
    raised: what to say about it (a full disk, a read-only directory) is the caller's.
    """
    temporary = path.with_name(f".{path.name}.pi-image-{os.getpid()}.tmp-{secrets.token_hex(4)}")
    descriptor = os.open(temporary, os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_WRONLY | os.O_CLOEXEC, mode)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data.encode("utf-8") if isinstance(data, str) else data)
            handle.flush()
            os.fchmod(handle.fileno(), mode)  # the umask may have taken bits `mode` gives
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)
