"""An operator with an Arch Linux machine beside the boards: the reference tree of a stock Arch is detected as the
`arch` target (and a tree that only claims to be Arch is not), an Arch disk given to `build` is sent to seed-iso or
enroll, and `pi-image seed-iso --profile arch-worker` writes a seed that cloud-init's own schema validator accepts,
with Kubernetes pinned by the SHA-256 the (local) release server publishes beside each asset."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from pathlib import Path

import pycdlib
import pytest
import yaml
from http_fixture import FileServer
from readback import KUBE_KEY, TEST_SSH_KEY, PiImage, make_cluster, succeeded, tool

from builder.build.seed_iso import SeedIsoRequest, seed_iso
from builder.errors import UserError
from builder.image import DirectoryFilesystem
from builder.samples.catalog import BIOS_BOOT_GUID, REFERENCE_TREES
from builder.samples.disk import build_image
from builder.samples.spec import LINUX_FS_GUID, Ext4, Layout, Partition, Sample
from builder.samples.tree import stage_tree
from builder.targets import detect

RELEASE, CRICTL, CNI = "1.31.4", "v1.31.1", "v1.5.1"


def staged_arch(dest: Path) -> Path:
    stage_tree(REFERENCE_TREES["arch"], {}, dest)
    return dest


def test_the_arch_reference_tree_is_the_arch_target(tmp_path):
    target = detect(DirectoryFilesystem(staged_arch(tmp_path / "arch"), writable=False))

    assert target.name == "arch" and target.os.id == "arch" and target.cmdline_location is None
    assert (target.package_manager, target.kube_install, target.first_boot) == ("pacman", "release", "cloud-init")
    assert target.default_user == "arch" and target.admin_groups == ("wheel", "users")
    assert target.locale_list == "/etc/locale.gen" and not target.carries_bundle


def test_pacman_itself_reads_the_reference_trees_database(tmp_path):
    root = staged_arch(tmp_path / "arch")
    pacman = shutil.which("pacman")
    if pacman is None:
        pytest.skip("pacman is not installed (./dev test installs pacman-package-manager)")
    listed = tool(pacman, "--root", root, "--dbpath", root / "var/lib/pacman", "-Qi", "pacman").stdout.decode()

    assert "Architecture    : x86_64" in listed


@pytest.mark.parametrize("change, why", [
    (lambda root: (root / "var/lib/pacman/local/ALPM_DB_VERSION").unlink(), "no pacman database"),
    (lambda root: [p.unlink() for p in (root / "var/lib/pacman/local").glob("pacman-*/desc")], "no pacman entry"),
    (lambda root: _rewrite(root / "var/lib/pacman/local/pacman-7.0.0.r6.gc685ae6-2/desc", "x86_64", "aarch64"),
     "Arch Linux ARM's pacman"),
])
def test_a_tree_that_only_claims_to_be_arch_is_refused_in_one_line(tmp_path, change, why):
    root = staged_arch(tmp_path / "arch")
    change(root)

    with pytest.raises(UserError, match=r"holds 'Arch Linux' \(ID=arch, no FAT boot partition\), which pi-image "
                                        r"does not support") as refused:
        detect(DirectoryFilesystem(root, writable=False))
    assert "\n" not in str(refused.value), why


def test_a_derivative_that_says_id_like_arch_is_arch(tmp_path):
    root = staged_arch(tmp_path / "endeavour")
    os_release = root / "usr/lib/os-release"
    os_release.write_text('NAME="EndeavourOS"\nPRETTY_NAME="EndeavourOS"\nID="endeavouros"\nID_LIKE="arch"\n')

    assert detect(DirectoryFilesystem(root, writable=False)).name == "arch"


def test_build_and_inspect_send_an_arch_disk_to_seed_iso_or_enroll(cli, tmp_path):
    """An Arch install on a GPT disk (BIOS boot + ext4 root) is no card."""
    root = Ext4("", "6a1f0c3e-5b2d-4e7a-9c8f-1d2e3f4a5b6c", REFERENCE_TREES["arch"])
    sample = Sample("arch", "rolling", "Arch Linux on a GPT disk",
                    Layout("gpt", "3C9A1B2D-4E5F-4A6B-8C7D-9E0F1A2B3C4D", 1 << 30,
                           (Partition(1, 2048, 2048, BIOS_BOOT_GUID), Partition(2, 4096, None, LINUX_FS_GUID,
                                                                                fs=root))))
    disk = build_image(sample, tmp_path / "arch.img")
    for argv in (("build", "--profile", "arch-worker", "--base", disk, "--output", tmp_path / "out.img"),
                 ("inspect", disk)):
        run = cli(*argv)
        assert run.returncode != 0 and "Traceback" not in run.stderr
        assert "is an Arch Linux disk (Arch Linux, x86_64)" in run.stderr and "pi-image seed-iso --profile " \
            "arch-worker" in run.stderr and "pi-image enroll --cluster DIR --node NAME" in run.stderr, run.stderr
    assert not (tmp_path / "out.img").exists()


def test_profiles_list_the_arch_worker(cli):
    line = next(line for line in succeeded(cli("profiles")).stdout.splitlines() if line.startswith("arch-worker"))

    assert line.split()[1] == "arch" and "seed-iso" in line and "enroll" in line


# --- the seed -------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def release_server():
    """The release locations' .sha256 files (and the stable marker) for Kubernetes 1.31, as dl.k8s.io and GitHub
    publish them: the build reads these, never the assets."""
    digests = {name: hashlib.sha256(name.encode()).hexdigest() for name in
               ("kubeadm", "kubelet", "kubectl", f"crictl-{CRICTL}-linux-amd64.tar.gz",
                f"cni-plugins-linux-amd64-{CNI}.tgz")}
    files = {f"k8s/v{RELEASE}/bin/linux/amd64/{tool}.sha256": digests[tool].encode()
             for tool in ("kubeadm", "kubelet", "kubectl")}
    files["k8s/stable-1.31.txt"] = f"v{RELEASE}\n".encode()
    name = f"crictl-{CRICTL}-linux-amd64.tar.gz"
    files[f"crictl/{CRICTL}/{name}.sha256"] = f"{digests[name]}  {name}\n".encode()
    name = f"cni-plugins-linux-amd64-{CNI}.tgz"
    files[f"cni/{CNI}/{name}.sha256"] = f"{digests[name]}  {name}\n".encode()
    server = FileServer(files)
    server.digests = digests  # type: ignore[attr-defined]
    yield server
    server.close()


@pytest.fixture(scope="module")
def lab(cli: PiImage, tmp_path_factory) -> Path:
    """A cluster with a Pi master and two Arch workers: one with a fixed address (no MAC known), one on DHCP."""
    return make_cluster(cli, tmp_path_factory.mktemp("cluster") / "lab", "192.168.6.0/24", {
        "pi-master1": ["--profile", "master-2g", "--address", "192.168.6.10"],
        "arch1": ["--profile", "arch-worker", "--address", "192.168.6.41"],
        "arch2": ["--profile", "arch-worker"],
    })


def arch_seed(lab: Path, server: FileServer, node: str, output: Path, **options) -> dict[str, bytes]:
    """seed_iso() for `node` with the release locations on `server`; the ISO's files as pycdlib reads them."""
    sets = {"kube_release_url": server.url("k8s"), "crictl_url": server.url("crictl"),
            "cni_plugins_url": server.url("cni")}
    seed_iso(SeedIsoRequest(profile=None, cluster=lab, node=node, output=output, kube_key=KUBE_KEY,
                            ssh_keys=[TEST_SSH_KEY.read_text().strip()], sets=sets, **options))
    iso = pycdlib.PyCdlib()
    iso.open(str(output))
    try:
        files = {}
        for name in ("meta-data", "user-data", "network-config"):
            out = io.BytesIO()
            try:
                iso.get_file_from_iso_fp(out, rr_path=f"/{name}")
            except pycdlib.pycdlibexception.PyCdlibInvalidInput:
                continue
            files[name] = out.getvalue()
        return files
    finally:
        iso.close()


