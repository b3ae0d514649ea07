"""The DEVICE of `pi-image flash`: what it is, and whether writing to it could destroy something.

Everything is read from sysfs and procfs the way lsblk and findmnt read them, never by opening the device:
- a block device's number (`os.stat(path).st_rdev`) leads to `/sys/dev/block/MAJ:MIN`, the kernel's entry for it:
  its size (512-byte sectors), removable flag, partitions (sub-entries with a `partition` file), holders (LVM,
  dm-crypt, md stacked on it), and the device path it hangs from (`.../usb2/...`, `.../mmc_host/...`) that tells
  the transport;
- mounts come from `/proc/self/mountinfo` (field 3 is the filesystem's MAJ:MIN; the source device too, since btrfs
  reports an anonymous 0:N there), swap from `/proc/swaps`;
- the running system lives on the devices behind /, /boot, /boot/efi, /boot/firmware, /efi, /usr, /var and swap,
  followed through device-mapper and md slaves down to whole disks: each of them is refused, even with --force.

A regular file (or a path that does not exist yet) is always a valid target, for tests and VM disks, unless it is
the image itself or backs a loop device that is in use; a loop device, a file under another name, needs no --force.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from stat import S_ISBLK, S_ISCHR, S_ISDIR, S_ISREG

from ..errors import UserError
from ..progress import human_size

SECTOR = 512  # sysfs counts sizes in 512-byte sectors whatever the device's own sector size
SYSTEM_MOUNTS = ("/", "/boot", "/boot/efi", "/boot/firmware", "/efi", "/usr", "/var")
REMOVABLE_TRANSPORTS = ("usb", "mmc")  # USB SSDs and SD readers often report removable 0
_TRANSPORTS = ((re.compile(r"usb\d+"), "usb"), (re.compile(r"mmc_host"), "mmc"), (re.compile(r"nvme"), "nvme"),
               (re.compile(r"ata\d+"), "sata"), (re.compile(r"virtio\d+"), "virtio"))  # the first match wins
_HEX_ID = re.compile(r"0x[0-9a-fA-F]+")  # virtio's device/vendor is a PCI id, not a name
_ESCAPE = re.compile(r"\\([0-7]{3})")  # mountinfo and swaps write space, tab, newline and backslash in octal
_ATTRIBUTE_LIMIT = 4096  # a sysfs attribute is at most a page
_TABLE_LIMIT = 1 << 26  # /proc/self/mountinfo of a busy container host runs to megabytes; never cut it short

Stat = Callable[[Path], os.stat_result]


@dataclass(frozen=True)
class Device:
    """A flash target as the user named it, described from sysfs (block devices) or the file system (files)."""

    path: Path  # as the user named it; messages use it
    kind: str  # "file" (regular or not yet existing) | "block" (a whole disk)
    size: int  # bytes; a file's current size, 0 if new
    name: str | None = None  # kernel name, e.g. "sdb" (block only)
    model: str | None = None  # vendor and model from sysfs
    transport: str | None = None  # "usb" | "mmc" | "nvme" | "sata" | "virtio" | None
    removable: bool = False  # sysfs removable, or on a usb/mmc transport
    partitions: tuple[str, ...] = ()  # kernel names of its partitions, in partition order

    def describe(self) -> str:
        """One line for the confirmation prompt: `/dev/sdb: SanDisk Ultra, 59.5 GiB, usb, removable, 2 partitions
        (sdb1, sdb2)`."""
        if self.kind == "file":
            return f"{self.path}: " + (f"file, {human_size(self.size)}" if self.path.exists() else "new file")
        count = len(self.partitions)
        held = (f"{count} partition{'s' if count > 1 else ''} ({', '.join(self.partitions)})" if count
                else "no partitions")
        facts = [self.model, human_size(self.size), self.transport,
                 "removable" if self.removable else "not removable", held]
        return f"{self.path}: " + ", ".join(fact for fact in facts if fact)


def open_target(path: Path, *, sysfs: Path = Path("/sys"), dev: Path = Path("/dev"), stat: Stat = os.stat) -> Device:
    """Describe the DEVICE the user named, or raise UserError if it cannot be a flash target at all: a directory,
    a character device or other special file, a missing device node, a partition, a file in a missing directory.
    `stat` is the seam for tests (a block device node cannot be made without root)."""
    try:
        info = stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return _new_file(path, dev)
    except OSError as error:
        raise UserError(f"{path}: cannot look at it ({error.strerror}): check the path and your permissions") from None
    if S_ISREG(info.st_mode):
        if _in_dev(path, dev):
            raise UserError(f"{path} is a regular file in {dev}, not a device (left by an earlier copy to a missing "
                            f"device?): remove it, plug in the card and name the disk (`lsblk` lists disks)")
        return Device(path=path, kind="file", size=info.st_size)
    if S_ISBLK(info.st_mode):
        return _block_device(path, os.major(info.st_rdev), os.minor(info.st_rdev), sysfs, dev)
    what = "a directory" if S_ISDIR(info.st_mode) else "a character device" if S_ISCHR(info.st_mode) else \
        "a special file"
    raise UserError(f"{path} is {what}, not a disk or an image file: name a whole disk such as /dev/sdb "
                    f"(`lsblk` lists disks) or a regular file")


def check_target(device: Device, image_size: int, *, force: bool, image: Path | None = None,
                 sysfs: Path = Path("/sys"), proc: Path = Path("/proc"), dev: Path = Path("/dev")) -> None:
    """Raise UserError if writing `image_size` bytes (of `image`, if given) to `device` could destroy something:
    the image itself, the running system's disk (even with `force`), a mounted, swapped-on or held disk or
    partition, a disk that looks internal (unless `force`; a loop device never does), a disk smaller than the
    image. `image` is optional: without it, only a file that is the image itself can get through."""
    if image is not None and _same_file(image, device.path):
        raise UserError(f"{device.path} is the image itself: name another device or output file")
    if device.kind == "file":
        for loop in _loops_backed_by(device.path, sysfs):
            _refuse_in_use(loop, f"{device.path} backs {dev / loop}, and ", sysfs, proc, dev)
        return
    assert device.name is not None
    system = _system_devices(sysfs, proc, dev)
    if device.name in system:
        raise UserError(f"{device.path} holds the running system ({system[device.name]}): "
                        f"refused even with --force; name the card's disk (`lsblk` lists disks)")
    _refuse_in_use(device.name, "", sysfs, proc, dev)
    if not device.removable and not force and not (sysfs / "class" / "block" / device.name / "loop").is_dir():
        raise UserError(f"{device.path} looks like an internal disk (removable 0, transport "
                        f"{device.transport or 'unknown'}): pass --force if it really is the card")
    if device.size == 0:
        raise UserError(f"{device.path} holds no medium (size 0): insert the card and try again")
    if device.size < image_size:
        needs, holds = human_size(image_size), human_size(device.size)
        if needs == holds:
            needs, holds = f"{image_size} bytes", f"{device.size} bytes"
        raise UserError(f"the image needs {needs}, {device.path} holds {holds}: use a larger card")


# --- naming the target ------------------------------------------------------------------------------------------

def _new_file(path: Path, dev: Path) -> Device:
    """A path that does not exist: a file the flash creates, unless it names a device or its directory is missing."""
    if _in_dev(path, dev):
        raise UserError(f"{path}: no such device: is the card reader plugged in? `lsblk` lists disks")
    if os.path.islink(path):
        raise UserError(f"{path} is a broken symbolic link (to {os.readlink(path)}): remove it or name its target")
    if not path.parent.is_dir():
        raise UserError(f"{path}: directory {path.parent} does not exist: create it or check the path")
    return Device(path=path, kind="file", size=0)


def _in_dev(path: Path, dev: Path) -> bool:
    """Whether `path` is in the device directory (its tmpfs `shm` excepted, a place for scratch files)."""
    try:
        inside = Path(os.path.abspath(path)).relative_to(dev)
    except ValueError:
        return False
    return inside.parts[:1] != ("shm",)


def _block_device(path: Path, major: int, minor: int, sysfs: Path, dev: Path) -> Device:
    link = sysfs / "dev" / "block" / f"{major}:{minor}"
    if not link.exists():
        raise UserError(f"{path}: block device {major}:{minor} has no entry {link}: is sysfs mounted (`mount -t "
                        f"sysfs sysfs /sys`)?")
    entry = link.resolve()
    if (entry / "partition").exists():
        disk = dev / entry.parent.name
        raise UserError(f"{path} is partition {_read(entry / 'partition')} of {disk}: name the whole disk {disk}")
    transport = _transport(entry)
    return Device(path=path, kind="block", size=int(_read(entry / "size") or 0) * SECTOR, name=entry.name,
                  model=_model(entry), transport=transport,
                  removable=_read(entry / "removable") == "1" or transport in REMOVABLE_TRANSPORTS,
                  partitions=tuple(_partitions(entry)))


def _transport(entry: Path) -> str | None:
    """The bus the disk hangs from, read from its sysfs device path (as lsblk's TRAN names it)."""
    for pattern, transport in _TRANSPORTS:
        if any(pattern.fullmatch(part) for part in entry.parts):
            return transport
    return None


def _model(entry: Path) -> str | None:
    """Vendor and model (SCSI, USB, NVMe) or the card's name (MMC)."""
    words = [_read(entry / "device" / key) for key in ("vendor", "model", "name")]
    kept = [word for word in words if word and not _HEX_ID.fullmatch(word)]
    return " ".join(kept) or None


def _partitions(entry: Path) -> list[str]:
    numbered = [(int(_read(child / "partition") or 0), child.name) for child in entry.iterdir()
                if (child / "partition").is_file()]
    return [name for _, name in sorted(numbered)]


def _read(path: Path, limit: int = _ATTRIBUTE_LIMIT) -> str | None:
    """A sysfs attribute or a procfs table, stripped; None if absent."""
    try:
        with open(path, "rb") as file:
            return file.read(limit).decode("utf-8", "replace").strip()
    except OSError:
        return None


# --- what uses a disk -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Mount:
    number: str  # MAJ:MIN of the mounted filesystem
    point: str
    source: str


def _mounts(proc: Path) -> Iterator[_Mount]:
    """The mounts of this mount namespace (`id parent MAJ:MIN root point options [tags] - type source ...`); with
    no way to tell what is mounted, nothing is safe to write."""
    mountinfo = proc / "self" / "mountinfo"
    text = _read(mountinfo, _TABLE_LIMIT)
    if text is None:
        raise UserError(f"cannot read {mountinfo}, so what is mounted is unknown: mount procfs "
                        f"(`mount -t proc proc {proc}`) and try again")
    for line in text.splitlines():
        fields = line.split(" ")
        if "-" not in fields[6:]:
            continue
        after = fields.index("-", 6) + 1
        yield _Mount(fields[2], _unescape(fields[4]), _unescape(fields[after + 1]) if len(fields) > after + 1 else "")


def _swaps(proc: Path) -> list[str]:
    """The files and devices swapped on, as /proc/swaps names them."""
    lines = (_read(proc / "swaps", _TABLE_LIMIT) or "").splitlines()[1:]
    return [_unescape(line.split()[0]) for line in lines if line.split()]


def _unescape(text: str) -> str:
    return _ESCAPE.sub(lambda match: chr(int(match[1], 8)), text)


def _kernel_names(source: str, number: str | None, sysfs: Path, dev: Path) -> set[str]:
    """The block devices a mount or swap source names: its MAJ:MIN, and its /dev path followed through symlinks."""
    names = set()
    if number:
        link = sysfs / "dev" / "block" / number
        if link.exists():
            names.add(link.resolve().name)
    if source.startswith("/dev/"):
        name = Path(os.path.realpath(dev / source[len("/dev/"):])).name
        if (sysfs / "class" / "block" / name).exists():
            names.add(name)
    return names


def _swap_names(source: str, sysfs: Path, dev: Path) -> set[str]:
    """A swap partition's device, or the device whose filesystem holds a swap file."""
    number = None
    if not source.startswith("/dev/"):
        try:
            st_dev = os.stat(source).st_dev
            number = f"{os.major(st_dev)}:{os.minor(st_dev)}"
        except OSError:
            pass
    return _kernel_names(source, number, sysfs, dev)


def _stack_under(name: str, sysfs: Path, seen: frozenset[str] = frozenset()) -> set[str]:
    """Block device `name` and every device it lives on, down to whole disks: a partition's disk, a dm or md
    device's slaves (so an LVM volume, its physical volume's partition and that disk are all found)."""
    entry = sysfs / "class" / "block" / name
    if name in seen or not entry.exists():
        return set()
    entry, seen = entry.resolve(), seen | {name}
    below = [entry.parent.name] if (entry / "partition").exists() else \
        [slave.name for slave in (entry / "slaves").glob("*")]
    return {name}.union(*(_stack_under(lower, sysfs, seen) for lower in below))


def _system_devices(sysfs: Path, proc: Path, dev: Path) -> dict[str, str]:
    """The block devices the running system lives on (disks, partitions, dm and md devices), each with what lives
    there (`/ is on /dev/nvme0n1p2`)."""
    system: dict[str, str] = {}
    for mount in _mounts(proc):
        if mount.point in SYSTEM_MOUNTS:
            for name in sorted(_kernel_names(mount.source, mount.number, sysfs, dev)):
                for disk in _stack_under(name, sysfs):
                    system.setdefault(disk, f"{mount.point} is on {dev / name}")
    for swap in _swaps(proc):
        for name in sorted(_swap_names(swap, sysfs, dev)):
            for disk in _stack_under(name, sysfs):
                system.setdefault(disk, f"swap {swap} is on {dev / name}")
    return system


def _refuse_in_use(disk: str, prefix: str, sysfs: Path, proc: Path, dev: Path) -> None:
    """Raise UserError if disk `disk` or one of its partitions is mounted, swapped on or held by another device;
    `prefix` leads the message when the user named something else (a loop device's backing file)."""
    names = [disk, *_partitions((sysfs / "class" / "block" / disk).resolve())]
    numbers = {_read(sysfs / "class" / "block" / name / "dev"): name for name in names}
    for mount in _mounts(proc):
        used = _kernel_names(mount.source, None, sysfs, dev) | {numbers.get(mount.number)}
        for name in (name for name in names if name in used):
            raise UserError(f"{prefix}{dev / name} is mounted at {mount.point}: unmount it first "
                            f"(`umount {dev / name}`)")
    for swap in _swaps(proc):
        swapped = _swap_names(swap, sysfs, dev)
        for name in (name for name in names if name in swapped):
            raise UserError(f"{prefix}{dev / name} is in use as swap: turn it off first (`swapoff {swap}`)")
    for name in names:
        holders = sorted(path.name for path in (sysfs / "class" / "block" / name / "holders").glob("*"))
        if holders:
            held_by = ", ".join(_holder_label(holder, sysfs, dev) for holder in holders)
            raise UserError(f"{prefix}{dev / name} is held by {held_by} (device-mapper, LVM, dm-crypt or RAID): "
                            f"stop it first (`lsblk {dev / disk}` shows the stack)")


def _holder_label(holder: str, sysfs: Path, dev: Path) -> str:
    mapped = _read(sysfs / "class" / "block" / holder / "dm" / "name")
    return f"{dev / holder} ({dev / 'mapper' / mapped})" if mapped else str(dev / holder)


def _loops_backed_by(path: Path, sysfs: Path) -> list[str]:
    """The loop devices whose backing file is `path`."""
    try:
        real = os.path.realpath(path)
        return sorted(entry.name for entry in (sysfs / "block").glob("loop*")
                      if _read(entry / "loop" / "backing_file") == real)
    except OSError:
        return []


def _same_file(first: Path, second: Path) -> bool:
    try:
        return os.path.samestat(os.stat(first), os.stat(second))
    except OSError:
        return False
