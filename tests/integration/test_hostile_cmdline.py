"""A base whose kernel command line is hostile, through the real CLI: `pi-image build` refuses it in one line that
names the file, where it is and the fix, before anything is written; the limits' edges are accepted.

Generated over both files a target keeps its command line in: cmdline.txt on the Pi's FAT boot partition (written
into a copy of the Ubuntu sample with mtools) and L4T's extlinux.conf (in a copy of the rootfs directory sample),
each × {10 MB, NUL bytes, control bytes, exactly at the limit, one byte over, our arguments pushing it over}.
`build --dry-run` plans every edit (the kernel step checks before and after its edit) and writes nothing.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from readback import KUBE_KEY, Card, PiImage, tool

from builder.config.profiles import load_profile
from builder.plan.steps import wifi
from builder.targets.cmdline import MAX_APPEND_BYTES, MAX_CMDLINE_TXT_BYTES

EXTLINUX = """TIMEOUT 30
DEFAULT primary

MENU TITLE L4T boot options

LABEL primary
      MENU LABEL primary kernel
      LINUX /boot/Image
      INITRD /boot/initrd
      APPEND {line}
"""


@dataclass(frozen=True)
class Kind:
    """A file holding a kernel command line: the sample it is in, the profile built on it, its line's limit."""

    name: str
    sample: str
    profile: str
    limit: int
    put: Callable[[Path, bytes], None]  # (the sample's copy, the file's bytes)
    around: Callable[[str], str]  # the file's text around one command line

    @property
    def ours(self) -> str:
        """The arguments the kernel step adds for the profile."""
        values = load_profile(self.profile)
        return " ".join(values["cgroup_flags"] + wifi.kernel_args(values))


def _put_cmdline_txt(image: Path, data: bytes) -> None:
    source = image.parent / "cmdline.txt"
    source.write_bytes(data)
    tool("mcopy", "-o", "-i", Card(image).boot.spec, source, "::/cmdline.txt")


def _put_extlinux(tree: Path, data: bytes) -> None:
    (tree / "boot/extlinux/extlinux.conf").write_bytes(data)


KINDS = [Kind("cmdline.txt", "ubuntu-raspi", "worker-8g", MAX_CMDLINE_TXT_BYTES, _put_cmdline_txt,
              lambda line: line + "\n"),
         Kind("extlinux.conf", "l4t-rootfs", "jetson-l4t", MAX_APPEND_BYTES, _put_extlinux,
              lambda line: EXTLINUX.format(line=line))]


def _sized(size: int, ours: str = "") -> str:
    """A command line of exactly `size` bytes, holding `ours` (our arguments: the edit adds nothing)."""
    head = " ".join(word for word in ("root=/dev/mmcblk0p1", ours, "pad=") if word)
    return head + "x" * (size - len(head))


# (case, the command line for a file of `kind`, accepted?)
CASES: list[tuple[str, Callable[[Kind], str], bool]] = [
    ("10MB", lambda kind: "a" * (10 << 20), False),
    ("nul", lambda kind: "root=/dev/mmcblk0p1\0\0\0 rootwait", False),
    ("escape", lambda kind: "root=/dev/mmcblk0p1 \x1b]0;owned\x07\x1b[2J rootwait", False),
    ("at-limit", lambda kind: _sized(kind.limit, kind.ours), True),
    ("one-over", lambda kind: _sized(kind.limit + 1, kind.ours), False),
    ("ours-push-over", lambda kind: _sized(kind.limit - len(kind.ours)), False),
]


def dry_run(cli: PiImage, kind: Kind, base: Path) -> subprocess.CompletedProcess[str]:
    return cli("build", "--dry-run", "--profile", kind.profile, "--base", base, "--output", base.parent / "out",
               "--kube-key", KUBE_KEY)


def assert_refused(proc: subprocess.CompletedProcess[str], kind: Kind, base: Path) -> str:
    """One line on stderr, exit 1, naming the file, where it is (the base, or its partition) and a fix."""
    assert proc.returncode == 1, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("pi-image: error: "), proc.stderr[-2000:]
    line = lines[0]
    assert "Traceback" not in proc.stderr and len(line) < 700, line
    assert kind.name in line and (str(base) in line or "partition" in line), line
    assert "restore" in line or "drop arguments" in line, line
    assert not any(ord(c) < 0x20 or ord(c) == 0x7f for c in line), line
    return line


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.name)
@pytest.mark.parametrize(("case", "line", "accepted"), CASES, ids=[case[0] for case in CASES])
def test_a_hostile_kernel_command_line_is_refused_in_one_line_and_the_limit_accepted(cli, sample_copy, kind, case, line,
                                                                                   accepted):
    base = sample_copy(kind.sample)
    kind.put(base, kind.around(line(kind)).encode())
    proc = dry_run(cli, kind, base)
    if accepted:
        assert proc.returncode == 0, proc.stderr[-2000:]
        return
    message = assert_refused(proc, kind, base)
    if case == "one-over":
        assert f"{kind.limit + 1} bytes, over the {kind.limit}" in message
    if case == "ours-push-over":
        assert "with the arguments pi-image adds" in message and f"{kind.limit + 1} bytes" in message


def test_a_control_byte_anywhere_in_extlinux_conf_is_refused(cli, sample_copy):
    """U-Boot reads the whole menu as one C string: a NUL before the entry ends it there."""
    base, kind = sample_copy("l4t-rootfs"), KINDS[1]
    kind.put(base, EXTLINUX.format(line="root=/dev/mmcblk0p1").replace("MENU TITLE", "MENU\x1bTITLE").encode())
    assert "line 4" in assert_refused(dry_run(cli, kind, base), kind, base)


def test_cmdline_txt_lines_after_the_first_are_not_read_and_not_kept(cli, sample_copy, tmp_path):
    """The firmware reads the first line only: a vendor's further lines do not stop a build, and the output's
    cmdline.txt is that first line with our arguments."""
    base, kind = sample_copy("ubuntu-raspi"), KINDS[0]
    first = "console=tty1 root=LABEL=writable rootfstype=ext4 rootwait"
    kind.put(base, (first + "\n" + "# notes\n" * 10000).encode())
    output = tmp_path / "node.img"
    proc = cli("build", "--profile", kind.profile, "--base", base, "--output", output, "--kube-key", KUBE_KEY)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert Card(output).boot.text("/cmdline.txt") == f"{first} {kind.ours}\n"
