"""The flash target: disks described from sysfs, and every dangerous one refused before a byte is written.

Block devices live in a fake /sys, /proc and /dev under tmp_path laid out as the kernel lays them out (entries under
/sys/devices, linked from /sys/block, /sys/class/block and /sys/dev/block); since a block device node cannot be made
without root, their `os.stat` results are injected through `open_target`'s `stat` seam. Files are real files.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from builder.cards.devices import Device, check_target, open_target
from builder.errors import UserError
from builder.run import run

GIB = 1 << 30
USB = "pci0000:00/0000:00:14.0/usb2/2-1/2-1:1.0/host6/target6:0:0/6:0:0:0"
SD = "platform/emmc2bus/fe340000.mmc/mmc_host/mmc0/mmc0:aaaa"
SATA = "pci0000:00/0000:00:17.0/ata1/host0/target0:0:0/0:0:0:0"
SATA2 = "pci0000:00/0000:00:17.0/ata2/host1/target1:0:0/1:0:0:0"
NVME = "pci0000:00/0000:00:1d.0/0000:3d:00.0/nvme/nvme0"


class FakeSystem:
    """A machine's /sys, /proc and /dev under `root`, and the stat results of its device nodes."""

    def __init__(self, root: Path) -> None:
        self.sys, self.proc, self.dev = root / "sys", root / "proc", root / "dev"
        for directory in (self.sys / "block", self.sys / "class" / "block", self.sys / "dev" / "block",
                          self.proc / "self", self.dev):
            directory.mkdir(parents=True)
        self.nodes: dict[str, os.stat_result] = {}
        self.mountinfo: list[str] = []
        self.swaps: list[str] = []
        self.mount("0:22", "/sys", "sysfs", "sysfs")

    def disk(self, name: str, number: str, gib: float, *, under: str | None = None, removable: int = 0,
             attributes: dict[str, str] | None = None, partitions: tuple[str, ...] = ()) -> Path:
        """A whole disk `name` (MAJ:MIN `number`) hanging from sysfs device `under` (None: a virtual device), with
        the device's own attributes (vendor, model, name) and partitions numbered on from `number`'s minor."""
        if under is None:
            entry = self.sys / "devices" / "virtual" / "block" / name
        elif under.endswith("/nvme0"):
            entry = self.sys / "devices" / under / name
        else:
            entry = self.sys / "devices" / under / "block" / name
        self._entry(entry, name, number, int(gib * 2 ** 21))
        (entry / "removable").write_text(f"{removable}\n")
        (self.sys / "block" / name).symlink_to(entry)
        if under is not None:
            device = entry.parent.parent if entry.parent.name == "block" else entry.parent
            for key, value in (attributes or {}).items():
                (device / key).write_text(value + "\n")
            (entry / "device").symlink_to(device)
        major, minor = (int(part) for part in number.split(":"))
        for index, partition in enumerate(partitions, start=1):
            self._entry(entry / partition, partition, f"{major}:{minor + index}", 2 ** 20)
            (entry / partition / "partition").write_text(f"{index}\n")
        return entry

    def _entry(self, entry: Path, name: str, number: str, sectors: int) -> None:
        for directory in ("holders", "slaves"):
            (entry / directory).mkdir(parents=True)
        (entry / "dev").write_text(number + "\n")
        (entry / "size").write_text(f"{sectors}\n")
        (self.sys / "class" / "block" / name).symlink_to(entry)
        (self.sys / "dev" / "block" / number).symlink_to(entry)
        major, minor = (int(part) for part in number.split(":"))
        self.nodes[f"/dev/{name}"] = os.stat_result((stat.S_IFBLK | 0o660, 0, 6, 1, 0, 6, 0, 0, 0, 0),
                                                    {"st_rdev": os.makedev(major, minor)})

    def stack(self, holder: str, number: str, slaves: tuple[str, ...], mapped: str | None = None) -> None:
        """A device `holder` built on `slaves`: device-mapper (dm-crypt, LVM) named `mapped` in /dev/mapper, or md."""
        entry = self.disk(holder, number, 1)
        if mapped is not None:
            (entry / "dm").mkdir()
            (entry / "dm" / "name").write_text(mapped + "\n")
        for slave in slaves:
            slave_entry = (self.sys / "class" / "block" / slave).resolve()
            (entry / "slaves" / slave).symlink_to(slave_entry)
            (slave_entry / "holders" / holder).symlink_to(entry)

    def mount(self, number: str, point: str, source: str, fstype: str = "ext4") -> None:
        point = point.replace(" ", "\\040")
        self.mountinfo.append(f"{len(self.mountinfo) + 20} 1 {number} / {point} rw,relatime shared:1 - {fstype} "
                              f"{source} rw")
        (self.proc / "self" / "mountinfo").write_text("\n".join(self.mountinfo) + "\n")

    def swap(self, source: str) -> None:
        self.swaps.append(f"{source}\t\t\t\tpartition\t8388604\t\t0\t\t-2")
        (self.proc / "swaps").write_text("Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n"
                                         + "\n".join(self.swaps) + "\n")

    def stat(self, path: Path) -> os.stat_result:
        """`os.stat`, with this machine's device nodes answered from its table (links in its own /dev followed)."""
        name = os.path.realpath(path)
        if Path(name).is_relative_to(self.dev.resolve()):
            name = "/dev/" + Path(name).relative_to(self.dev.resolve()).as_posix()
        return self.nodes[name] if name in self.nodes else os.stat(path)

    def open(self, path: str) -> Device:
        return open_target(Path(path), sysfs=self.sys, stat=self.stat)

    def check(self, device: Device, image_size: int = GIB, *, force: bool = False) -> None:
        check_target(device, image_size, force=force, sysfs=self.sys, proc=self.proc)


