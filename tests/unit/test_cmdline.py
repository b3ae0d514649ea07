"""Kernel command-line edits are idempotent and keep the file's structure."""

from builder.cmdline import append_cmdline_txt, append_extlinux, cmdline_txt_args, extlinux_args, has_cgroup_flags

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


def test_flags_are_appended_to_the_single_line_once():
    once = append_cmdline_txt(UBUNTU, FLAGS)
    assert once.count("\n") == 1 and once.endswith("splash " + " ".join(FLAGS) + "\n")
    assert append_cmdline_txt(once, FLAGS) == once
    assert has_cgroup_flags(cmdline_txt_args(once))


def test_only_the_first_line_of_cmdline_txt_counts_and_survives():
    text = UBUNTU + "ignored second line\n"
    assert append_cmdline_txt(text, ["a=1"]).splitlines() == [UBUNTU.strip() + " a=1"]


def test_extlinux_default_entry_gets_the_flags_and_keeps_cbootargs():
    edited = append_extlinux(EXTLINUX, FLAGS)
    args = extlinux_args(edited)
    assert args[0] == "${cbootargs}" and args[-4:] == FLAGS
    assert "APPEND ${cbootargs} root=/dev/mmcblk0p1\n" in edited, "the backup entry is untouched"
    assert append_extlinux(edited, FLAGS) == edited


def test_a_flag_already_present_is_not_repeated():
    assert append_cmdline_txt("root=/dev/x cgroup_memory=1\n", ["cgroup_memory=1"]) == "root=/dev/x cgroup_memory=1\n"
