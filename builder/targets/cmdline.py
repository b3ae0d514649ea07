"""Kernel command lines where boards keep them: Pi `cmdline.txt` (one line) and L4T `extlinux.conf` (APPEND).

Both edits are idempotent: an argument already present (same key=value, or the same bare word) is never added twice,
and the file's structure (a single line; the other extlinux entries; `${cbootargs}`) is kept as it was.

Both files come from a vendor's image, so they are checked before and after an edit (`check_cmdline_txt`,
`check_extlinux`): a line longer than the boot chain passes on would be cut where nobody sees it (our cgroup flags,
appended last, are what is lost), and a NUL or another control byte ends or garbles the line for the firmware,
U-Boot or the kernel (a C string ends at the NUL: what we appended after it would never be read).
"""

from __future__ import annotations

import re

from ..errors import UserError

#: what the kubelet needs on the command line of a board kernel that ships the memory cgroup controller off (the
#: Raspberry Pi's): what `inspect` looks for
CGROUP_FLAGS = ("cgroup_enable=cpuset", "cgroup_enable=memory", "cgroup_memory=1")
#: what a profile's `cgroup_flags` appends by default: those, and swap accounting
DEFAULT_CGROUP_FLAGS = (*CGROUP_FLAGS, "swapaccount=1")

# --- Raspberry Pi: the firmware (start*.elf) builds the kernel's command line as its own arguments followed by the
# first line of cmdline.txt (raspberrypi/documentation, configuration/kernel-command-line-config.adoc: "Put all
# parameters in cmdline.txt on the same line"; the firmware "makes changes to the command line").
# The whole line is at most 1024 bytes with its NUL: the firmware's own limit (raised from 500 to 1024 in 2012,
# popcornmix in raspberrypi/linux#140) and COMMAND_LINE_SIZE of the 32-bit Arm kernels Raspberry Pi OS still ships
# (arch/arm/include/uapi/asm/setup.h; the arm64 kernel's 2048 does not raise the firmware's limit).
PI_COMMAND_LINE_SIZE = 1024
# The firmware's own arguments, the longest seen: 298 bytes on a Pi 5 ("reboot=w coherent_pool=1M 8250.nr_uarts=1
# pci=pcie_bus_safe snd_bcm2835... bcm2708_fb.fbwidth=... smsc95xx.macaddr=... vc_mem.mem_size=0x40000000  ",
# raspberrypi/linux#5743); 260 on a Pi 5 of 2025 (raspberrypi/firmware#2007), 183 on a Pi 4 (linux#4900).
PI_FIRMWARE_ARGS = 298
#: the longest first line of cmdline.txt pi-image accepts, before and after its edit: 725 bytes
MAX_CMDLINE_TXT_BYTES = PI_COMMAND_LINE_SIZE - 1 - PI_FIRMWARE_ARGS

# --- Jetson (L4T): U-Boot copies the APPEND line into a CONFIG_SYS_CBSIZE buffer and refuses a longer one ("bootarg
# overflow", boot/pxe_utils.c); Tegra's is 2048 bytes with the NUL (include/configs/tegra-common.h in NVIDIA's
# U-Boot, OE4T/u-boot-tegra), and so is the arm64 kernel's COMMAND_LINE_SIZE (arch/arm64/include/uapi/asm/setup.h,
# cited in siderolabs/talos#13006). U-Boot replaces `${cbootargs}` in that line with cboot's arguments, in the same
# buffer: 565 bytes on a Jetson Nano (its /proc/cmdline in OE4T/tegra-demo-distro#120).
L4T_COMMAND_LINE_SIZE = 2048
L4T_CBOOTARGS = 565
#: the longest APPEND line pi-image accepts, before and after its edit: 1482 bytes
MAX_APPEND_BYTES = L4T_COMMAND_LINE_SIZE - 1 - L4T_CBOOTARGS
#: extlinux.conf as a whole: L4T's is under 1 KiB and neither U-Boot nor syslinux sets a limit; 64 KiB is far more
#: than any boot menu, and bounds what is read, checked and rewritten
MAX_EXTLINUX_BYTES = 64 * 1024

# extlinux.conf keywords start a line, in any case
_KEYWORD_LINES = re.MULTILINE | re.IGNORECASE
#: what Python's UTF-8 decoding (errors="replace", as filesystems read text) puts where a byte is not UTF-8
NOT_UTF8 = "\ufffd"


class CmdlineError(UserError):
    """What makes a kernel command-line file unfit for its boot loader; the caller names the file and the fix."""