@pytest.fixture
def machine(tmp_path: Path) -> FakeSystem:
    """A laptop booted from NVMe (/, /boot/efi and swap on nvme0n1) with a SATA disk whose second partition is
    LUKS-encrypted under /var, a USB stick sdb (removable 0, as many report) and an SD card in the Pi's slot."""
    fake = FakeSystem(tmp_path)
    fake.disk("nvme0n1", "259:0", 476.9, under=NVME, attributes={"model": "Samsung SSD 970 EVO Plus 512GB"},
              partitions=("nvme0n1p1", "nvme0n1p2", "nvme0n1p3"))
    fake.disk("sda", "8:0", 931.5, under=SATA, attributes={"vendor": "ATA", "model": "WDC WD10EZEX-08W"},
              partitions=("sda1", "sda2"))
    fake.stack("dm-0", "253:0", ("sda2",), "luks-var")
    fake.disk("sdb", "8:16", 59.5, under=USB, attributes={"vendor": "SanDisk ", "model": "Ultra           "},
              partitions=("sdb1", "sdb2"))
    fake.disk("mmcblk0", "179:0", 29.7, under=SD, attributes={"name": "SC32G"}, partitions=("mmcblk0p1",))
    fake.mount("259:2", "/", "/dev/nvme0n1p2")
    fake.mount("259:1", "/boot/efi", "/dev/nvme0n1p1", "vfat")
    fake.mount("253:0", "/var", "/dev/mapper/luks-var")
    fake.swap("/dev/nvme0n1p3")
    return fake


def refusal(call: Callable[..., object], *args: object, **kwargs: object) -> str:
    """The one-line message of the UserError that `call` raises."""
    with pytest.raises(UserError) as caught:
        call(*args, **kwargs)
    message = str(caught.value)
    assert "\n" not in message
    return message


# --- describing disks --------------------------------------------------------------------------------------------

def test_a_usb_stick_reporting_removable_0_is_described_as_removable(machine: FakeSystem):
    stick = machine.open("/dev/sdb")
    assert stick == Device(path=Path("/dev/sdb"), kind="block", size=int(59.5 * GIB), name="sdb",
                           model="SanDisk Ultra", transport="usb", removable=True, partitions=("sdb1", "sdb2"))
    assert stick.describe() == "/dev/sdb: SanDisk Ultra, 59.5 GiB, usb, removable, 2 partitions (sdb1, sdb2)"
    machine.check(stick, 4 * GIB)


def test_an_sd_card_is_named_by_its_card_name_on_the_mmc_transport(machine: FakeSystem):
    card = machine.open("/dev/mmcblk0")
    assert (card.name, card.model, card.transport, card.removable) == ("mmcblk0", "SC32G", "mmc", True)
    assert card.describe() == "/dev/mmcblk0: SC32G, 29.7 GiB, mmc, removable, 1 partition (mmcblk0p1)"
    machine.check(card, 4 * GIB)


def test_a_card_named_through_a_by_id_link_keeps_that_name(machine: FakeSystem):
    link = machine.dev / "disk" / "by-id" / "usb-SanDisk_Ultra_4C53-0:0"
    link.parent.mkdir(parents=True)
    link.symlink_to("../../sdb")
    card = open_target(link, sysfs=machine.sys, dev=machine.dev, stat=machine.stat)
    assert (card.path, card.name) == (link, "sdb")
    assert card.describe().startswith(f"{link}: SanDisk Ultra, 59.5 GiB")


