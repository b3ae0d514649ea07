"""The sample images are what they claim to be: read back with independent tools only (sfdisk, blkid, e2fsck,
debugfs, fsck.vfat, mtools), never with pi-image's own readers."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import pytest
import yaml

from builder.errors import UserError
from builder.run import run
from builder.samples import SAMPLES, make_sample

SECTOR = 512
LINUX_FS = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
DISKS = [key for key in SAMPLES if key[0] != "l4t-rootfs"]
ALT = ("ubuntu-raspi", "24.04", "alt")
ALL_DISKS = [(t, r, "standard") for t, r in DISKS] + [ALT]


def ident(key: tuple) -> str:
    return "-".join(key)


# What the vendors' images look like: (number, start, size or None for "to the end", type, bootable).
RASPI_TABLES = {
    ("ubuntu-raspi", "20.04"): [(1, 2048, 524288, "c", True), (2, 526336, None, "83", False)],
    ("ubuntu-raspi", "22.04"): [(1, 2048, 524288, "c", True), (2, 526336, None, "83", False)],
    ("ubuntu-raspi", "24.04"): [(1, 2048, 1048576, "c", True), (2, 1050624, None, "83", False)],
    ("kali-raspi", "2024.2"): [(1, 2048, 522240, "c", False), (2, 524288, None, "83", False)],
    ("kali-raspi", "rolling"): [(1, 2048, 522240, "c", False), (2, 524288, None, "83", False)],
    ("raspios", "bookworm"): [(1, 8192, 1048576, "c", False), (2, 1056768, None, "83", False)],
    ("raspios", "trixie"): [(1, 8192, 1048576, "c", False), (2, 1056768, None, "83", False)],
    ("ubuntu-raspi", "24.04", "alt"): [(1, 8192, 614400, "c", True), (2, 622592, None, "83", False)],
}
LABELS = {  # (boot FAT label, root ext4 label)
    "ubuntu-raspi": ("system-boot", "writable"), "kali-raspi": ("BOOT", "ROOTFS"), "raspios": ("bootfs", "rootfs"),
}
OS_RELEASE = {  # (ID, VERSION_ID) by target, or by (target, release)
    "ubuntu-raspi": None, "kali-raspi": ("kali", "2024.2"), "jetson-sd": ("ubuntu", "18.04"),
    ("raspios", "bookworm"): ("debian", "12"), ("raspios", "trixie"): ("debian", "13"),
}
JETSON_DISK_ORDER = ["TBC", "RP1", "EBT", "WB0", "BPF", "BPF-DTB", "FX", "TOS", "DTB", "LNX", "EKS", "BMP", "RP4",
                     "APP"]


def data_extents(path: Path, start: int = 0, end: int | None = None):
    """Yield (offset, bytes) for the allocated parts of [start, end) of a sparse file: holes are zeros anyway,
    and reading 2 GiB of holes would make the suite slow."""
    with open(path, "rb") as file:
        end = os.fstat(file.fileno()).st_size if end is None else end
        offset = start
        while offset < end:
            try:
                offset = os.lseek(file.fileno(), offset, os.SEEK_DATA)
            except OSError:  # no data after offset
                return
            if offset >= end:
                return
            hole = min(os.lseek(file.fileno(), offset, os.SEEK_HOLE), end)
            file.seek(offset)
            yield offset, file.read(hole - offset)
            offset = hole


def digest(path: Path) -> str:
    """sha256 of a sparse file's content (its size and every data extent with its offset)."""
    sha = hashlib.sha256(str(path.stat().st_size).encode())
    for offset, data in data_extents(path):
        sha.update(offset.to_bytes(8, "little"))
        sha.update(data.rstrip(b"\0"))
    return sha.hexdigest()


def table(image: Path) -> dict:
    return json.loads(run(["sfdisk", "--json", str(image)]).stdout)["partitiontable"]


def partitions(image: Path) -> dict[int, dict]:
    parts = table(image)["partitions"]
    return {int(p["node"][len(str(image)):].lstrip("p")): p for p in parts}


def root_offset(image: Path) -> int:
    parts = partitions(image)
    named = [p for p in parts.values() if p.get("name") == "APP"]
    return (named[0] if named else parts[2])["start"] * SECTOR