def check_cmdline_txt(text: str) -> None:
    """Raise CmdlineError if the first line of a cmdline.txt, the only one the firmware reads, is longer than
    MAX_CMDLINE_TXT_BYTES or holds a control character (a tab is whitespace to the kernel and allowed; the line may
    end in "\\r\\n"). Further lines are not checked: the firmware never reads them and `append_cmdline_txt` drops
    them."""
    line = _first_line(text)
    _check_length(line, MAX_CMDLINE_TXT_BYTES, "its line", f"the Raspberry Pi firmware leaves for cmdline.txt (a "
                  f"{PI_COMMAND_LINE_SIZE}-byte command line, up to {PI_FIRMWARE_ARGS} of it the firmware's own)")
    _check_characters(line)


def check_extlinux(text: str) -> None:
    """Raise CmdlineError if an extlinux.conf is bigger than MAX_EXTLINUX_BYTES, holds a control character anywhere
    (U-Boot reads it as a C string: a NUL ends it), has no entry to boot, or its default entry's APPEND line is longer
    than MAX_APPEND_BYTES."""
    size = len(text.encode("utf-8"))
    if size > MAX_EXTLINUX_BYTES:
        raise CmdlineError(f"it is {size} bytes, more than the {MAX_EXTLINUX_BYTES} any boot menu needs")
    _check_characters(text)
    start, end = _default_label_span(text)
    _check_length(text[start:end], MAX_APPEND_BYTES, "its APPEND line", f"U-Boot and the kernel leave for it (a "
                  f"{L4T_COMMAND_LINE_SIZE}-byte command line, about {L4T_CBOOTARGS} of it ${{cbootargs}})")


def _first_line(text: str) -> str:
    """The line the Pi firmware reads: up to the first newline, without a "\\r" before it."""
    return text.split("\n", 1)[0].removesuffix("\r")


def _check_length(line: str, limit: int, what: str, whose: str) -> None:
    size = len(line.encode("utf-8"))
    if size > limit:
        raise CmdlineError(f"{what} is {size} bytes, over the {limit} {whose}")


def _check_characters(text: str) -> None:
    """Raise CmdlineError at the first character that is neither printable, a tab nor a line ending ("\\n", or
    "\\r\\n"); bytes that are not UTF-8 (read as U+FFFD) count as such a character."""
    for index, char in enumerate(text):
        if (char.isprintable() and char != NOT_UTF8) or char in "\t\n" or text.startswith("\r\n", index):
            continue
        offset = len(text[:index].encode("utf-8"))  # all valid UTF-8 before `index`: the file's own bytes
        line = text.count("\n", 0, index) + 1
        what = "a byte that is not UTF-8" if char == NOT_UTF8 else f"the control character {char!a}"
        raise CmdlineError(f"it holds {what} at byte {offset} (line {line})")


def cmdline_txt_args(text: str) -> list[str]:
    """Arguments of a Pi cmdline.txt: the firmware reads only the first line."""
    return _first_line(text).split()


def append_cmdline_txt(text: str, args: list[str]) -> str:
    """cmdline.txt with `args` appended to its first line (missing ones only); always exactly one line: the firmware
    reads no other, so any further lines are dropped."""
    current = cmdline_txt_args(text)
    return " ".join(current + _missing(current, args)) + "\n"


def _default_label_span(text: str) -> tuple[int, int]:
    """Character span of the APPEND line of the DEFAULT entry of an extlinux.conf (without a "\\r" ending it)."""
    default = re.search(r"^\s*DEFAULT\s+(\S+)", text, _KEYWORD_LINES)
    labels = list(re.finditer(r"^\s*LABEL\s+(\S+)", text, _KEYWORD_LINES))
    if not labels:
        raise CmdlineError("it has no LABEL entry")
    chosen = next((i for i, m in enumerate(labels) if default and m.group(1) == default.group(1)), 0)
    end = labels[chosen + 1].start() if chosen + 1 < len(labels) else len(text)
    append = re.search(r"^[ \t]*APPEND[ \t]+([^\n]*?)\r?$", text[labels[chosen].start():end], _KEYWORD_LINES)
    if not append:
        raise CmdlineError(f"its entry {labels[chosen].group(1)[:64]!r} has no APPEND line")
    base = labels[chosen].start()
    return base + append.start(1), base + append.end(1)


def extlinux_args(text: str) -> list[str]:
    """Arguments on the APPEND line of the default extlinux entry (`${cbootargs}` included as is); [] if the file
    has no such line (`check_extlinux` says so)."""
    try:
        start, end = _default_label_span(text)
    except CmdlineError:
        return []
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
