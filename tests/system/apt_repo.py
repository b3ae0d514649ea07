"""The package archives a booted guest installs from: a signed apt repository served over HTTP on 127.0.0.1.

    /debian/   the guest's own archive (`deb [signed-by=...] http://10.0.2.2:PORT/debian bookworm main`): the real
               Debian containerd and runc .debs, and whatever else they need that the guest's rootfs lacks
    /release/  the release path's stand-ins at dl.k8s.io's paths and names (release_tree): stable-1.MINOR.txt,
               vX.Y.Z/bin/linux/amd64/{kubeadm,kubelet,kubectl} (the recording stand-in with its release inside) each
               with its .sha256; /cri-tools/ and /cni-plugins/ as GitHub's release downloads lay out crictl's and the
               CNI plugins' archives; /release-tampered/ the same, but its kubeadm is not what its .sha256 says
    /kube/     a flat repository (`deb [signed-by=...] URL /`), reached as /kube/v1.30/, /kube/v1.31/ and /kube/v1.32/
               through the build's kube_repo_url: stand-in kubelet/kubeadm/kubectl .debs of the three minors (made
               here with dpkg-deb), so the image's apt pin has something to choose from, and an upgrade somewhere
               to go

The Debian .debs are resolved by apt itself against the cached rootfs's dpkg status (`apt-get install
--download-only`, Depends only: apt skips a Recommends such as criu when the archive lacks it) and cached beside the
rootfs. Both repositories are indexed with apt-ftparchive and signed with a throwaway gpg key made per session: the
guest's apt verifies InRelease against it (signed-by), as it does pkgs.k8s.io's.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from rootfs import cache_dir

from builder.run import run

SUITE = "bookworm"
ARCH = "amd64"
RUNTIME_PACKAGES = ("containerd", "runc")
KUBE_VERSIONS = ("1.30.5-1.1", "1.31.4-1.1", "1.32.1-1.1")
PREINSTALLED = "1.31.4-1.1"  # what the preinstalled base carries; 1.32 is what the upgrade story moves to
KUBE_TOOLS = ("kubelet", "kubeadm", "kubectl")
# What `kubeadm config images list` prints for each stand-in release, from kubeadm's own constants as minikube records
# them (pkg/minikube/constants/constants_kubeadm_images.go): the stand-in kubeadm package carries its list, as the
# real binary has it compiled in. Written here, not taken from pi-image's data, so that the boot test checks that.
KUBEADM_IMAGES = {
    "1.30.5": ("registry.k8s.io/kube-apiserver:v1.30.5", "registry.k8s.io/kube-controller-manager:v1.30.5",
               "registry.k8s.io/kube-scheduler:v1.30.5", "registry.k8s.io/kube-proxy:v1.30.5",
               "registry.k8s.io/coredns/coredns:v1.11.3", "registry.k8s.io/pause:3.9", "registry.k8s.io/etcd:3.5.15-0"),
    "1.31.4": ("registry.k8s.io/kube-apiserver:v1.31.4", "registry.k8s.io/kube-controller-manager:v1.31.4",
               "registry.k8s.io/kube-scheduler:v1.31.4", "registry.k8s.io/kube-proxy:v1.31.4",
               "registry.k8s.io/coredns/coredns:v1.11.3", "registry.k8s.io/pause:3.10",
               "registry.k8s.io/etcd:3.5.15-0"),
    "1.32.1": ("registry.k8s.io/kube-apiserver:v1.32.1", "registry.k8s.io/kube-controller-manager:v1.32.1",
               "registry.k8s.io/kube-scheduler:v1.32.1", "registry.k8s.io/kube-proxy:v1.32.1",
               "registry.k8s.io/coredns/coredns:v1.11.3", "registry.k8s.io/pause:3.10",
               "registry.k8s.io/etcd:3.5.16-0"),
}

PACKAGES_DIR = Path(__file__).parent / "guest" / "packages"
GUEST_KEYRING = "/etc/apt/keyrings/pi-image-test-archive.gpg"


def pod_network_images() -> list[str]:
    """The images the pod network's manifest runs on every node (the guest's stand-ins read the same file)."""
    path = Path(__file__).parent / "guest/test-tools/usr/local/lib/pi-image-test/pod-network-images"
    return [line for line in path.read_text().splitlines() if line and not line.startswith("#")]


def kube_release(minor: str) -> str:
    """The Kubernetes release the archive's stand-ins are of, for a minor: '1.30' -> 'v1.30.5'."""
    [version] = [version for version in KUBE_VERSIONS if version.startswith(minor + ".")]
    return "v" + version.split("-")[0]


