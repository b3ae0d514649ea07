"""What an --offline build meets, made of real parts on 127.0.0.1 (shared by test_offline_bundle.py and
bench/offline_bench.py):

    start_archive(dir)     a signed arm64 apt archive (the boot test's AptRepository): containerd -> runc ->
                           libseccomp2, and kubelet/kubeadm/kubectl of two 1.31 patches with cri-tools and
                           kubernetes-cni, made with dpkg-deb (`padding` bytes each, for the benchmark)
    start_registry(dir)    Debian's docker-registry with kubeadm 1.31.4's and flannel's images (oci_registry.py)
    offline_base(...)      the Ubuntu sample with what a vendor image has: a dpkg database (arm64, libseccomp2
                           installed) and apt sources naming ARCHIVE_HOST, signed by a keyring in the image
    offline_args(...)      the build options of a user behind a firewall with mirrors
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

from oci_registry import Registry, populate
from readback import Card, tool

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "system"))
from apt_repo import AptRepository, SigningKey

ARCH = "arm64"
KUBE_RELEASES = ("1.31.3-1.1", "1.31.4-1.1")
ARCHIVE_HOST = "http://archive.invalid/debian"  # what the image's sources name: the build reaches it by package_mirrors
# What kubeadm v1.31.4 uses (kubeadm's constants, as minikube records them) and flannel v0.28.9's manifest names:
# written here, not taken from pi-image's data, so that the tests check that data.
WORKER_IMAGES = ("registry.k8s.io/kube-proxy:v1.31.4", "registry.k8s.io/coredns/coredns:v1.11.3",
                 "registry.k8s.io/pause:3.10", "ghcr.io/flannel-io/flannel:v0.28.9",
                 "ghcr.io/flannel-io/flannel-cni-plugin:v1.9.1-flannel3")
CONTROL_PLANE_IMAGES = ("registry.k8s.io/kube-apiserver:v1.31.4", "registry.k8s.io/kube-controller-manager:v1.31.4",
                        "registry.k8s.io/kube-scheduler:v1.31.4", "registry.k8s.io/etcd:3.5.15-0")
STATUS = """Package: dpkg
Status: install ok installed
Architecture: {arch}
Version: 1.21.1ubuntu2.3

Package: libseccomp2
Status: install ok installed
Architecture: {arch}
Version: 2.5.3-2ubuntu2
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def make_deb(dest: Path, package: str, version: str, depends: str = "", padding: int = 0) -> Path:
    """A small arm64 .deb made with dpkg-deb; `padding` incompressible bytes make it the size of a real one."""
    tree = dest / f"{package}-{version}"
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "DEBIAN").chmod(0o755)  # dpkg-deb's rule, whatever umask an in-process endpoint or agent left behind
    (tree / "DEBIAN/control").write_text(
        f"Package: {package}\nVersion: {version}\nArchitecture: {ARCH}\nMaintainer: pi-image tests <nobody@invalid>\n"
        + (f"Depends: {depends}\n" if depends else "") + f"Description: {package} stand-in for the offline tests\n")
    doc = tree / "usr/share/doc" / package / "README"
    doc.parent.mkdir(parents=True)
    doc.write_text(f"{package} {version}\n")
    if padding:
        (tree / "usr/share/doc" / package / "payload").write_bytes(os.urandom(padding))
    deb = dest / f"{package}_{version}_{ARCH}.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-Zgzip", "-z1", "--build", str(tree), str(deb)], check=True,
                   stdout=subprocess.DEVNULL)
    shutil.rmtree(tree)
    return deb


def start_archive(base: Path, padding: int = 0) -> AptRepository:
    """The signed archive, served on 127.0.0.1 (`.stop()` it; `.serve(.port)` starts it again)."""
    debs = base / "debs"
    debs.mkdir(parents=True)
    runtime = [make_deb(debs, "containerd", "1.7.24-0test1", "runc (>= 1.1)", padding),
               make_deb(debs, "runc", "1.1.12-0test1", "libseccomp2 (>= 2.5)", padding // 4),
               make_deb(debs, "libseccomp2", "2.5.5-1")]
    kube = [make_deb(debs, "cri-tools", "1.31.1-1.1", padding=padding // 2),
            make_deb(debs, "kubernetes-cni", "1.5.1-1.1", padding=padding // 2)]
    for version in KUBE_RELEASES:
        kube += [make_deb(debs, "kubelet", version, "kubernetes-cni (>= 1.2.0)", padding // 2),
                 make_deb(debs, "kubeadm", version, "cri-tools (>= 1.30.0)", padding // 2),
                 make_deb(debs, "kubectl", version, padding=padding // 2)]
    repo = AptRepository(base / "repo", SigningKey(base / "gnupg"), runtime, kube, arch=ARCH)
    repo.port = free_port()
    repo.serve(repo.port)
    return repo


def start_registry(base: Path) -> Registry:
    """The registry, started, holding every image of WORKER_IMAGES and CONTROL_PLANE_IMAGES (`.stop()` it)."""
    registry = Registry(base / "registry").start()
    populate(registry, [*WORKER_IMAGES, *CONTROL_PLANE_IMAGES], base / "images")
    return registry


def debugfs_write(image: Path, files: dict[str, bytes], work: Path) -> None:
    """Put `files` into the image's root filesystem with debugfs (an independent tool, not pi-image's layer)."""
    root = Card(image).root
    commands = []
    for n, (path, data) in enumerate(files.items()):
        host = work / f"file{n}"
        host.write_bytes(data)
        parents = [str(parent) for parent in reversed(Path(path).parents) if str(parent) != "/"]
        commands += [f'mkdir "{parent}"' for parent in parents] + [f'rm "{path}"', f'write "{host}" "{path}"']
    script = work / "debugfs.cmds"
    script.write_text("\n".join(commands) + "\n")
    tool("debugfs", "-w", "-f", script, root.spec)


def offline_base(sample: Path, work: Path, archive: AptRepository) -> Path:
    """A sparse copy of `sample` with a dpkg database and apt sources (see the module docstring)."""
    image = work / "base.img"
    tool("cp", "--sparse=always", sample, image)
    debugfs_write(image, {
        "/var/lib/dpkg/status": STATUS.format(arch=ARCH).encode(),
        "/etc/apt/sources.list": f"deb [signed-by=/usr/share/keyrings/test-archive.gpg] {ARCHIVE_HOST} bookworm "
                                 f"main\n".encode(),
        "/usr/share/keyrings/test-archive.gpg": archive.key.keyring.read_bytes()}, work)
    return image


def offline_args(archive: AptRepository, registry: Registry) -> list[str]:
    """`build --offline` with the archive's key and kube repository, and both mirrors."""
    mirrors = {"registry.k8s.io": registry.url, "ghcr.io": registry.url}
    return ["--offline", "--kube-key", str(archive.key.armored),
            "--set", f"kube_repo_url=http://127.0.0.1:{archive.port}/kube/v{{version}}/",
            "--set", f"package_mirrors={{{ARCHIVE_HOST}: http://127.0.0.1:{archive.port}/debian}}",
            "--set", f"registry_mirrors={json.dumps(mirrors)}"]