def debugfs(image: Path, request: str) -> str:
    return run(["debugfs", "-R", request, f"{image}?offset={root_offset(image)}"]).stdout.decode()


def mtype(image: Path, name: str) -> str:
    offset = partitions(image)[1]["start"] * SECTOR
    return run(["mtype", "-i", f"{image}@@{offset}", f"::/{name}"]).stdout.decode()


def blkid(image: Path, offset: int) -> dict[str, str]:
    out = run(["blkid", "-p", "-O", str(offset), "-o", "export", str(image)]).stdout.decode()
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def link_target(image: Path, path: str) -> str:
    out = debugfs(image, f"stat {path}")
    assert "Type: symlink" in out, out
    return out.split('Fast link dest: "')[1].split('"')[0]


@pytest.mark.parametrize("key", [k for k in ALL_DISKS if k[0] != "jetson-sd"], ids=ident)
def test_raspi_cards_have_the_vendors_mbr(sample_image, key):
    image = sample_image(*key)
    expected = RASPI_TABLES[key[:2] if key[2] == "standard" else key]
    assert table(image)["label"] == "dos"
    parts = partitions(image)
    assert sorted(parts) == [1, 2]
    for number, start, size, ptype, bootable in expected:
        part = parts[number]
        assert (part["start"], part["type"], part.get("bootable", False)) == (start, ptype, bootable)
        if size is not None:
            assert part["size"] == size
    assert parts[2]["start"] + parts[2]["size"] == image.stat().st_size // SECTOR


def test_jetson_card_is_gpt_with_app_first_by_number_last_on_disk(sample_image):
    image = sample_image("jetson-sd")
    assert table(image)["label"] == "gpt"
    parts = partitions(image)
    assert [p["name"] for p in sorted(parts.values(), key=lambda p: p["start"])] == JETSON_DISK_ORDER
    assert parts[1]["name"] == "APP" and parts[2]["name"] == "TBC" and parts[2]["start"] == 2048
    assert {p["type"] for p in parts.values()} == {LINUX_FS}
    assert all(p["start"] % 2048 == 0 for p in parts.values())


@pytest.mark.parametrize("key", ALL_DISKS, ids=ident)
def test_filesystems_are_clean_and_labelled(sample_image, tmp_path, key):
    image = sample_image(*key)
    run(["e2fsck", "-fn", f"{image}?offset={root_offset(image)}"])
    root = blkid(image, root_offset(image))
    assert root["TYPE"] == "ext4"
    if key[0] == "jetson-sd":
        return
    boot_label, root_label = LABELS[key[0]]
    assert root["LABEL"] == root_label
    boot_part = partitions(image)[1]
    boot = blkid(image, boot_part["start"] * SECTOR)
    assert (boot["TYPE"], boot["LABEL"], boot.get("VERSION")) == ("vfat", boot_label, "FAT32")
    extracted = tmp_path / "boot.fat"
    start, size = boot_part["start"] * SECTOR, boot_part["size"] * SECTOR
    with open(extracted, "wb") as dst:
        dst.truncate(size)
        for offset, data in data_extents(image, start, start + size):
            dst.seek(offset - start)
            dst.write(data)
    run(["fsck.vfat", "-n", str(extracted)])


@pytest.mark.parametrize("key", ALL_DISKS, ids=ident)
def test_root_is_root_owned_and_shadow_is_0640_root_shadow(sample_image, key):
    image = sample_image(*key)
    shadow = debugfs(image, "stat /etc/shadow")
    assert "Mode:  0640" in shadow and "User:     0   Group:    42" in shadow
    listing = debugfs(image, "ls -l /etc")
    owners = {":".join(line.split()[3:5]) for line in listing.splitlines() if line.strip()}
    assert owners <= {"0:0", "0:42"}, owners
    assert "Mode:  0700" in debugfs(image, "stat /root")
    assert "Mode:  01777" in debugfs(image, "stat /tmp")


@pytest.mark.parametrize("key", ALL_DISKS, ids=ident)
def test_os_release_is_a_relative_link_to_the_releases_file(sample_image, key):
    image = sample_image(*key)
    assert link_target(image, "/etc/os-release") == "../usr/lib/os-release"
    fields = dict(line.split("=", 1) for line in debugfs(image, "cat /usr/lib/os-release").splitlines() if "=" in line)
    expected = OS_RELEASE.get(key[:2]) or OS_RELEASE[key[0]] or ("ubuntu", key[1])
    assert (fields["ID"], fields["VERSION_ID"].strip('"')) == expected


