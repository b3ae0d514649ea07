"""Kernel command-line edits are idempotent and keep the file's structure; hostile lines are refused in one line."""

import re

import pytest

from builder.targets.cmdline import (
    MAX_APPEND_BYTES,
    MAX_CMDLINE_TXT_BYTES,
    MAX_EXTLINUX_BYTES,
    CmdlineError,
    append_cmdline_txt,
    append_extlinux,
    check_cmdline_txt,
    check_extlinux,
    cmdline_txt_args,
    extlinux_args,
    has_cgroup_flags,
)

FLAGS = ["cgroup_enable=cpuset", "cgroup_enable=memory", "cgroup_memory=1", "swapaccount=1"]
UBUNTU = ("console=serial0,115200 dwc_otg.lpm_enable=0 console=tty1 root=LABEL=writable rootfstype=ext4 "
          "rootwait fixrtc quiet splash\n")
EXTLINUX = """TIMEOUT 30
DEFAULT primary

MENU TITLE L4T boot options

LABEL primary
      MENU LABEL primary kernel
      LINUX /boot/Image
      INITRD /boot/initrd
      APPEND ${cbootargs} quiet root=/dev/mmcblk0p1 rw rootwait rootfstype=ext4 console=ttyS0,115200n8

LABEL backup
      LINUX /boot/Image.backup
      APPEND ${cbootargs} root=/dev/mmcblk0p1
"""
PRIMARY_APPEND = "${cbootargs} quiet root=/dev/mmcblk0p1 rw rootwait rootfstype=ext4 console=ttyS0,115200n8"


def test_flags_are_appended_to_the_single_line_once():
    once = append_cmdline_txt(UBUNTU, FLAGS)
    assert once.count("\n") == 1 and once.endswith("splash " + " ".join(FLAGS) + "\n")
    assert append_cmdline_txt(once, FLAGS) == once
    assert has_cgroup_flags(cmdline_txt_args(once))


def test_only_the_first_line_of_cmdline_txt_counts_and_survives():
    """The firmware reads the first line only: further lines are neither checked nor kept (the edit drops them)."""
    text = UBUNTU + "ignored second line\n" + "x" * (1 << 20) + "\n"
    check_cmdline_txt(text)
    assert append_cmdline_txt(text, ["a=1"]).splitlines() == [UBUNTU.strip() + " a=1"]


def test_extlinux_default_entry_gets_the_flags_and_keeps_cbootargs():
    edited = append_extlinux(EXTLINUX, FLAGS)
    args = extlinux_args(edited)
    assert args[0] == "${cbootargs}" and args[-4:] == FLAGS
    assert "APPEND ${cbootargs} root=/dev/mmcblk0p1\n" in edited, "the backup entry is untouched"
    assert append_extlinux(edited, FLAGS) == edited


def test_a_flag_already_present_is_not_repeated():
    assert append_cmdline_txt("root=/dev/x cgroup_memory=1\n", ["cgroup_memory=1"]) == "root=/dev/x cgroup_memory=1\n"


def test_windows_line_endings_are_line_endings_and_survive_in_extlinux():
    check_cmdline_txt(UBUNTU.replace("\n", "\r\n"))
    assert append_cmdline_txt(UBUNTU.replace("\n", "\r\n"), ["a=1"]) == UBUNTU.strip() + " a=1\n"
    crlf = EXTLINUX.replace("\n", "\r\n")
    check_extlinux(crlf)
    assert append_extlinux(crlf, ["a=1"]) == crlf.replace(PRIMARY_APPEND, PRIMARY_APPEND + " a=1")


def test_the_limits_are_what_the_boot_chains_pass_on():
    assert MAX_CMDLINE_TXT_BYTES == 1024 - 1 - 298  # the Pi firmware's line, minus its own arguments
    assert MAX_APPEND_BYTES == 2048 - 1 - 565  # U-Boot's and the arm64 kernel's, minus ${cbootargs}