def test_partitions_are_listed_in_partition_order_not_name_order(tmp_path: Path):
    fake = FakeSystem(tmp_path)
    names = tuple(f"sdb{index}" for index in range(1, 12))
    fake.disk("sdb", "8:16", 8, under=USB, partitions=names)
    assert fake.open("/dev/sdb").partitions == names


def test_a_card_without_partitions_says_so(tmp_path: Path):
    fake = FakeSystem(tmp_path)
    fake.disk("sdb", "8:16", 2, under=USB, removable=1)
    assert fake.open("/dev/sdb").describe() == "/dev/sdb: 2.0 GiB, usb, removable, no partitions"


# --- names that cannot be a target -------------------------------------------------------------------------------

@pytest.mark.parametrize(("partition", "disk"), [("/dev/sdb1", "/dev/sdb"), ("/dev/mmcblk0p1", "/dev/mmcblk0")])
def test_a_partition_is_refused_with_its_whole_disk_named(machine: FakeSystem, partition: str, disk: str):
    assert refusal(machine.open, partition) == f"{partition} is partition 1 of {disk}: name the whole disk {disk}"


def test_a_missing_device_node_asks_whether_the_reader_is_plugged_in(tmp_path: Path):
    dev = tmp_path / "dev"
    dev.mkdir()
    message = refusal(open_target, dev / "sdz", dev=dev)
    assert message == f"{dev}/sdz: no such device: is the card reader plugged in? `lsblk` lists disks"
    assert "no such device" in refusal(open_target, dev / "disk" / "by-id" / "usb-gone", dev=dev)


def test_a_regular_file_left_in_dev_by_a_copy_to_a_missing_device_is_refused(tmp_path: Path):
    dev = tmp_path / "dev"
    dev.mkdir()
    (dev / "sdb").write_bytes(b"\0" * 4096)
    assert "is a regular file in" in refusal(open_target, dev / "sdb", dev=dev)
    (dev / "shm").mkdir()
    assert open_target(dev / "shm" / "scratch.img", dev=dev).kind == "file"


def test_a_directory_and_a_character_device_are_refused(tmp_path: Path):
    assert refusal(open_target, tmp_path) == (f"{tmp_path} is a directory, not a disk or an image file: name a "
                                              "whole disk such as /dev/sdb (`lsblk` lists disks) or a regular file")
    assert "/dev/null is a character device, not a disk" in refusal(open_target, Path("/dev/null"))


def test_a_new_file_needs_an_existing_directory(tmp_path: Path):
    new = open_target(tmp_path / "card.img")
    assert new == Device(path=tmp_path / "card.img", kind="file", size=0)
    assert new.describe() == f"{tmp_path}/card.img: new file"
    check_target(new, 4 * GIB, force=False)
    assert refusal(open_target, tmp_path / "missing" / "card.img") == (
        f"{tmp_path}/missing/card.img: directory {tmp_path}/missing does not exist: create it or check the path")
    (tmp_path / "plain").write_text("x")
    assert "does not exist" in refusal(open_target, tmp_path / "plain" / "card.img")


def test_a_broken_symbolic_link_is_not_silently_followed_into_a_new_file(tmp_path: Path):
    (tmp_path / "card.img").symlink_to(tmp_path / "elsewhere" / "x.img")
    assert "is a broken symbolic link" in refusal(open_target, tmp_path / "card.img")


def test_an_existing_file_of_any_size_is_a_target_but_never_the_image_itself(tmp_path: Path):
    image, disk = tmp_path / "node.img", tmp_path / "vm-disk.img"
    image.write_bytes(b"i" * 8192)
    disk.write_bytes(b"d" * 4096)
    target = open_target(disk)
    assert (target.kind, target.size, target.describe()) == ("file", 4096, f"{disk}: file, 4.0 KiB")
    check_target(target, 8192, force=False, image=image)
    assert refusal(check_target, open_target(image), 8192, force=False, image=image) == (
        f"{image} is the image itself: name another device or output file")
    os.link(image, tmp_path / "hardlink.img")
    assert "is the image itself" in refusal(check_target, open_target(tmp_path / "hardlink.img"), 8192,
                                            force=False, image=image)


