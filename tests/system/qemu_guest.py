"""Power an image on under `qemu-system-x86_64 -accel tcg` the way a Pi's firmware would boot it.

The firmware reads config.txt on the FAT boot partition (`kernel=`, `initramfs FILE followkernel`, `cmdline=`) and
hands the first line of cmdline.txt to the kernel; here QEMU's direct kernel boot does the same with the files copied
out of the image. Two NICs on user-mode networking: the first on 10.0.3.0/24 (not the cluster's subnet), the second
on QEMU's default 10.0.2.0/24, where the host's 127.0.0.1 is 10.0.2.2 and the guest is 10.0.2.15 (each guest on a
network of its own: two guests reach each other only through a port the host forwards, `hostfwd`).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

from ubuntu_layout import copy_boot_file, read_boot_file

QEMU = "qemu-system-x86_64"
# Two vCPUs let systemd's parallel start-up use both host cores (TCG runs one thread per vCPU).
VCPUS = os.environ.get("PI_IMAGE_SYSTEM_VCPUS", str(min(2, os.cpu_count() or 1)))
# Every test boot also gets these: a kernel panic ends QEMU at once (-no-reboot) instead of hanging until the timeout;
# TCG's TSC is steady, but the kernel distrusts it and falls back to the HPET, whose every read is emulated MMIO
# (the boot takes about 1.5x longer).
TEST_ARGS = ("panic=-1", "tsc=reliable")


class BootFiles:
    """Kernel, initramfs and command line of an image, read from its boot partition as the Pi firmware does."""

    def __init__(self, image: Path, workdir: Path):
        config = read_boot_file(image, "/config.txt").decode()
        kernel = _setting(config, r"^kernel=(\S+)", "vmlinuz")
        initrd = _setting(config, r"^initramfs\s+(\S+)", "initrd.img")
        cmdline_file = _setting(config, r"^cmdline=(\S+)", "cmdline.txt")
        self.kernel = copy_boot_file(image, "/" + kernel, workdir / "vmlinuz")
        self.initrd = copy_boot_file(image, "/" + initrd, workdir / "initrd.img")
        self.cmdline = read_boot_file(image, "/" + cmdline_file).decode().splitlines()[0].strip()


def _setting(config: str, pattern: str, default: str) -> str:
    match = re.search(pattern, config, re.MULTILINE)
    return match.group(1) if match else default


class Guest:
    """One power-on: QEMU running with the serial console captured to a file, under a hard time limit."""

    def __init__(self, image: Path, boot: BootFiles, serial: Path, knobs: dict[str, str] | None = None,
                 kernel_args: tuple[str, ...] = (), memory_mib: int = 1024, rtc_base: str | None = None,
                 hostfwd: tuple[int | tuple[int, int], ...] = (), only_ports: tuple[int, ...] | None = None,
                 guestfwd: tuple[tuple[str, int], ...] = (), address: str | None = None):
        """`rtc_base` (YYYY-MM-DDTHH:MM:SS, UTC): where the emulated hardware clock starts (None: the host's time).
        `hostfwd`: TCP ports of the host's 127.0.0.1 (only: nothing outside this machine reaches a test guest)
        forwarded to the same port of the guest's cluster address, or (host port, guest port) pairs.
        `guestfwd`: ("A.B.C.D:PORT", host port): the guest's connections to another machine of its cluster subnet
        handed to the host's 127.0.0.1:host port by socat (how one guest reaches another's hostfwd).
        `address`: the cluster NIC's DHCP address (QEMU's dhcpstart; default 10.0.2.15, every guest's): guests that
        must not share one (etcd members' peer URLs) get their inventory address.
        `only_ports`: an isolated guest (QEMU's restrict=on on both NICs: no route out, no DNS, no NTP) that reaches
        10.0.2.2:PORT for these ports only, each connection handed to the host's 127.0.0.1:PORT by socat."""
        self.image = image
        self.serial_path = serial
        self.cmdline = " ".join([boot.cmdline, *TEST_ARGS, *kernel_args] +
                                [f'pitest.{key}="{value}"' if " " in str(value) else f"pitest.{key}={value}"
                                 for key, value in (knobs or {}).items()])
        # isolated: QEMU's own host alias moves off 10.0.2.2 (unreachable anyway), which then answers the forwards only
        restrict = ",restrict=on" if only_ports is not None else ""
        moved_host = ",host=10.0.2.100" if only_ports is not None else ""
        self.argv = [
            QEMU, "-accel", "tcg", "-m", str(memory_mib), "-smp", VCPUS, "-nodefaults", "-display", "none",
            "-no-reboot", "-serial", f"file:{serial}",
            "-kernel", str(boot.kernel), "-initrd", str(boot.initrd), "-append", self.cmdline,
            "-drive", f"file={image},format=raw,if=virtio",
            "-netdev", "user,id=other,net=10.0.3.0/24" + restrict, "-device", "virtio-net-pci,netdev=other",
            "-netdev", "".join(["user,id=cluster", restrict, moved_host,
                                f",dhcpstart={address}" if address else "",
                                *(",hostfwd=tcp:127.0.0.1:{}-{}:{}".format(
                                    *((port[0], address or "", port[1]) if isinstance(port, tuple)
                                      else (port, address or "", port))) for port in hostfwd),
                                *(f",guestfwd=tcp:{address}-cmd:socat - TCP:127.0.0.1:{port}" for address, port in
                                  [*((f"10.0.2.2:{port}", port) for port in only_ports or ()), *guestfwd])]),
            "-device", "virtio-net-pci,netdev=cluster",
            "-device", "virtio-rng-pci",
        ] + (["-rtc", f"base={rtc_base}"] if rtc_base else [])
        self.process: subprocess.Popen | None = None
        self.started = 0.0
        self.ended: float | None = None
        self.seen: dict[str, float] = {}  # pattern -> seconds after QEMU started when it first appeared

    def start(self) -> Guest:
        self.serial_path.write_bytes(b"")
        self.stderr = open(self.serial_path.with_suffix(".qemu-stderr"), "wb")
        self.started = time.monotonic()
        self.process = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=self.stderr,
                                        stderr=subprocess.STDOUT)
        return self

    @property
    def serial(self) -> str:
        return self.serial_path.read_bytes().decode(errors="replace")

    def elapsed(self) -> float:
        return (self.ended or time.monotonic()) - self.started

    def running(self) -> bool:
        """True while QEMU runs (once it has ended, elapsed() is its run time)."""
        if self.process.poll() is None:
            return True
        self._ended()
        return False

    def at(self, pattern: str) -> float:
        """When `pattern` was first seen (see note()), on the host's monotonic clock: to compare two guests."""
        return self.started + self.seen[pattern]

    def wait_for(self, pattern: str, timeout: float) -> float:
        """Seconds from QEMU's start until `pattern` (a substring) appeared on the serial console."""
        deadline = time.monotonic() + timeout
        while pattern not in self.seen:
            self.note([pattern])
            if pattern in self.seen:
                break
            if self.process.poll() is not None:
                raise AssertionError(f"the guest powered off before printing {pattern!r}; serial log: "
                                     f"{self.serial_path}\n{self.serial[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {pattern!r} on the serial console within {timeout:.0f} s; serial log: "
                                     f"{self.serial_path}\n{self.serial[-3000:]}")
            time.sleep(0.2)
        return self.seen[pattern]

    def wait_powered_off(self, timeout: float, watch: tuple[str, ...] = ()) -> float:
        """Wait for the guest to power itself off (noting when each `watch` pattern appeared); seconds it ran."""
        deadline = time.monotonic() + timeout
        while self.process.poll() is None:
            self.note(watch)
            if time.monotonic() > deadline:
                self.power_cut()
                raise AssertionError(f"the guest did not power off within {timeout:.0f} s (killed); serial log: "
                                     f"{self.serial_path}\n{self.serial[-3000:]}")
            time.sleep(0.2)
        self.note(watch)
        self._ended()
        return self.elapsed()

    def power_cut(self) -> None:
        """Pull the plug: SIGKILL, no shutdown, nothing flushed."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)
        self._ended()

    def _ended(self) -> None:
        if self.ended is None:
            self.ended = time.monotonic()
            self.stderr.close()

    def note(self, patterns) -> None:
        """Record in `seen` when each of `patterns` first appeared on the console (as of now: call it often)."""
        pending = [p for p in patterns if p not in self.seen]
        if pending:
            text = self.serial
            now = time.monotonic() - self.started
            for pattern in pending:
                if pattern in text:
                    self.seen[pattern] = now