# --- hostile command lines, generated over both files -----------------------------------------------------------

# file: (its check, the longest line it takes, the file around one command line, where that line starts in it)
KINDS = {
    "cmdline.txt": (check_cmdline_txt, MAX_CMDLINE_TXT_BYTES, lambda line: line + "\n", 0),
    "extlinux.conf": (check_extlinux, MAX_APPEND_BYTES, lambda line: EXTLINUX.replace(PRIMARY_APPEND, line),
                      EXTLINUX.index(PRIMARY_APPEND)),
}
# (case, the command line or a length relative to the limit, what the refusal says (a pattern; {at}: the byte offset
# in the file of the line's character at `offset`), offset); no refusal: accepted
LINES = [
    ("10MB", "a" * (10 << 20), "bytes, over the|bytes, more than the", 0),
    ("nul", "root=/dev/x\0 cgroup_memory=1", r"'\\x00' at byte {at}\b", 11),
    ("escape", "root=/dev/x \x1b[2J quiet", r"'\\x1b' at byte {at}\b", 12),
    ("bell", "root=/dev/x quiet\a", r"'\\x07' at byte {at}\b", 17),
    ("del", "root=/dev/x\x7f quiet", r"'\\x7f' at byte {at}\b", 11),
    ("bidi-override", "root=/dev/x \u202equiet", r"'\\u202e' at byte {at}\b", 12),
    ("not-utf8", "root=/dev/\xe9x \ufffd quiet", r"not UTF-8 at byte {at}\b", 13),  # é is 2 bytes: 14
    ("carriage-return-inside", "root=/dev/x\rquiet", r"'\\r' at byte {at}\b", 11),
    ("tab", "root=/dev/x\tquiet", None, 0),
    ("at-limit", 0, None, 0),
    ("one-over", 1, "bytes, over the", 0),
]


def _line(text: str | int, limit: int) -> str:
    """`text`, or a line of `limit` + `text` bytes."""
    return text if isinstance(text, str) else "root=/dev/" + "x" * (limit + text - len("root=/dev/"))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("case", "text", "refusal", "offset"), LINES, ids=[case[0] for case in LINES])
def test_a_hostile_command_line_is_refused_in_one_line_and_the_limit_itself_is_accepted(kind, case, text, refusal,
                                                                                         offset):
    check, limit, file_around, start = KINDS[kind]
    line = _line(text, limit)
    body = file_around(line)
    if refusal is None:
        check(body)
        return
    with pytest.raises(CmdlineError) as caught:
        check(body)
    message = str(caught.value)
    at = start + len(line[:offset].encode())
    assert re.search(refusal.format(at=at), message) and "\n" not in message and len(message) < 300, message


def test_extlinux_is_checked_as_a_whole_file():
    with pytest.raises(CmdlineError, match=f"more than the {MAX_EXTLINUX_BYTES}"):
        check_extlinux(EXTLINUX + "#" * MAX_EXTLINUX_BYTES)
    with pytest.raises(CmdlineError, match=r"'\\x00' at byte \d+ \(line 4\)"):
        check_extlinux(EXTLINUX.replace("MENU TITLE", "MENU\0TITLE"))
    with pytest.raises(CmdlineError, match="has no LABEL entry"):
        check_extlinux("DEFAULT primary\n")
    with pytest.raises(CmdlineError, match="'primary' has no APPEND line"):
        check_extlinux("DEFAULT primary\nLABEL primary\n  LINUX /boot/Image\n")


def test_our_arguments_pushing_the_line_over_the_limit_are_caught_on_the_edited_file():
    line = _line(-len(" ".join(FLAGS)), MAX_CMDLINE_TXT_BYTES)
    check_cmdline_txt(line)
    with pytest.raises(CmdlineError, match=f"is {MAX_CMDLINE_TXT_BYTES + 1} bytes"):
        check_cmdline_txt(append_cmdline_txt(line, FLAGS))