@pytest.mark.parametrize("key", ALL_DISKS, ids=ident)
def test_usr_is_merged_except_on_ubuntu_18_04(sample_image, key):
    image = sample_image(*key)
    if key[0] == "jetson-sd":
        assert "Type: directory" in debugfs(image, "stat /bin")
    else:
        assert [link_target(image, f"/{d}") for d in ("bin", "sbin", "lib")] == ["usr/bin", "usr/sbin", "usr/lib"]


@pytest.mark.parametrize("release", ["20.04", "22.04", "24.04"])
def test_ubuntu_boots_from_system_boot_with_cloud_init_seed(sample_image, release):
    image = sample_image("ubuntu-raspi", release)
    fstab = debugfs(image, "cat /etc/fstab").split()
    assert "LABEL=writable" in fstab and "LABEL=system-boot" in fstab and "/boot/firmware" in fstab
    cmdline = mtype(image, "cmdline.txt")
    assert cmdline.count("\n") == 1 and "root=LABEL=writable" in cmdline
    assert "initramfs initrd.img followkernel" in mtype(image, "config.txt")
    assert mtype(image, "user-data").startswith("#cloud-config")
    assert "instance_id:" in mtype(image, "meta-data")
    assert "dhcp4: true" in mtype(image, "network-config")
    assert link_target(image, "/etc/resolv.conf") == "../run/systemd/resolve/stub-resolv.conf"
    assert "ubuntu:" not in debugfs(image, "cat /etc/passwd")  # cloud-init creates the user on first boot


def test_kali_roots_by_partuuid_and_uuid_and_has_resolved_disabled(sample_image):
    image = sample_image("kali-raspi")
    disk_id = table(image)["id"][2:]
    assert f"root=PARTUUID={disk_id}-02" in mtype(image, "cmdline.txt")
    root_uuid = blkid(image, root_offset(image))["UUID"]
    fstab = debugfs(image, "cat /etc/fstab")
    assert f"UUID={root_uuid} /" in fstab and "LABEL=BOOT      /boot" in fstab
    assert "kali:x:1000:1000:" in debugfs(image, "cat /etc/passwd")
    assert "User:  1000   Group:  1000" in debugfs(image, "stat /home/kali")
    assert "Type: regular" in debugfs(image, "stat /usr/lib/systemd/system/systemd-resolved.service")
    assert "systemd-resolved" not in debugfs(image, "ls /etc/systemd/system/multi-user.target.wants")
    features = run(["dumpe2fs", "-h", f"{image}?offset={root_offset(image)}"]).stdout.decode()
    assert "metadata_csum" not in features and "64bit" not in features


def test_raspios_roots_by_partuuid_of_its_disk_and_swaps_with_dphys(sample_image):
    image = sample_image("raspios")
    disk_id = table(image)["id"][2:]
    fstab = debugfs(image, "cat /etc/fstab")
    assert f"PARTUUID={disk_id}-01  /boot/firmware" in fstab and f"PARTUUID={disk_id}-02  /" in fstab
    assert f"root=PARTUUID={disk_id}-02" in mtype(image, "cmdline.txt")
    assert debugfs(image, "cat /etc/rpi-issue").startswith("Raspberry Pi reference")
    assert "CONF_SWAPSIZE=" in debugfs(image, "cat /etc/dphys-swapfile")
    wants = "/etc/systemd/system/multi-user.target.wants/dphys-swapfile.service"
    assert link_target(image, wants) == "/lib/systemd/system/dphys-swapfile.service"