def test_a_file_backing_a_loop_device_in_use_is_refused(tmp_path: Path):
    fake = FakeSystem(tmp_path / "machine")
    mounted, swapped = tmp_path / "mounted.img", tmp_path / "swap.img"
    for index, backing in enumerate((mounted, swapped)):
        backing.write_bytes(b"\0" * 4096)
        entry = fake.disk(f"loop{index}", f"7:{index * 8}", 1, partitions=(f"loop{index}p1",))
        (entry / "loop").mkdir()
        (entry / "loop" / "backing_file").write_text(f"{backing}\n")
        fake.check(open_target(backing))
    fake.mount("259:5", "/mnt/a b", "/dev/loop0p1")  # loop partitions' numbers vary: found by source too
    fake.swap("/dev/loop1")
    assert refusal(fake.check, open_target(mounted)) == (
        f"{mounted} backs /dev/loop0, and /dev/loop0p1 is mounted at /mnt/a b: unmount it first "
        "(`umount /dev/loop0p1`)")
    assert refusal(fake.check, open_target(swapped)) == (
        f"{swapped} backs /dev/loop1, and /dev/loop1 is in use as swap: turn it off first (`swapoff /dev/loop1`)")


# --- disks that must not be written ------------------------------------------------------------------------------

def test_the_nvme_disk_holding_root_is_refused_even_with_force(machine: FakeSystem):
    system = machine.open("/dev/nvme0n1")
    assert (system.model, system.transport, system.removable) == ("Samsung SSD 970 EVO Plus 512GB", "nvme", False)
    assert refusal(machine.check, system, force=True) == (
        "/dev/nvme0n1 holds the running system (/ is on /dev/nvme0n1p2): refused even with --force; name the "
        "card's disk (`lsblk` lists disks)")


def test_a_disk_behind_a_device_mapper_system_mount_is_the_system_disk(machine: FakeSystem):
    disk = machine.open("/dev/sda")
    assert (disk.model, disk.transport) == ("ATA WDC WD10EZEX-08W", "sata")
    assert "/dev/sda holds the running system (/var is on /dev/dm-0)" in refusal(machine.check, disk, force=True)
    assert "/dev/dm-0 holds the running system (/var is on /dev/dm-0)" in refusal(
        machine.check, machine.open("/dev/dm-0"), force=True)


def test_an_lvm_volume_on_a_raid_of_two_disks_refuses_every_layer(tmp_path: Path):
    fake = FakeSystem(tmp_path)
    for name, number, under in (("sdc", "8:32", SATA), ("sdd", "8:48", SATA2)):
        fake.disk(name, number, 100, under=under, partitions=(f"{name}1",))
    fake.stack("md0", "9:0", ("sdc1", "sdd1"))
    fake.stack("dm-2", "253:2", ("md0",), "vg-root")
    fake.mount("253:2", "/", "/dev/mapper/vg-root")
    for name in ("sdc", "sdd", "md0", "dm-2"):
        assert "holds the running system (/ is on /dev/dm-2)" in refusal(fake.check, fake.open(f"/dev/{name}"),
                                                                         force=True)


def test_a_loop_device_is_a_file_under_another_name_and_needs_no_force(tmp_path: Path):
    fake = FakeSystem(tmp_path)
    (fake.disk("loop3", "7:24", 4, partitions=("loop3p1", "loop3p2")) / "loop").mkdir()
    loop = fake.open("/dev/loop3")
    assert loop.describe() == "/dev/loop3: 4.0 GiB, not removable, 2 partitions (loop3p1, loop3p2)"
    fake.check(loop, 4 * GIB)


def test_a_disk_holding_only_swap_is_the_system_disk(tmp_path: Path):
    fake = FakeSystem(tmp_path)
    fake.disk("sdc", "8:32", 16, under=USB, partitions=("sdc1",))
    fake.swap("/dev/sdc1")
    assert "(swap /dev/sdc1 is on" in refusal(fake.check, fake.open("/dev/sdc"), force=True)


def test_a_mounted_partition_is_named_with_its_mount_point_and_the_umount_command(machine: FakeSystem):
    for index in range(200):  # a container host's mount table, far longer than a sysfs attribute
        machine.mount(f"0:{100 + index}", f"/run/containerd/shm/{index:064x}", "shm", "tmpfs")
    machine.mount("8:17", "/media/me/system-boot", "/dev/sdb1", "vfat")
    assert refusal(machine.check, machine.open("/dev/sdb"), force=True) == (
        "/dev/sdb1 is mounted at /media/me/system-boot: unmount it first (`umount /dev/sdb1`)")


