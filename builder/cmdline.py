"""Kernel command lines where boards keep them: Pi `cmdline.txt` (one line) and L4T `extlinux.conf` (APPEND).

Both edits are idempotent: an argument already present (same key=value, or the same bare word) is never added twice,
and the file's structure (a single line; the other extlinux entries; `${cbootargs}`) is kept as it was.
"""

from __future__ import annotations

import re

from .errors import UserError

CGROUP_FLAGS = ("cgroup_enable=cpuset", "cgroup_enable=memory", "cgroup_memory=1")


def cmdline_txt_args(text: str) -> list[str]:
    """Arguments of a Pi cmdline.txt: the firmware reads only the first line."""
    lines = text.splitlines()
    return lines[0].split() if lines else []


def append_cmdline_txt(text: str, args: list[str]) -> str:
    """cmdline.txt with `args` appended to its single line (missing ones only); always exactly one line."""
    current = cmdline_txt_args(text)
    return " ".join(current + [a for a in _missing(current, args)]) + "\n"


def _default_label_span(text: str) -> tuple[int, int]:
    """Character span of the APPEND line of the DEFAULT entry of an extlinux.conf."""
    default = re.search(r"^\s*DEFAULT\s+(\S+)", text, re.M | re.I)
    labels = list(re.finditer(r"^\s*LABEL\s+(\S+)", text, re.M | re.I))
    if not labels:
        raise UserError("extlinux.conf has no LABEL entry")
    chosen = next((i for i, m in enumerate(labels) if default and m.group(1) == default.group(1)), 0)
    end = labels[chosen + 1].start() if chosen + 1 < len(labels) else len(text)
    append = re.search(r"^[ \t]*APPEND[ \t]+(.*)$", text[labels[chosen].start():end], re.M | re.I)
    if not append:
        raise UserError(f"extlinux.conf entry {labels[chosen].group(1)!r} has no APPEND line")
    base = labels[chosen].start()
    return base + append.start(1), base + append.end(1)


def extlinux_args(text: str) -> list[str]:
    """Arguments on the APPEND line of the default extlinux entry (`${cbootargs}` included as is)."""
    start, end = _default_label_span(text)
    return text[start:end].split()


def append_extlinux(text: str, args: list[str]) -> str:
    """extlinux.conf with `args` appended to the default entry's APPEND line (missing ones only)."""
    start, end = _default_label_span(text)
    current = text[start:end].split()
    return text[:start] + " ".join(current + _missing(current, args)) + text[end:]


def _missing(current: list[str], wanted: list[str]) -> list[str]:
    present = set(current)
    return [a for a in dict.fromkeys(wanted) if a not in present]


def has_cgroup_flags(args: list[str]) -> bool:
    """True if every flag Kubernetes needs for the memory and cpuset cgroups is on the command line."""
    return all(flag in args for flag in CGROUP_FLAGS)