def test_raspios_trixie_is_customized_through_cloud_init_from_bootfs(sample_image):
    """pi-gen's cloud-init stage: cloud-init and its NoCloud config (seeded from bootfs) in the rootfs, a stock seed
    on bootfs, netplan handing the network to NetworkManager, no first user until cloud-init makes one."""
    image = sample_image("raspios", "trixie")
    config = yaml.safe_load(debugfs(image, "cat /etc/cloud/cloud.cfg.d/99_raspberry-pi.cfg"))
    assert config["datasource_list"][0] == "NoCloud"
    assert config["datasource"]["NoCloud"]["seedfrom"] == "file:///boot/firmware"
    assert "Type: regular" in debugfs(image, "stat /usr/bin/cloud-init")
    assert yaml.safe_load(debugfs(image, "cat /usr/lib/netplan/00-network-manager-all.yaml"))["network"]["renderer"] \
        == "NetworkManager"
    assert mtype(image, "user-data").startswith("#cloud-config")
    assert "instance_id:" in mtype(image, "meta-data")
    assert "VERSION_CODENAME=trixie" in debugfs(image, "cat /usr/lib/os-release")
    assert ":x:1000:" not in debugfs(image, "cat /etc/passwd")


@pytest.mark.parametrize("release", ["bookworm", "trixie"])
def test_raspios_keeps_wifi_switched_off_until_a_country_is_set(sample_image, release):
    """pi-gen writes WirelessEnabled=false for NetworkManager when the image has no Wi-Fi country."""
    image = sample_image("raspios", release)
    assert "WirelessEnabled=false" in debugfs(image, "cat /var/lib/NetworkManager/NetworkManager.state")
    assert not [name for name in debugfs(image, "ls /var/lib/systemd/rfkill").split() if name.endswith(":wlan")]


def check_l4t_files(read, link) -> None:
    """The L4T r32.6.1 facts, whether read from an sd-blob (debugfs) or from a rootfs directory."""
    assert read("/etc/nv_tegra_release").startswith("# R32 (release), REVISION: 6.1, GCID: ")
    extlinux = read("/boot/extlinux/extlinux.conf")
    assert "TIMEOUT 30" in extlinux and "DEFAULT primary" in extlinux and "LABEL primary" in extlinux
    assert "APPEND ${cbootargs} quiet root=/dev/mmcblk0p1 rw rootwait rootfstype=ext4" in extlinux
    daemon = json.loads(read("/etc/docker/daemon.json"))
    assert daemon["runtimes"]["nvidia"]["path"] == "nvidia-container-runtime"
    assert link("/etc/systemd/system/default.target") == "nv-oem-config.target"
    assert link("/etc/systemd/system/multi-user.target.wants/nvzramconfig.service") == \
        "/etc/systemd/system/nvzramconfig.service"


def test_jetson_card_is_l4t_r32_6_1_waiting_for_oem_config(sample_image):
    image = sample_image("jetson-sd")
    check_l4t_files(lambda path: debugfs(image, f"cat {path}"), lambda path: link_target(image, path))
    assert ":x:1000:" not in debugfs(image, "cat /etc/passwd")


def test_l4t_rootfs_is_a_directory_with_the_same_tree(sample_image):
    rootfs = sample_image("l4t-rootfs")
    check_l4t_files(lambda path: (rootfs / path[1:]).read_text(), lambda path: os.readlink(rootfs / path[1:]))
    assert os.readlink(rootfs / "etc/os-release") == "../usr/lib/os-release"
    assert stat.S_IMODE((rootfs / "etc/shadow").lstat().st_mode) == 0o640
    assert stat.S_IMODE((rootfs / "etc/systemd/nvzramconfig.sh").stat().st_mode) == 0o755


@pytest.mark.parametrize("key", ALL_DISKS, ids=ident)
def test_samples_are_sparse(sample_image, key):
    image = sample_image(*key)
    assert image.stat().st_size == 2 << 30
    assert image.stat().st_blocks * 512 < 64 << 20


def test_build_twice_is_byte_identical(tmp_path):
    digests = {digest(make_sample("raspios", tmp_path / f"{n}.img")) for n in "ab"}
    assert len(digests) == 1


def test_size_sets_the_disk_and_the_root_grows_to_the_end(tmp_path):
    image = make_sample("ubuntu-raspi", tmp_path / "big.img", size=4 << 30)
    parts = partitions(image)
    assert parts[2]["start"] + parts[2]["size"] == (4 << 30) // SECTOR
    run(["e2fsck", "-fn", f"{image}?offset={parts[2]['start'] * SECTOR}"])


def test_unknown_sample_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no standard sample for ubuntu-raspi 19.10"):
        make_sample("ubuntu-raspi", tmp_path / "x.img", release="19.10")
