"""What the image layer finds in a vendor image survives it: file names that are not UTF-8, SELinux labels, file
capabilities and other xattrs, hard links, a card image grown past its partition table, and the FAT listing.

Images are made with the real tools (mkfs.ext4 -d, debugfs ea_set, sfdisk, truncate) and every result is read back
with other tools: e2fsck -fn, debugfs (ls -p, cat, stat, ea_get), sfdisk --json, parted, mdir.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from readback import KUBE_KEY, MTOOLS_ENV, succeeded, tool

from builder.errors import UserError
from builder.image import DiskImage, Filesystem

CAFE = os.fsdecode(b"caf\xe9")  # how pi-image names the bytes b"caf\xe9" (Latin-1, not UTF-8)
LABEL = b"system_u:object_r:etc_t:s0\0"
CAPABILITY = bytes.fromhex("0100000200200000000000000000000000000000")  # cap_net_raw+ep, VFS v2
NOTE = b"n" * 300  # too big to share the inode with the others: it goes to an external xattr block
# "user.café" is mostly unprintable bytes to debugfs, which then shows the name in hex
XATTRS = {"security.selinux": LABEL, "security.capability": CAPABILITY, "user.note": NOTE, "user.café": b"\xe9"}


class Ext4:
    """An ext4 at a byte offset of an image, read with debugfs and checked with e2fsck (not with pi-image)."""

    def __init__(self, image: Path, offset: int):
        self.image, self.offset = image, offset
        self.spec = f"{image}?offset={offset}"

    def debugfs(self, command: bytes | str, write: bool = False) -> bytes:
        """Output of one debugfs command (bytes in, bytes out: names need not be UTF-8)."""
        script = (command if isinstance(command, bytes) else command.encode()) + b"\n"
        argv = ["debugfs", *(["-w"] if write else []), "-f", "-", self.spec]
        out = subprocess.run(argv, input=script, capture_output=True, check=True).stdout
        return out.split(b"\n", 1)[1] if out.startswith(b"debugfs: ") else out

    def set_xattr(self, path: str, name: str, value: bytes, scratch: Path) -> None:
        scratch.write_bytes(value)
        self.debugfs(f'ea_set -f "{scratch}" "{path}" "{name}"', write=True)

    def xattr(self, path: str, name: str, scratch: Path) -> bytes:
        scratch.unlink(missing_ok=True)
        self.debugfs(f'ea_get -f "{scratch}" "{path}" "{name}"')
        return scratch.read_bytes() if scratch.exists() else b"(missing)"

    def inode_and_links(self, path: bytes) -> tuple[int, int]:
        stat = self.debugfs(b'stat "' + path + b'"').decode(errors="replace")
        inode = int(stat.split("Inode: ", 1)[1].split()[0])
        return inode, int(stat.split("Links: ", 1)[1].split()[0])

    def names(self, directory: bytes) -> list[bytes]:
        return [line.split(b"/")[5] for line in self.debugfs(b'ls -p "' + directory + b'"').splitlines()
                if line.count(b"/") == 7 and line.split(b"/")[5] not in (b".", b"..")]

    def assert_clean(self) -> None:
        tool("e2fsck", "-fn", self.spec)  # raises with e2fsck's report if anything is wrong


def partition(image: Path, number: int) -> tuple[int, int]:
    """(start, size) in bytes of partition `number`, as sfdisk reads the table."""
    table = json.loads(tool("sfdisk", "--json", image).stdout)["partitiontable"]
    part = next(p for p in table["partitions"] if p["node"].endswith(str(number)))
    return part["start"] * 512, part["size"] * 512


@pytest.fixture
def ubuntu_with(sample_copy, tmp_path) -> Callable[[Callable[[Path], None]], tuple[Path, Ext4]]:
    """The Ubuntu sample, its root filesystem remade by `mkfs.ext4 -d` from its own tree after `populate(tree)`."""

    def make(populate: Callable[[Path], None]) -> tuple[Path, Ext4]:
        image = sample_copy("ubuntu-raspi", "22.04")
        start, size = partition(image, 2)
        tree = tmp_path / "tree"
        tree.mkdir()
        tool("debugfs", "-R", f"rdump / {tree}", f"{image}?offset={start}")
        populate(tree)
        tool("mkfs.ext4", "-q", "-F", "-L", "writable", "-E", f"offset={start}", "-d", tree, image, f"{size // 1024}k")
        return image, Ext4(image, start)

    return make


def labelled_ping(tree: Path) -> None:
    """/etc/ping.conf with two more names: /etc/ping.link and /usr/lib/ping.conf."""
    (tree / "etc/ping.conf").write_text("old\n")
    os.link(tree / "etc/ping.conf", tree / "etc/ping.link")
    os.link(tree / "etc/ping.conf", tree / "usr/lib/ping.conf")


def label(root: Ext4, path: str, tmp_path: Path) -> None:
    for name, value in XATTRS.items():
        root.set_xattr(path, name, value, tmp_path / "value")


def root_of(image: Path) -> tuple[DiskImage, Filesystem]:
    """The image opened for writing, and its root filesystem as pi-image sees it."""
    disk = DiskImage(image, writable=True)
    return disk, disk.filesystem(disk.partition("writable"))


# --- file names that are not UTF-8 ---------------------------------------------------------------------------

def test_a_file_name_that_is_not_utf8_can_be_listed_read_replaced_and_removed(ubuntu_with):
    def populate(tree: Path) -> None:
        etc = os.fsencode(tree / "etc")
        os.mkdir(etc + b"/caf\xe9.d")
        for name, content in ((b"caf\xe9", b"old\n"), (b"caf\xe9.d/keep", b"keep\n"), (b"caf\xe9.d/gone", b"x\n")):
            with open(etc + b"/" + name, "wb") as f:
                f.write(content)

    image, root = ubuntu_with(populate)
    disk, fs = root_of(image)
    assert CAFE in fs.listdir("/etc") and fs.read(f"/etc/{CAFE}") == b"old\n"
    assert fs.listdir(f"/etc/{CAFE}.d") == ["gone", "keep"]
    fs.write(f"/etc/{CAFE}", b"new\n")
    fs.remove(f"/etc/{CAFE}.d/gone")
    fs.write(f"/etc/{CAFE}.d/n{CAFE}", b"added\n")
    disk.commit()
    assert root.debugfs(b'cat "/etc/caf\xe9"') == b"new\n"
    assert sorted(root.names(b"/etc/caf\xe9.d")) == [b"keep", b"ncaf\xe9"]
    assert root.debugfs(b'cat "/etc/caf\xe9.d/ncaf\xe9"') == b"added\n"
    root.assert_clean()


def test_an_image_with_non_utf8_names_is_inspected_and_built(ubuntu_with, cli, tmp_path):
    def populate(tree: Path) -> None:
        for directory in (b"/etc/sysctl.d", b"/etc/systemd/system/multi-user.target.wants", b"/etc"):
            os.makedirs(os.fsencode(tree) + directory, exist_ok=True)
            with open(os.fsencode(tree) + directory + b"/caf\xe9.conf", "wb") as f:
                f.write(b"vm.swappiness = 10\n")

    image, _ = ubuntu_with(populate)
    report = json.loads(succeeded(cli("inspect", "--json", image)).stdout)
    assert report["target"] == "ubuntu-raspi"
    output = tmp_path / "node.img"
    succeeded(cli("build", "--profile", "worker-8g", "--base", image, "--output", output, "--kube-key", KUBE_KEY,
                  "--no-login"))
    root = Ext4(output, partition(output, 2)[0])
    assert b"caf\xe9.conf" in root.names(b"/etc/sysctl.d") and b"k8s.conf" in root.names(b"/etc/sysctl.d")
    root.assert_clean()


# --- extended attributes and hard links ----------------------------------------------------------------------

def test_replacing_a_file_keeps_its_selinux_label_capabilities_and_hard_links(ubuntu_with, tmp_path):
    image, root = ubuntu_with(labelled_ping)
    label(root, "/etc/ping.conf", tmp_path)
    disk, fs = root_of(image)
    fs.write("/etc/ping.conf", b"new\n", mode=0o640)
    fs.write("/etc/ping.conf", b"newer\n", mode=0o640)  # twice in one batch: still one inode
    disk.commit()
    root.assert_clean()
    names = (b"/etc/ping.conf", b"/etc/ping.link", b"/usr/lib/ping.conf")
    assert {root.inode_and_links(name) for name in names} == {root.inode_and_links(names[0])}
    assert root.inode_and_links(names[0])[1] == 3
    assert all(root.debugfs(b'cat "' + name + b'"') == b"newer\n" for name in names)
    assert "Mode:  0640" in root.debugfs("stat /usr/lib/ping.conf").decode()
    for name, value in XATTRS.items():
        assert root.xattr("/etc/ping.link", name, tmp_path / "read") == value, name


def test_a_build_keeps_the_labels_and_hard_links_of_the_files_it_replaces(ubuntu_with, cli, tmp_path):
    image, base = ubuntu_with(lambda tree: os.link(tree / "etc/hostname", tree / "etc/hostname.orig"))
    label(base, "/etc/hostname", tmp_path)
    label(base, "/etc/hosts", tmp_path)
    output = tmp_path / "node.img"
    succeeded(cli("build", "--profile", "worker-8g", "--base", image, "--output", output, "--kube-key", KUBE_KEY,
                  "--no-login"))  # the build itself runs e2fsck -fn on its output
    root = Ext4(output, base.offset)
    root.assert_clean()
    assert root.debugfs("cat /etc/hostname.orig") == b"worker-8g\n"
    assert root.inode_and_links(b"/etc/hostname") == root.inode_and_links(b"/etc/hostname.orig")
    for path in ("/etc/hostname", "/etc/hosts"):
        assert {name: root.xattr(path, name, tmp_path / "read") for name in XATTRS} == XATTRS, path


def test_replacing_a_symlink_keeps_its_selinux_label(ubuntu_with, tmp_path):
    image, root = ubuntu_with(lambda tree: None)
    root.set_xattr("/etc/resolv.conf", "security.selinux", LABEL, tmp_path / "value")
    disk, fs = root_of(image)
    fs.symlink("/etc/resolv.conf", "/run/systemd/resolve/resolv.conf")
    disk.commit()
    root.assert_clean()
    assert 'Fast link dest: "/run/systemd/resolve/resolv.conf"' in root.debugfs("stat /etc/resolv.conf").decode()
    assert root.xattr("/etc/resolv.conf", "security.selinux", tmp_path / "read") == LABEL


def test_removing_labelled_files_frees_their_xattr_blocks_and_keeps_their_other_names(ubuntu_with, tmp_path):
    def populate(tree: Path) -> None:
        labelled_ping(tree)
        (tree / "etc/solo.conf").write_text("solo\n")

    image, root = ubuntu_with(populate)
    label(root, "/etc/ping.conf", tmp_path)
    label(root, "/etc/solo.conf", tmp_path)
    disk, fs = root_of(image)
    fs.remove("/etc/ping.link")
    fs.remove("/etc/solo.conf")
    fs.write("/etc/ping.conf", b"new\n")  # written through one name, then that name removed in the same batch
    fs.remove("/etc/ping.conf")
    disk.commit()
    root.assert_clean()  # no leaked xattr block
    assert b"solo.conf" not in root.names(b"/etc") and b"ping.conf" not in root.names(b"/etc")
    assert root.debugfs("cat /usr/lib/ping.conf") == b"new\n"
    assert root.inode_and_links(b"/usr/lib/ping.conf")[1] == 1
    assert root.xattr("/usr/lib/ping.conf", "user.note", tmp_path / "read") == NOTE


def test_a_file_whose_xattr_block_is_shared_is_refused_in_one_line_and_nothing_is_written(tmp_path):
    image = tmp_path / "shared.img"
    tree = tmp_path / "tree"
    (tree / "etc").mkdir(parents=True)
    for name in ("a", "b"):
        (tree / "etc" / name).write_text(f"{name}\n")
    tool("truncate", "-s", "40M", image)
    subprocess.run(["sfdisk", "-q", str(image)], input=b"label: dos\nstart=2048, type=83\n", check=True)
    offset = 2048 * 512
    tool("mkfs.ext4", "-q", "-b", "4096", "-O", "^metadata_csum", "-E", f"offset={offset}", "-d", tree, image, "32M")
    root = Ext4(image, offset)
    root.set_xattr("/etc/a", "user.note", NOTE, tmp_path / "value")
    block = int(root.debugfs("stat /etc/a").decode().split("File ACL: ", 1)[1].split()[0])
    # /etc/b shares /etc/a's xattr block, as the kernel shares identical blocks: refcount 2, counted in i_blocks
    root.debugfs(f"sif /etc/b file_acl {block}\nsif /etc/b blocks 16", write=True)
    with open(image, "r+b") as f:
        f.seek(offset + block * 4096 + 4)
        f.write((2).to_bytes(4, "little"))
    root.assert_clean()
    before = image.read_bytes()
    disk = DiskImage(image, writable=True)
    fs = disk.filesystem(disk.partition(1))
    fs.write("/etc/a", b"new\n")
    with pytest.raises(UserError, match=r"cannot replace or remove /etc/a: .* shared with other files"):
        disk.commit()
    assert image.read_bytes() == before


# --- partition tables and FAT listings -----------------------------------------------------------------------

def test_a_gpt_card_image_grown_with_truncate_lists_what_sfdisk_and_parted_list(sample_copy, cli):
    image = sample_copy("jetson-sd")
    os.truncate(image, image.stat().st_size + (1 << 30))  # the backup GPT is no longer at the end
    result = succeeded(cli("inspect", "--json", image))
    assert result.stderr == "", "libparted's own warnings stay out of the user's terminal"
    listed = sorted((p["number"], p["start"], p["size"], p["name"]) for p in json.loads(result.stdout)["partitions"])
    table = json.loads(tool("sfdisk", "--json", image).stdout)["partitiontable"]["partitions"]
    assert listed == sorted((int(p["node"][len(str(image)):]), p["start"] * 512, p["size"] * 512, p["name"])
                            for p in table)
    parted_lines = tool("parted", "-s", "-m", image, "unit", "B", "print").stdout.decode().splitlines()[2:]
    fields = [line.rstrip(";").split(":") for line in parted_lines]
    assert listed == sorted((int(f[0]), int(f[1][:-1]), int(f[3][:-1]), f[5]) for f in fields)


def test_the_fat_listing_shows_only_the_files_mtools_shows(sample_image):
    image = sample_image("ubuntu-raspi", "22.04")
    disk = DiskImage(image)
    boot = disk.filesystem(disk.partition("system-boot"))
    start, _ = partition(image, 1)
    proc = subprocess.run(["mdir", "-b", "-i", f"{image}@@{start}", "::/"], capture_output=True, check=True,
                          env={**os.environ, **MTOOLS_ENV})
    bare = sorted(line.removeprefix("::/").rstrip("/") for line in proc.stdout.decode().splitlines())
    assert boot.listdir("/") == bare
    assert "bytes free" not in boot.listdir("/")


def test_fat_files_with_non_ascii_names_are_listed_read_and_replaced(tmp_path):
    image = tmp_path / "boot.img"
    tool("truncate", "-s", "64M", image)
    subprocess.run(["sfdisk", "-q", str(image)], input=b"label: dos\nstart=2048, type=c\n", check=True)
    tool("mkfs.vfat", "-F", "32", "--offset", "2048", image)
    utf8 = {**os.environ, **MTOOLS_ENV, "LC_ALL": "C.UTF-8"}
    for name in ("café.txt", "Überlange Konfiguration.txt"):
        (tmp_path / name).write_text("old\n")
        subprocess.run(["mcopy", "-i", f"{image}@@{2048 * 512}", str(tmp_path / name), "::/"], env=utf8, check=True)
    disk = DiskImage(image, writable=True)
    boot = disk.filesystem(disk.partition(1))
    assert boot.listdir("/") == ["café.txt", "Überlange Konfiguration.txt"]
    assert boot.read("/café.txt") == b"old\n"
    boot.write("/Überlange Konfiguration.txt", b"new\n")
    disk.commit()
    typed = subprocess.run(["mtype", "-i", f"{image}@@{2048 * 512}", "::/Überlange Konfiguration.txt"], env=utf8,
                           capture_output=True, check=True)
    assert typed.stdout == b"new\n"
