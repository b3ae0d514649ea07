"""Targets from what an image holds (no image tools): every sample's trees, staged in directories and read through a
disk stand-in whose partitions are those directories, are detected as their target from os-release, marker files
and the boot partition, never from a name; and each target's facts come from the image (fstab, dpkg's status)."""

from __future__ import annotations

from pathlib import Path

import pytest

from builder.errors import UserError
from builder.image import DirectoryFilesystem, DiskImage, Filesystem, Partition
from builder.samples.catalog import CATALOG, UBUNTU_X86_TREES, Ext4, ubuntu_x86_disk
from builder.samples.spec import Sample
from builder.samples.tree import stage_tree
from builder.targets import Target, detect


class TreeDisk(DiskImage):
    """A disk image stand-in: its partitions are staged directories (detection reads their files, nothing else)."""

    def __init__(self, path: Path, partitions: list[tuple[str | None, Path | None]]):
        self.path = path
        self.writable = False
        self.fake_time = None
        self.partitions = [Partition(number, 0, 0, kind, None, None, False)
                           for number, (kind, _) in enumerate(partitions, 1)]
        self.trees = {number: DirectoryFilesystem(tree, writable=False)
                      for number, (_, tree) in enumerate(partitions, 1) if tree is not None}

    def filesystem(self, partition: Partition) -> Filesystem:
        """The staged directory of `partition`."""
        return self.trees[partition.number]


def _stage(sample: Sample, dest: Path) -> TreeDisk | DirectoryFilesystem:
    """`sample`'s filesystems staged under `dest`: a TreeDisk for a disk sample, the directory for a tree one."""
    if sample.layout is None:
        assert sample.tree is not None
        stage_tree(sample.tree, sample.variables, dest)
        return DirectoryFilesystem(dest, writable=False)
    partitions: list[tuple[str | None, Path | None]] = []
    for partition in sample.layout.partitions:
        if partition.fs is None:
            partitions.append((None, None))
            continue
        tree = dest / f"p{partition.number}"
        stage_tree(partition.fs.tree, sample.variables, tree)
        partitions.append(("ext4" if isinstance(partition.fs, Ext4) else "fat32", tree))
    return TreeDisk(dest, partitions)


def _detected(key: tuple[str, str], dest: Path) -> Target:
    return detect(_stage(CATALOG[key], dest))


def _root_dir(medium: TreeDisk | DirectoryFilesystem) -> Path:
    """Where the staged root filesystem (the one with os-release) is."""
    if isinstance(medium, DirectoryFilesystem):
        return medium.root
    return next(fs.root for fs in medium.trees.values() if fs.exists("/etc/os-release"))


@pytest.mark.parametrize("key", sorted(CATALOG), ids=["-".join(key) for key in sorted(CATALOG)])
def test_every_sample_is_detected_as_its_target(key: tuple[str, str], tmp_path: Path) -> None:
    target = _detected(key, tmp_path)
    assert target.name == key[0]
    first_boot = {"ubuntu-raspi": "cloud-init", "kali-raspi": "offline", "jetson-sd": "offline",
                  "l4t-rootfs": "offline", "raspios": "userconf" if key[1] == "bookworm" else "cloud-init"}
    assert target.first_boot == first_boot[key[0]]
    assert (target.boot is None) == (key[0] in ("jetson-sd", "l4t-rootfs"))