def test_the_arch_seed_passes_cloud_inits_schema_and_pins_the_release(lab, release_server, tmp_path):
    files = arch_seed(lab, release_server, "arch1", tmp_path / "arch1.iso")
    (tmp_path / "user-data").write_bytes(files["user-data"])
    config = yaml.safe_load(files["user-data"])
    node = json.loads(next(f["content"] for f in config["write_files"] if f["path"] == "/etc/pi-image/node.json"))
    network = yaml.safe_load(files["network-config"])

    check = tool("cloud-init", "schema", "--config-file", tmp_path / "user-data", check=False)
    assert check.returncode == 0 and b"Valid cloud-config" in check.stdout, check.stdout + check.stderr
    assert config["users"][0]["name"] == "arch" and config["users"][0]["groups"] == ["wheel", "users"]
    assert node["package_manager"] == "pacman" and node["kube_install"] == "release"
    assert node["kubernetes_release"] == RELEASE and node["release"]["sha256"] == release_server.digests
    assert {"conntrack-tools", "socat", "ethtool", "iptables"} <= set(node["runtime_packages"])
    # cloud-init renders networkd here, which takes the entry's name: arch-boxes' cloud image names its NIC eth0
    assert network["ethernets"] == {"eth0": {"dhcp4": False, "addresses": ["192.168.6.41/24"],
                                             "routes": [{"to": "0.0.0.0/0", "via": "192.168.6.1"}],
                                             "nameservers": {"addresses": ["192.168.6.1", "1.1.1.1"]},
                                             "optional": True}}


def test_an_arch_seed_is_for_the_cloud_image_not_ubuntus_installer(lab, release_server, tmp_path):
    with pytest.raises(UserError, match=r"--autoinstall wraps the seed for Ubuntu's live server installer, and "
                                        r"profile 'arch-worker' is for arch: drop --autoinstall"):
        arch_seed(lab, release_server, "arch2", tmp_path / "seed.iso", autoinstall=True)
    assert not (tmp_path / "seed.iso").exists()


def test_a_board_profile_is_refused_naming_both_x86_targets(lab, release_server, tmp_path):
    with pytest.raises(UserError, match=r"a seed ISO is for Ubuntu \(ubuntu-x86\) or Arch Linux \(arch\) on x86-64; "
                                        r"use --profile x86-worker or arch-worker") as refused:
        arch_seed(lab, release_server, "pi-master1", tmp_path / "seed.iso")
    assert "\n" not in str(refused.value)


def _rewrite(path: Path, old: str, new: str) -> None:
    path.write_text(path.read_text().replace(old, new))
