"""The one way pi-image runs external commands.

Every subprocess goes through `run()` so that failures become a `ToolError` naming the command and quoting
its stderr, and so that a missing tool says which package to install.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import BinaryIO

from .errors import ToolError, UserError

log = logging.getLogger(__name__)

# Which Debian package provides each tool we call, for the "not installed" message.
PACKAGES = {
    "debugfs": "e2fsprogs", "e2fsck": "e2fsprogs", "mkfs.ext4": "e2fsprogs", "dumpe2fs": "e2fsprogs",
    "resize2fs": "e2fsprogs",
    "mdir": "mtools", "mcopy": "mtools", "mtype": "mtools", "mmd": "mtools", "mdel": "mtools", "mattrib": "mtools",
    "mkfs.vfat": "dosfstools", "fsck.vfat": "dosfstools", "sfdisk": "fdisk",
    "bmaptool": "bmap-tools", "xz": "xz-utils", "zstd": "zstd", "gzip": "gzip", "blkid": "util-linux",
    "cp": "coreutils", "openssl": "openssl",
    "skopeo": "skopeo", "apt-get": "apt", "apt-cache": "apt",
}

# mtools must not read the user's ~/.mtoolsrc nor refuse images whose geometry it dislikes.
TOOL_ENV = {"MTOOLSRC": "/dev/null", "MTOOLS_SKIP_CHECK": "1", "LC_ALL": "C"}


def run(
    argv: Sequence[str],
    *,
    input: bytes | None = None,
    env: Mapping[str, str] | None = None,
    check: bool = True,
    stdout: int | None = subprocess.PIPE,
) -> subprocess.CompletedProcess[bytes]:
    """Run `argv`, capture its output, and raise `ToolError` (with stderr) if it exits non-zero and `check`."""
    _require(argv[0])
    full_env = {**os.environ, **TOOL_ENV, **(env or {})}
    log.debug("run: %s", shlex.join(argv))
    proc = subprocess.run(argv, input=input, stdout=stdout, stderr=subprocess.PIPE, env=full_env, check=False)
    if check and proc.returncode != 0:
        raise ToolError(f"{shlex.join(argv)} failed (exit {proc.returncode}): {summarize(proc.stderr)}")
    return proc


def summarize(stderr: bytes, limit: int = 400) -> str:
    """Squeeze a tool's stderr into one line for an error message."""
    text = " | ".join(line.strip() for line in stderr.decode(errors="replace").splitlines() if line.strip())
    return (text[: limit - 3] + "...") if len(text) > limit else (text or "no error output")


def stream(argv: Sequence[str], source: BinaryIO, chunk_size: int = 1 << 20) -> Iterator[bytes]:
    """Run the filter `argv` (e.g. `xz -dc`) with `source` as stdin and yield its stdout in chunks.

    A failing tool raises `ToolError` with its stderr once its output is exhausted.
    """
    _require(argv[0])
    log.debug("stream: %s", shlex.join(argv))
    with tempfile.TemporaryFile() as errors, subprocess.Popen(
        argv, stdin=source, stdout=subprocess.PIPE, stderr=errors, env={**os.environ, **TOOL_ENV}
    ) as proc:
        assert proc.stdout is not None
        try:
            while chunk := proc.stdout.read(chunk_size):
                yield chunk
        finally:
            proc.stdout.close()
            returncode = proc.wait()
        if returncode != 0:
            errors.seek(0)
            raise ToolError(f"{shlex.join(argv)} failed (exit {returncode}): {summarize(errors.read())}")


def run_filter(argv: Sequence[str], source: BinaryIO, dest: BinaryIO, watch: Callable[[], None],
               interval: float = 0.2) -> None:
    """Run the filter `argv` (e.g. `zstd -c`) from the open file `source` into the open file `dest`, calling
    `watch()` every `interval` seconds while it runs (the tool reads `source`'s own file offset, which shows how
    far it got). A failing tool raises `ToolError` with its stderr; an interruption kills it.
    """
    _require(argv[0])
    log.debug("run: %s < %s > %s", shlex.join(argv), source.name, dest.name)
    with tempfile.TemporaryFile() as errors, subprocess.Popen(
        argv, stdin=source, stdout=dest, stderr=errors, env={**os.environ, **TOOL_ENV}
    ) as proc:
        try:
            while True:
                try:
                    returncode = proc.wait(timeout=interval)
                    break
                except subprocess.TimeoutExpired:
                    watch()
        except BaseException:
            proc.kill()
            raise
        if returncode != 0:
            errors.seek(0)
            raise ToolError(f"{shlex.join(argv)} failed (exit {returncode}): {summarize(errors.read())}")


def _require(tool: str) -> None:
    """Fail with the package to install if `tool` is not on PATH."""
    if shutil.which(tool) is None:
        package = PACKAGES.get(tool, tool)
        raise UserError(f"{tool} is not installed: install the '{package}' package (apt-get install {package})")