def runtime_debs(rootfs: Path, packages: tuple[str, ...] = RUNTIME_PACKAGES, log=print) -> list[Path]:
    """The .debs apt would fetch to install `packages` on `rootfs` (cached per rootfs and package list)."""
    key = hashlib.sha256(json.dumps([rootfs.name, packages, ARCH]).encode()).hexdigest()[:16]
    dest = cache_dir() / f"debs-{key}"
    with open(cache_dir() / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not dest.is_dir():
            work = dest.with_name(dest.name + ".tmp")
            shutil.rmtree(work, ignore_errors=True)
            (work / "partial").mkdir(parents=True)
            status = work / "status"
            shutil.copyfile(rootfs / "var/lib/dpkg/status", status)
            log(f"system test: apt-get download {' '.join(packages)} for the guest (once per rootfs)")
            run(["apt-get", "install", "--download-only", "--no-install-recommends", "-y", "-q",
                 "-o", f"Dir::State::status={status}", "-o", f"Dir::Cache::archives={work}",
                 "-o", f"APT::Architecture={ARCH}", *packages])
            shutil.rmtree(work / "partial")
            status.unlink()
            (work / "lock").unlink(missing_ok=True)
            os.replace(work, dest)
    return sorted(dest.glob("*.deb"))


def standin_debs(dest: Path) -> list[Path]:
    """kubelet, kubeadm and kubectl for each of KUBE_VERSIONS: the recording stand-in as /usr/bin/TOOL (kubelet
    with its unit), built with dpkg-deb."""
    dest.mkdir(parents=True, exist_ok=True)
    debs = []
    for version in KUBE_VERSIONS:
        for tool in KUBE_TOOLS:
            tree = dest / f"{tool}-{version}"
            (tree / "DEBIAN").mkdir(parents=True)
            (tree / "DEBIAN/control").write_text(
                f"Package: {tool}\nVersion: {version}\nArchitecture: {ARCH}\nSection: admin\nPriority: optional\n"
                f"Maintainer: pi-image boot test <nobody@invalid>\n"
                f"Description: {tool} stand-in (pi-image boot test: there is no control plane)\n")
            binary = tree / "usr/bin" / tool
            binary.parent.mkdir(parents=True)
            shutil.copyfile(PACKAGES_DIR / "standin", binary)
            binary.chmod(0o755)
            if tool == "kubelet":
                unit = tree / "usr/lib/systemd/system/kubelet.service"
                unit.parent.mkdir(parents=True)
                shutil.copyfile(PACKAGES_DIR / "kubelet.service", unit)
            if tool == "kubeadm":
                images = tree / "usr/share/kubeadm-standin/images"
                images.parent.mkdir(parents=True)
                images.write_text("".join(image + "\n" for image in KUBEADM_IMAGES[version.split("-")[0]]))
            deb = dest / f"{tool}_{version}_{ARCH}.deb"
            run(["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(tree), str(deb)])
            shutil.rmtree(tree)
            debs.append(deb)
    return debs


class SigningKey:
    """A throwaway gpg key in its own GNUPGHOME: signs Release files; exported for apt's signed-by and --kube-key."""

    def __init__(self, home: Path):
        self.home = home
        home.mkdir(mode=0o700, parents=True)
        self.env = dict(os.environ, GNUPGHOME=str(home))
        self._gpg("--quick-gen-key", "pi-image boot test archive <nobody@invalid>", "ed25519", "sign", "never")
        self.keyring = home / "archive.gpg"  # binary: what signed-by= reads
        self.keyring.write_bytes(self._gpg("--export").stdout)
        self.armored = home / "Release.key"  # armored, as pkgs.k8s.io publishes it (for pi-image --kube-key)
        self.armored.write_bytes(self._gpg("--armor", "--export").stdout)

    def sign(self, release: Path) -> None:
        """InRelease (clear-signed) and Release.gpg (detached) beside `release`."""
        self._gpg("--clearsign", "-o", str(release.with_name("InRelease")), str(release))
        self._gpg("--detach-sign", "--armor", "-o", str(release.with_name("Release.gpg")), str(release))

    def close(self) -> None:
        """Stop the gpg-agent this key's GNUPGHOME started (it would outlive the test session)."""
        subprocess.run(["gpgconf", "--kill", "gpg-agent"], env=self.env, check=False,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def _gpg(self, *args: str):
        return run(["gpg", "--batch", "--quiet", "--pinentry-mode", "loopback", "--passphrase", "", *args],
                   env=self.env)


class AptRepository:
    """Both repositories under `root`, signed by `key`, served by `serve()` on 127.0.0.1."""

    def __init__(self, root: Path, key: SigningKey, runtime: list[Path], kube: list[Path], arch: str = ARCH,
                 more: list[Path] | None = None):
        """`runtime` and `kube` are what an image may preinstall (debs()); `more` is only in the archive (what the
        release path installs beside the runtime)."""
        self.root = root
        self.runtime, self.kube = runtime, kube
        self.key = key
        self.log = root.with_name("apt-repo.log")
        pool = root / "debian" / "pool"
        pool.mkdir(parents=True)
        for deb in [*runtime, *(more or [])]:
            shutil.copyfile(deb, pool / deb.name)
        dists = root / "debian" / "dists" / SUITE
        index = dists / "main" / f"binary-{arch}"
        index.mkdir(parents=True)
        (index / "Packages").write_bytes(self._ftparchive(root / "debian", "packages", "pool"))
        fields = {"Suite": SUITE, "Codename": SUITE, "Components": "main", "Architectures": arch}
        options = [arg for name, value in fields.items() for arg in ("-o", f"APT::FTPArchive::Release::{name}={value}")]
        self._release(dists, root / "debian", f"dists/{SUITE}", *options)
        flat = root / "kube"
        flat.mkdir()
        for deb in kube:
            shutil.copyfile(deb, flat / deb.name)
        (flat / "Packages").write_bytes(self._ftparchive(flat, "packages", "."))
        self._release(flat, flat, ".")
        for version in KUBE_VERSIONS:  # what kube_repo_url's {version} names: one flat repository for all
            os.symlink(".", flat / ("v" + ".".join(version.split(".")[:2])))
        self.server: ThreadingHTTPServer | None = None

    def _ftparchive(self, cwd: Path, *args: str) -> bytes:
        """apt-ftparchive run in `cwd` (the paths it writes into the indexes are relative to the repository)."""
        return subprocess.run(["apt-ftparchive", *args], cwd=cwd, stdout=subprocess.PIPE, check=True).stdout

    def _release(self, where: Path, cwd: Path, path: str, *options: str) -> None:
        release = self._ftparchive(cwd, *options, "release", path)
        (where / "Release").write_bytes(release)
        self.key.sign(where / "Release")

    def serve(self, port: int) -> None:
        log = self.log

        class Handler(SimpleHTTPRequestHandler):
            def log_message(self, format, *args):  # noqa: A002 - http.server's name
                with open(log, "a") as handle:
                    handle.write((format % args) + "\n")

        self.server = ThreadingHTTPServer(("127.0.0.1", port), partial(Handler, directory=str(self.root)))
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self.server:
            self.server.shutdown()
            self.server.server_close()

    def debs(self, kube_version: str) -> list[Path]:
        """The runtime .debs and the kube stand-ins of one KUBE_VERSIONS entry."""
        return self.runtime + [deb for deb in self.kube if f"_{kube_version}_" in deb.name]

    def guest_files(self, dest: Path, port: int) -> Path:
        """A tree to add to the guest: its apt sources pointing at this archive, and the archive's keyring."""
        keyring = dest / GUEST_KEYRING.lstrip("/")
        keyring.parent.mkdir(parents=True)
        shutil.copyfile(self.key.keyring, keyring)
        sources = dest / "etc/apt/sources.list"
        sources.write_text(f"# The boot test's archive on the host (QEMU user networking: 10.0.2.2 is its 127.0.0.1)\n"
                           f"deb [signed-by={GUEST_KEYRING}] http://10.0.2.2:{port}/debian {SUITE} main\n")
        return dest

    def kube_repo_url(self, port: int) -> str:
        """The build's kube_repo_url setting for this archive."""
        return f"http://10.0.2.2:{port}/kube/v{{version}}/"


def release_tree(root: Path, tools: dict[str, tuple[str, str]]) -> None:
    """The release path's downloads under `root` (see the module docstring): for each KUBE_VERSIONS release, the
    stand-in binaries at dl.k8s.io's paths, and crictl and the CNI plugins at the versions `tools` gives its minor
    ({"1.31": (crictl version, CNI plugins version)}), each with the .sha256 its publisher puts beside it. The stand-in
    crictl and plugins are small scripts: nothing in the boot test runs a pod."""
    standin = (PACKAGES_DIR / "standin").read_text()
    for version in KUBE_VERSIONS:
        release = "v" + version.split("-")[0]
        minor = ".".join(release[1:].split(".")[:2])
        _publish(root / "release" / f"stable-{minor}.txt", f"{release}\n".encode(), checksum=False)
        images = " ".join(KUBEADM_IMAGES[release[1:]])
        binary = standin.replace('RELEASE=""', f'RELEASE="{release}"').replace('IMAGES=""', f'IMAGES="{images}"')
        for tool in KUBE_TOOLS:
            _publish(root / "release" / release / "bin/linux" / ARCH / tool, binary.encode())
            tampered = binary.replace("exit 0\n", "exit 0\n# changed on the way\n") if tool == "kubeadm" else binary
            _publish(root / "release-tampered" / release / "bin/linux" / ARCH / tool, tampered.encode(),
                     checksum_of=binary.encode())
        crictl, cni = tools[minor]
        _publish(root / "cri-tools" / crictl / f"crictl-{crictl}-linux-{ARCH}.tar.gz",
                 _tarball({"crictl": f"#!/bin/sh\necho 'crictl version {crictl}'\n"}))
        plugins = {name: f"#!/bin/sh\n# CNI plugin {name} {cni} stand-in\n" for name in
                   ("bridge", "host-local", "loopback", "portmap")}
        _publish(root / "cni-plugins" / cni / f"cni-plugins-linux-{ARCH}-{cni}.tgz", _tarball(plugins, prefix="./"))
    for stable in (root / "release").glob("stable-*.txt"):
        shutil.copyfile(stable, root / "release-tampered" / stable.name)


def _publish(path: Path, data: bytes, checksum: bool = True, checksum_of: bytes | None = None) -> None:
    """`data` at `path`, and beside it `path.sha256` holding the SHA-256 of `checksum_of` (default: of `data`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(0o755)
    if checksum:
        path.with_name(path.name + ".sha256").write_text(hashlib.sha256(checksum_of or data).hexdigest() + "\n")


def _tarball(files: dict[str, str], prefix: str = "") -> bytes:
    """A gzip'd tar of executable `files` ({name: text}), names prefixed as their publisher's are."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, text in files.items():
            info = tarfile.TarInfo(prefix + name)
            info.size, info.mode, info.mtime = len(text.encode()), 0o755, 1700000000
            archive.addfile(info, io.BytesIO(text.encode()))
    return buffer.getvalue()
