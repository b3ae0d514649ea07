"""The debugfs dialect: running it, quoting names for its command line, and reading what it prints.

debugfs exits 0 whatever happens and prints its errors on stderr. A filesystem it cannot open is reported once
("... while trying to open ...") and every command then fails with "Filesystem not open": that first line becomes
the user's error here, instead of an empty directory listing that would read as "the file is missing".

Names in an image are bytes. They travel as `str` with surrogate escapes (the convention of `os.fsdecode`) and
reach debugfs byte for byte, so a file named b"caf\\xe9" can be listed, read, replaced and removed.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from ..run import run
from .fs import FileStat

BANNER = re.compile(rb"^debugfs \d+\.\d+.*\n?", re.M)
OPEN_FAILED = re.compile(r"^debugfs: (.+?) while (?:trying to open|opening filesystem)", re.M)
INLINE_DATA_XATTR = "system.data"  # the content of an inline-data file, not an attribute


def debugfs(spec: str, description: str, commands: Sequence[str], *, write: bool = False,
            fake_time: int | None = None, undo: Path | None = None) -> tuple[bytes, list[str]]:
    """Run `commands` in one debugfs session on `spec` (image?offset=N); return stdout and the error lines.
    `undo` (with `write`): a new file where debugfs saves each block before it overwrites it (an e2undo file)."""
    argv = (["debugfs", "-w"] + (["-z", str(undo)] if undo else [])) if write else ["debugfs"]
    env = {"E2FSPROGS_FAKE_TIME": str(fake_time)} if fake_time is not None else None
    script = ("\n".join(commands) + "\n").encode("utf-8", errors="surrogateescape")
    proc = run([*argv, "-f", "-", spec], input=script, env=env)
    stderr = BANNER.sub(b"", proc.stderr).decode("utf-8", errors="replace")
    cannot_open = OPEN_FAILED.search(stderr)
    if cannot_open:
        reason = cannot_open.group(1)
        fix = ("a newer e2fsprogs is needed" if "unsupported feature" in reason
               else f"check it with: e2fsck -fn '{spec}'")
        raise UserError(f"{description}: debugfs cannot open it: {reason} ({fix})")
    return proc.stdout, [line for line in stderr.splitlines() if line.strip()]


def text(out: bytes) -> str:
    """debugfs output as text; bytes that are not UTF-8 (in names) survive as surrogate escapes."""
    return out.decode("utf-8", errors="surrogateescape")


def quote(arg: str) -> str:
    """`arg` double-quoted for a debugfs command line; refuses what would break out of the quotes.

    Names can come from hostile images (symlink targets, xattr names), and one stray quote or newline would let
    an image inject debugfs commands such as `dump` that write to the host.
    """
    if '"' in arg or any(ord(c) < 32 or ord(c) == 127 for c in arg):
        raise UserError(f"refusing a name with a quote or control character: {arg!r}")
    return f'"{arg}"'


@dataclass(frozen=True)
class Listed:
    """One directory entry as `ls -p` shows it."""

    inode: int
    stat: FileStat


def split_listings(out: bytes, dirs: Sequence[str]) -> dict[str, dict[str, Listed]]:
    """Parse the output of several `ls -p` commands run in one debugfs session: directory -> name -> entry."""
    result: dict[str, dict[str, Listed]] = {}
    current: dict[str, Listed] | None = None
    for line in text(out).splitlines():
        if line.startswith("debugfs: "):
            m = re.match(r'debugfs: ls -p "(.*)"$', line)
            current = result.setdefault(m.group(1), {}) if m and m.group(1) in dirs else None
            continue
        fields = line.split("/")
        if current is not None and len(fields) == 8 and not fields[0] and fields[5] not in (".", ".."):
            stat = FileStat(int(fields[2], 8), int(fields[3]), int(fields[4]), int(fields[6] or 0))
            current[fields[5]] = Listed(int(fields[1]), stat)
    return result


@dataclass(frozen=True)
class InodeFacts:
    """What `stat` says about an inode that a write replaces or removes."""

    number: int
    links: int
    xattr_block: int  # the external extended-attribute block ("File ACL"), 0 if the attributes fit in the inode
    xattrs: tuple[str, ...]  # names of its extended attributes


def parse_stat(stat_text: str) -> InodeFacts | None:
    """The facts in the output of one `stat` command, or None if it printed none."""
    number = re.search(r"^Inode: (\d+)", stat_text, re.M)
    links = re.search(r"\bLinks: (\d+)", stat_text)
    block = re.search(r"\bFile ACL: (\d+)", stat_text)
    if not number or not links or not block:
        return None
    return InodeFacts(int(number.group(1)), int(links.group(1)), int(block.group(1)), xattr_names(stat_text))


def xattr_names(stat_text: str) -> tuple[str, ...]:
    """Names of the extended attributes `stat` lists. debugfs shows a name that is mostly unprintable in hex
    ("75 73 65 72 ..."), and a single unprintable byte as \\ooo."""
    section = re.search(r"^Extended attributes:\n((?:  .*\n?)*)", stat_text, re.M)
    names = []
    for line in section.group(1).splitlines() if section else []:
        shown = re.match(r"  (.*?) \(\d+\)", line)
        if not shown:
            continue
        if re.fullmatch(r"(?:[0-9a-f]{2} )+", shown.group(1)):
            raw = bytes.fromhex(shown.group(1))
        else:
            raw = re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m.group(1), 8)]),
                         shown.group(1).encode("utf-8", errors="surrogateescape"))
        names.append(raw.decode("utf-8", errors="surrogateescape"))
    return tuple(name for name in names if name != INLINE_DATA_XATTR)


def ncheck_names(out: bytes, number: int) -> set[str]:
    """The paths `ncheck NUMBER` printed for inode `number` (it shows a name in the root as "//name")."""
    names = set()
    for line in text(out).splitlines():
        fields = line.split("\t", 1)
        if len(fields) == 2 and fields[0] == str(number):
            names.add("/" + fields[1].lstrip("/"))
    return names
