"""A real root filesystem for the boot test: Debian bookworm amd64 from debootstrap, dressed as Ubuntu 22.04 raspi.

amd64 because it boots fast under TCG emulation; Debian because this machine's mirror serves it. The tree is cached
under $PI_IMAGE_SYSTEM_CACHE (default ~/.cache/pi-image/system) in a directory named after a hash of everything that
makes it (suite, package list, the files of guest/ubuntu/, PREPARE_REVISION), so a machine pays for debootstrap once.
Needs root (debootstrap, chroot).
"""

from __future__ import annotations

import fcntl
import glob
import hashlib
import json
import os
import re
import shutil
import time
from pathlib import Path

from builder.run import run

SUITE = "bookworm"
VARIANT = "minbase"
# No procps (no `sysctl` binary: the agent must not need one), no container runtime (the agent installs it), but
# systemd-timesyncd (a Pi's clock comes from NTP) and cloud-init + netplan.io (how Ubuntu raspi applies its seed;
# python3-cffi-backend: debootstrap does not resolve the virtual package python3-cryptography needs).
PACKAGES = ("systemd", "systemd-sysv", "systemd-timesyncd", "udev", "python3", "iproute2", "kmod", "e2fsprogs",
            "dosfstools", "linux-image-amd64", "initramfs-tools", "cloud-init", "python3-cffi-backend", "netplan.io")
DEFAULT_MIRROR = "http://deb.debian.org/debian"
UBUNTU_FILES = Path(__file__).parent / "guest" / "ubuntu"
# Bump when prepare() changes in a way the files of guest/ubuntu/ do not show.
PREPARE_REVISION = 1

# Nothing a headless VM needs: package caches, documentation, and kernel modules for hardware QEMU does not have.
PRUNE = ("var/cache/apt/archives/*.deb", "var/lib/apt/lists/*_*", "usr/share/doc/*", "usr/share/man/*",
         "usr/share/locale/*", "usr/lib/modules/*/kernel/sound", "usr/lib/modules/*/kernel/drivers/gpu",
         "usr/lib/modules/*/kernel/drivers/media", "usr/lib/modules/*/kernel/drivers/net/wireless",
         "usr/lib/modules/*/kernel/drivers/infiniband", "usr/lib/modules/*/kernel/drivers/staging")
ENABLE = ("systemd-networkd.service", "systemd-networkd-wait-online.service")
# Debian's first-boot wizard would prompt on the console of an image with an empty machine-id; Ubuntu's does not.
MASK = ("systemd-firstboot.service",)


def cache_dir() -> Path:
    return Path(os.environ.get("PI_IMAGE_SYSTEM_CACHE", "~/.cache/pi-image/system")).expanduser()


def debian_mirror() -> str:
    """$PI_IMAGE_DEBIAN_MIRROR, else the Debian archive this machine's apt uses, else deb.debian.org."""
    if os.environ.get("PI_IMAGE_DEBIAN_MIRROR"):
        return os.environ["PI_IMAGE_DEBIAN_MIRROR"]
    sources = sorted(glob.glob("/etc/apt/sources.list.d/*")) + ["/etc/apt/sources.list"]
    for path in sources:
        try:
            text = Path(path).read_text()
        except OSError:
            continue
        for match in re.finditer(r"^\s*(?:deb\s+(?:\[[^]]*\]\s+)?|URIs:\s*)(\S+)", text, re.MULTILINE):
            uri = match.group(1).rstrip("/")
            if uri.startswith("http") and uri.endswith("/debian"):
                return uri
    return DEFAULT_MIRROR


def rootfs_key() -> str:
    """Hash of everything that decides the cached tree's content."""
    digest = hashlib.sha256(json.dumps([SUITE, VARIANT, PACKAGES, PRUNE, ENABLE, MASK, PREPARE_REVISION]).encode())
    for path in sorted(p for p in UBUNTU_FILES.rglob("*") if p.is_file()):
        digest.update(path.relative_to(UBUNTU_FILES).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def cached_rootfs(log=print) -> Path:
    """The prepared tree (made now if this machine has none for the current key). Read-only for callers."""
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    key = rootfs_key()
    dest = cache / f"rootfs-{key}"
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if dest.is_dir():
            return dest
        work = cache / f".rootfs-{key}.tmp"
        if work.exists():
            shutil.rmtree(work)
        mirror = debian_mirror()
        log(f"system test: debootstrap {SUITE} from {mirror} into {work} (once per machine)")
        started = time.monotonic()
        run(["debootstrap", f"--variant={VARIANT}", f"--include={','.join(PACKAGES)}", SUITE, str(work), mirror])
        debootstrap_seconds = time.monotonic() - started
        prepare(work)
        os.replace(work, dest)
        for stale in cache.glob("rootfs-*"):  # trees for an older package list or preparation
            if stale.name not in (dest.name, _facts_path(dest).name):
                shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
        _facts_path(dest).write_text(json.dumps({
            "key": key, "mirror": mirror, "suite": SUITE, "packages": PACKAGES,
            "debootstrap_seconds": round(debootstrap_seconds, 1),
            "total_seconds": round(time.monotonic() - started, 1)}, indent=2) + "\n")
        return dest


def rootfs_facts(root: Path) -> dict:
    """What cached_rootfs() recorded when it made `root` (timings, mirror), beside it."""
    path = _facts_path(root)
    return json.loads(path.read_text()) if path.exists() else {}


def _facts_path(root: Path) -> Path:
    return root.with_name(root.name + ".json")


def prepare(root: Path) -> None:
    """Ubuntu's os-release, fstab and empty machine-id; DHCP on every NIC; a small initramfs for virtio."""
    for pattern in PRUNE:
        for path in glob.glob(str(root / pattern)):
            shutil.rmtree(path) if os.path.isdir(path) and not os.path.islink(path) else os.unlink(path)
    for source in sorted(UBUNTU_FILES.rglob("*")):
        if source.is_file():
            target = root / source.relative_to(UBUNTU_FILES)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.unlink(missing_ok=True)
            shutil.copyfile(source, target)
    (root / "etc/machine-id").write_text("")
    (root / "boot/firmware").mkdir(exist_ok=True)
    run(["chroot", str(root), "systemctl", "enable", *ENABLE])
    run(["chroot", str(root), "systemctl", "mask", *MASK])
    for release in os.listdir(root / "usr/lib/modules"):
        run(["chroot", str(root), "depmod", "-a", release])
    run(["chroot", str(root), "update-initramfs", "-u", "-k", "all"])