def test_a_btrfs_mount_is_found_by_its_source_device(machine: FakeSystem):
    machine.mount("0:45", "/media/me/data", "/dev/sdb2", "btrfs")  # btrfs reports an anonymous device number
    assert "sdb2 is mounted at /media/me/data" in refusal(machine.check, machine.open("/dev/sdb"))


def test_a_filesystem_on_the_whole_disk_counts_as_mounted(machine: FakeSystem):
    machine.mount("179:0", "/media/me/card", "/dev/mmcblk0", "vfat")
    assert "mmcblk0 is mounted at /media/me/card" in refusal(machine.check, machine.open("/dev/mmcblk0"))


def test_a_partition_held_by_dm_crypt_is_refused_and_the_mapping_named(machine: FakeSystem):
    machine.stack("dm-1", "253:1", ("sdb2",), "luks-stick")
    assert refusal(machine.check, machine.open("/dev/sdb"), force=True) == (
        "/dev/sdb2 is held by /dev/dm-1 (/dev/mapper/luks-stick) (device-mapper, LVM, "
        "dm-crypt or RAID): stop it first (`lsblk /dev/sdb` shows the stack)")


def test_nothing_is_written_when_the_mount_table_cannot_be_read(machine: FakeSystem):
    (machine.proc / "self" / "mountinfo").unlink()
    assert refusal(machine.check, machine.open("/dev/sdb")) == (
        f"cannot read {machine.proc}/self/mountinfo, so what is mounted is unknown: mount procfs "
        f"(`mount -t proc proc {machine.proc}`) and try again")


def test_an_internal_disk_needs_force(tmp_path: Path):
    fake = FakeSystem(tmp_path)
    fake.disk("sdc", "8:32", 238.5, under=SATA2, attributes={"vendor": "ATA", "model": "Samsung SSD 860"})
    disk = fake.open("/dev/sdc")
    assert disk.describe() == "/dev/sdc: ATA Samsung SSD 860, 238.5 GiB, sata, not removable, no partitions"
    assert refusal(fake.check, disk) == ("/dev/sdc looks like an internal disk (removable 0, transport sata): "
                                         "pass --force if it really is the card")
    fake.check(disk, force=True)


def test_a_virtio_disk_is_not_named_by_its_pci_vendor_id(tmp_path: Path):
    fake = FakeSystem(tmp_path)
    fake.disk("vdb", "254:16", 8, under="pci0000:00/0000:00:05.0/virtio3", attributes={"vendor": "0x1af4"})
    disk = fake.open("/dev/vdb")
    assert (disk.model, disk.transport, disk.removable) == (None, "virtio", False)
    assert "transport virtio" in refusal(fake.check, disk)


def test_a_card_smaller_than_the_image_is_refused(machine: FakeSystem):
    card = machine.open("/dev/mmcblk0")
    assert refusal(machine.check, card, 32 * GIB) == (
        "the image needs 32.0 GiB, /dev/mmcblk0 holds 29.7 GiB: use a larger card")
    assert f"needs {card.size + 512} bytes, /dev/mmcblk0 holds {card.size} bytes" in refusal(
        machine.check, card, card.size + 512)
    machine.check(card, card.size)


def test_a_reader_without_a_card_has_no_medium(tmp_path: Path):
    fake = FakeSystem(tmp_path)
    fake.disk("sdd", "8:48", 0, under=USB, attributes={"vendor": "Generic-", "model": "SD/MMC"})
    assert refusal(fake.check, fake.open("/dev/sdd")) == ("/dev/sdd holds no medium (size 0): insert the card "
                                                          "and try again")


# --- this machine ------------------------------------------------------------------------------------------------

def test_this_machines_root_disk_is_refused_as_the_system_disk():
    # a bind mount (a container, a chroot) names its source as "/dev/vda[/var/tmp/root]"
    source = run(["findmnt", "-no", "SOURCE", "/"], check=False).stdout.decode().strip().split("[")[0]
    if not source.startswith("/dev/") or not Path(source).exists() or not stat.S_ISBLK(os.stat(source).st_mode):
        pytest.skip(f"/ is on {source or 'nothing findmnt names'}, not a block device")
    disk = run(["lsblk", "-ndo", "PKNAME", source]).stdout.decode().strip()
    device = open_target(Path(f"/dev/{disk}") if disk else Path(source))
    assert device.kind == "block" and device.size > 0
    assert "holds the running system" in refusal(check_target, device, 0, force=True)