def test_an_x86_root_is_its_own_target_and_an_x86_disk_is_sent_to_seed_iso(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    stage_tree(UBUNTU_X86_TREES["24.04"], {}, tree)
    target = detect(DirectoryFilesystem(tree, writable=False))
    assert target.name == "ubuntu-x86" and target.cmdline_location is None
    with pytest.raises(UserError, match="seed-iso") as err:
        detect(_stage(ubuntu_x86_disk("24.04"), tmp_path / "disk"))
    assert "\n" not in str(err.value)


def test_an_os_pi_image_does_not_support_is_named_in_one_line(tmp_path: Path) -> None:
    medium = _stage(CATALOG[("ubuntu-raspi", "24.04")], tmp_path)
    os_release = _root_dir(medium) / "etc/os-release"
    os_release.unlink()
    os_release.write_text('NAME="Fedora Linux"\nID=fedora\nPRETTY_NAME="Fedora Linux 40"\n')
    with pytest.raises(UserError, match=r"holds 'Fedora Linux 40' \(ID=fedora, boot partition found\), which "
                                        "pi-image does not support") as err:
        detect(medium)
    assert "\n" not in str(err.value)


def test_the_image_decides_not_its_name(tmp_path: Path) -> None:
    """Ubuntu with L4T's marker is a Jetson; Kali without a Pi boot partition is nothing pi-image knows."""
    medium = _stage(CATALOG[("ubuntu-raspi", "22.04")], tmp_path / "tegra")
    (_root_dir(medium) / "etc/nv_tegra_release").write_text("# R32 (release), REVISION: 6.1\n")
    assert detect(medium).name == "jetson-sd"
    kali = _stage(CATALOG[("kali-raspi", "2024.2")], tmp_path / "kali")
    assert isinstance(kali, TreeDisk)
    root_only = TreeDisk(tmp_path / "kali", [(None, None), ("ext4", _root_dir(kali))])
    with pytest.raises(UserError, match=r"\(ID=kali, no FAT boot partition\)"):
        detect(root_only)


def test_a_directory_without_os_release_is_not_a_root(tmp_path: Path) -> None:
    (tmp_path / "Linux_for_Tegra" / "rootfs").mkdir(parents=True)
    with pytest.raises(UserError, match=r"not a root filesystem.*pass Linux_for_Tegra/rootfs"):
        detect(DirectoryFilesystem(tmp_path / "Linux_for_Tegra", writable=False))


# --- facts read from the image -------------------------------------------------------------------------------------

def test_the_boot_mount_is_the_fstabs_vfat_line_else_the_targets_default(tmp_path: Path) -> None:
    assert _detected(("kali-raspi", "2024.2"), tmp_path / "kali").boot_mount == "/boot"
    medium = _stage(CATALOG[("ubuntu-raspi", "24.04")], tmp_path / "ubuntu")
    fstab = _root_dir(medium) / "etc/fstab"
    assert detect(medium).boot_mount == "/boot/firmware"
    fstab.write_text("LABEL=writable / ext4 defaults 0 1\n# LABEL=x /old vfat defaults 0 1\n"
                     "LABEL=system-boot /boot/efi vfat defaults 0 1\n")
    assert detect(medium).boot_mount == "/boot/efi"
    fstab.write_text("LABEL=writable / ext4 defaults 0 1\n")
    assert detect(medium).boot_mount == "/boot/firmware"


@pytest.mark.parametrize(("key", "listed"), [
    (("ubuntu-raspi", "24.04"), "/var/lib/locales/supported.d/pi-image"),
    (("l4t-rootfs", "r32.6.1"), "/var/lib/locales/supported.d/pi-image"),  # Ubuntu 18.04 underneath
    (("kali-raspi", "2024.2"), "/etc/locale.gen"),
    (("raspios", "bookworm"), "/etc/locale.gen"),
])
def test_the_locale_list_is_the_one_the_oss_locale_gen_reads(key: tuple[str, str], listed: str,
                                                             tmp_path: Path) -> None:
    assert _detected(key, tmp_path).locale_list == listed


def test_netplans_regulatory_domain_is_the_installed_versions_else_the_releases(tmp_path: Path) -> None:
    focal, jammy = _detected(("ubuntu-raspi", "20.04"), tmp_path / "focal"), \
        _detected(("ubuntu-raspi", "22.04"), tmp_path / "jammy")
    assert not focal.netplan_regulatory_domain and jammy.netplan_regulatory_domain
    medium = _stage(CATALOG[("ubuntu-raspi", "22.04")], tmp_path / "old-netplan")
    status = _root_dir(medium) / "var/lib/dpkg/status"
    status.parent.mkdir(parents=True, exist_ok=True)
    status.write_text("Package: netplan.io\nStatus: install ok installed\nVersion: 0.104-0ubuntu2\n\n")
    assert not detect(medium).netplan_regulatory_domain
    assert not _detected(("kali-raspi", "2024.2"), tmp_path / "kali").netplan_regulatory_domain


@pytest.mark.parametrize(("key", "location", "kind"), [
    (("ubuntu-raspi", "24.04"), ("boot", "/cmdline.txt"), "cmdline.txt"),
    (("raspios", "trixie"), ("boot", "/cmdline.txt"), "cmdline.txt"),
    (("jetson-sd", "r32.6.1"), ("root", "/boot/extlinux/extlinux.conf"), "extlinux"),
])
def test_the_kernel_command_line_is_read_where_the_boot_loader_reads_it(key: tuple[str, str],
                                                                       location: tuple[str, str], kind: str,
                                                                       tmp_path: Path) -> None:
    target = _detected(key, tmp_path)
    assert target.cmdline_location == location and target.cmdline_kind == kind
    args, problem = target.kernel_cmdline()
    assert problem is None and any(arg.startswith("root=") for arg in args)
    fs, path = location
    edited = target.with_kernel_args(target.filesystem(fs).read_text(path) or "", ["cgroup_enable=memory"])
    assert "cgroup_enable=memory" in edited


def test_a_missing_command_line_file_is_named(tmp_path: Path) -> None:
    target = _detected(("kali-raspi", "2024.2"), tmp_path)
    assert isinstance(target.boot, DirectoryFilesystem)
    (target.boot.root / "cmdline.txt").unlink()
    with pytest.raises(UserError, match="/cmdline.txt is missing"):
        target.kernel_cmdline()
