"""`pi-image build --offline`: the node's packages and images on its card, resolved by the real apt against a signed
archive on 127.0.0.1 and fetched by the real skopeo from a real registry (Debian's docker-registry) on 127.0.0.1,
reached through the build's package_mirrors and registry_mirrors. Everything is read back with debugfs, apt-ftparchive's
own index, skopeo and containerd; a second build with both servers stopped comes from the cache alone.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from oci_registry import Registry, populate
from readback import KUBE_KEY, Card, PiImage, succeeded, tool

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "system"))
from apt_repo import AptRepository, SigningKey  # noqa: E402 - the boot test's signed archive, for arm64 here

ARCH = "arm64"
KUBE_RELEASES = ("1.31.3-1.1", "1.31.4-1.1")
ARCHIVE_HOST = "http://archive.invalid/debian"  # what the image's sources name: the build reaches it by package_mirrors
# What kubeadm v1.31.4 uses (kubeadm's constants, as minikube records them) and flannel v0.28.9's manifest names:
# written here, not taken from pi-image's data, so that the test checks that data.
WORKER_IMAGES = ("registry.k8s.io/kube-proxy:v1.31.4", "registry.k8s.io/coredns/coredns:v1.11.3",
                 "registry.k8s.io/pause:3.10", "ghcr.io/flannel-io/flannel:v0.28.9",
                 "ghcr.io/flannel-io/flannel-cni-plugin:v1.9.1-flannel3")
CONTROL_PLANE_IMAGES = ("registry.k8s.io/kube-apiserver:v1.31.4", "registry.k8s.io/kube-controller-manager:v1.31.4",
                        "registry.k8s.io/kube-scheduler:v1.31.4", "registry.k8s.io/etcd:3.5.15-0")
BUNDLE = "/var/lib/pi-image/bundle"

needs_tools = pytest.mark.skipif(not all(shutil.which(t) for t in ("skopeo", "docker-registry", "apt-ftparchive",
                                                                      "gpg", "dpkg-deb")),
                                 reason="needs skopeo, docker-registry, apt-utils, gpg and dpkg-deb (./dev test "
                                        "installs them)")
pytestmark = needs_tools


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def make_deb(dest: Path, package: str, version: str, depends: str = "") -> Path:
    """A small arm64 .deb made with dpkg-deb (a file under /usr/share/doc says what it is)."""
    tree = dest / f"{package}-{version}"
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "DEBIAN/control").write_text(
        f"Package: {package}\nVersion: {version}\nArchitecture: {ARCH}\nMaintainer: pi-image tests <nobody@invalid>\n"
        + (f"Depends: {depends}\n" if depends else "") + f"Description: {package} stand-in for the offline tests\n")
    doc = tree / "usr/share/doc" / package / "README"
    doc.parent.mkdir(parents=True)
    doc.write_text(f"{package} {version}\n")
    deb = dest / f"{package}_{version}_{ARCH}.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(tree), str(deb)], check=True,
                   stdout=subprocess.DEVNULL)
    shutil.rmtree(tree)
    return deb


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """A signed arm64 archive on 127.0.0.1: containerd -> runc -> libseccomp2 (the image has it), and kubelet/kubeadm/
    kubectl of two 1.31 patches with their dependencies (cri-tools, kubernetes-cni)."""
    base = tmp_path_factory.mktemp("offline-archive")
    debs = base / "debs"
    debs.mkdir()
    runtime = [make_deb(debs, "containerd", "1.7.24-0test1", "runc (>= 1.1)"),
               make_deb(debs, "runc", "1.1.12-0test1", "libseccomp2 (>= 2.5)"),
               make_deb(debs, "libseccomp2", "2.5.5-1")]
    kube = [make_deb(debs, "cri-tools", "1.31.1-1.1"), make_deb(debs, "kubernetes-cni", "1.5.1-1.1")]
    for version in KUBE_RELEASES:
        kube += [make_deb(debs, "kubelet", version, "kubernetes-cni (>= 1.2.0)"),
                 make_deb(debs, "kubeadm", version, "cri-tools (>= 1.30.0)"), make_deb(debs, "kubectl", version)]
    key = SigningKey(base / "gnupg")
    repo = AptRepository(base / "repo", key, runtime, kube, arch=ARCH)
    repo.port = free_port()
    repo.serve(repo.port)
    yield repo
    repo.stop()
    key.close()


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """Debian's docker-registry on 127.0.0.1 holding small real multi-platform images under kubeadm's and flannel's
    names (the mirror of registry.k8s.io and ghcr.io)."""
    base = tmp_path_factory.mktemp("offline-registry")
    with Registry(base / "registry").start() as running:
        populate(running, [*WORKER_IMAGES, *CONTROL_PLANE_IMAGES], base / "images")
        yield running


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


STATUS = """Package: dpkg
Status: install ok installed
Architecture: {arch}
Version: 1.21.1ubuntu2.3

Package: libseccomp2
Status: install ok installed
Architecture: {arch}
Version: 2.5.3-2ubuntu2
"""


@pytest.fixture(scope="module")
def offline_base(sample_image, tmp_path_factory, archive):
    """The Ubuntu sample with a dpkg database (arm64, libseccomp2 installed), apt sources naming ARCHIVE_HOST signed
    by a keyring in the image: what a real vendor image has."""
    work = tmp_path_factory.mktemp("offline-base")
    image = work / "base.img"
    tool("cp", "--sparse=always", sample_image("ubuntu-raspi"), image)
    debugfs_write(image, {
        "/var/lib/dpkg/status": STATUS.format(arch=ARCH).encode(),
        "/etc/apt/sources.list": f"deb [signed-by=/usr/share/keyrings/test-archive.gpg] {ARCHIVE_HOST} bookworm "
                                 f"main\n".encode(),
        "/usr/share/keyrings/test-archive.gpg": archive.key.keyring.read_bytes()}, work)
    return image


def offline_args(archive, registry) -> list[str]:
    mirrors = {"registry.k8s.io": registry.url, "ghcr.io": registry.url}
    return ["--offline", "--kube-key", str(archive.key.armored),
            "--set", f"kube_repo_url=http://127.0.0.1:{archive.port}/kube/v{{version}}/",
            "--set", f"package_mirrors={{{ARCHIVE_HOST}: http://127.0.0.1:{archive.port}/debian}}",
            "--set", f"registry_mirrors={json.dumps(mirrors)}"]


@pytest.fixture(scope="module")
def built(tmp_path_factory, offline_base, archive, registry):
    """A worker-8g built --offline, as a user with a fresh cache would."""
    work = tmp_path_factory.mktemp("offline-build")
    cli = PiImage(work / "cache")
    output = work / "worker.img"
    proc = succeeded(cli("build", "--profile", "worker-8g", "--base", offline_base, "-o", output,
                         *offline_args(archive, registry)))
    return cli, output, proc


def bundle_of(image: Path) -> dict:
    return json.loads(Card(image).root.text(f"{BUNDLE}/bundle.json"))


def test_the_card_carries_the_exact_closure_apt_resolved_for_the_image(built):
    _, output, _ = built
    bundle = bundle_of(output)
    packages = {entry["package"]: entry["version"] for entry in bundle["packages"]}

    assert packages == {"containerd": "1.7.24-0test1", "runc": "1.1.12-0test1", "cri-tools": "1.31.1-1.1",
                        "kubernetes-cni": "1.5.1-1.1", "kubelet": "1.31.4-1.1", "kubeadm": "1.31.4-1.1",
                        "kubectl": "1.31.4-1.1"}, "the newest 1.31 patch; libseccomp2 is in the image already"
    assert bundle["kubernetes"] == "1.31.4" and bundle["platform"] == "linux/arm64"
    root = Card(output).root
    for entry in bundle["packages"] + bundle["images"]:
        data = root.read(f"{BUNDLE}/{entry['file']}")
        assert data is not None and hashlib.sha256(data).hexdigest() == entry["sha256"], entry["file"]
        assert len(data) == entry["size"]
    assert "Pin: version 1.31.4-*" in root.text("/etc/apt/preferences.d/kubernetes"), "pinned to the bundle's patch"


def test_the_card_carries_every_image_for_its_platform_with_the_registrys_digests(built, registry, tmp_path):
    _, output, _ = built
    bundle = bundle_of(output)
    assert sorted(entry["reference"] for entry in bundle["images"]) == sorted(WORKER_IMAGES)
    for entry in bundle["images"]:
        archive = tmp_path / "archive.tar"
        archive.write_bytes(Card(output).root.read(f"{BUNDLE}/{entry['file']}"))
        inspected = json.loads(tool("skopeo", "inspect", f"oci-archive:{archive}").stdout)
        assert inspected["Architecture"] == "arm64" and inspected["Os"] == "linux"
        name = entry["reference"].split("/", 1)[1]
        index = json.loads(tool("skopeo", "inspect", "--raw", "--tls-verify=false",
                                f"docker://{registry.host}/{name}").stdout)
        [arm64] = [m["digest"] for m in index["manifests"] if m["platform"]["architecture"] == "arm64"]
        assert entry["digest"] == arm64, "the arm64 manifest of the registry's index, as it serves it"


def test_containerd_uses_kubeadms_pause_and_the_mirrors(built, tmp_path):
    _, output, _ = built
    root = Card(output).root
    config = tmp_path / "config.toml"
    config.write_bytes(root.read("/etc/containerd/config.toml"))
    dump = tomllib.loads(tool("containerd", "--config", config, "config", "dump").stdout.decode())
    cri = dump["plugins"]["io.containerd.grpc.v1.cri"]
    assert cri["sandbox_image"] == "registry.k8s.io/pause:3.10"
    assert cri["registry"]["config_path"] == "/etc/containerd/certs.d"
    hosts = tomllib.loads(root.text("/etc/containerd/certs.d/registry.k8s.io/hosts.toml"))
    assert hosts["server"] == "https://registry.k8s.io"
    [mirror] = hosts["host"]
    assert mirror.startswith("http://127.0.0.1:") and hosts["host"][mirror]["capabilities"] == ["pull", "resolve"]
    assert root.text("/etc/containerd/certs.d/ghcr.io/hosts.toml") is not None


def test_the_manifest_and_summary_say_what_the_bundle_adds(built):
    _, output, proc = built
    manifest = json.loads(output.with_name(output.name + ".json").read_text())
    assert manifest["bundle"]["kubernetes"] == "1.31.4" and manifest["bundle"]["size"] > 0
    assert manifest["kubernetes_release"] == "1.31.4"
    listed = {entry["path"] for entry in manifest["files"]}
    assert all(f"{BUNDLE}/{entry['file']}" in listed for entry in manifest["bundle"]["packages"])
    assert "offline     7 packages and 5 images on the card" in proc.stdout
    assert tool("e2fsck", "-fn", Card(output).root.spec).returncode == 0


def test_a_warm_cache_builds_the_same_card_with_no_network(built, offline_base, archive, registry, tmp_path):
    cli, output, _ = built
    args = offline_args(archive, registry)
    archive.stop()
    registry.stop()
    try:
        again = tmp_path / "again.img"
        succeeded(cli("build", "--profile", "worker-8g", "--base", offline_base, "-o", again, *args))
        assert bundle_of(again) == bundle_of(output)
    finally:
        archive.serve(archive.port)
        registry.start()


def test_pi_image_bundle_fills_the_cache_then_a_whole_cluster_builds_with_no_network(
        tmp_path, offline_base, archive, registry):
    cli = PiImage(tmp_path / "cache")
    directory = tmp_path / "lab"
    mirrors = [arg for host in ("registry.k8s.io", "ghcr.io") for arg in ("--registry-mirror", f"{host}={registry.url}")]
    succeeded(cli("cluster", "init", directory, "--api-server", "192.168.6.11:6443", "--endpoint", "192.168.6.11:8443",
                  "--kubernetes-version", "1.31", "--node-subnet", "192.168.6.0/24", "--gateway", "192.168.6.1",
                  "--offline", *mirrors))
    succeeded(cli("cluster", "add-node", directory, "pi-master1", "--profile", "master-2g", "--address", "192.168.6.11"))
    succeeded(cli("cluster", "add-node", directory, "pi-worker1", "--profile", "worker-8g"))
    args = [arg for arg in offline_args(archive, registry) if arg != "--offline"][:-2]  # the cluster gives the rest
    rows = json.loads(succeeded(cli("bundle", "--cluster", directory, "--base", offline_base, "--json",
                                    *args)).stdout)
    assert [(row["node"], row["kubernetes"], row["images"]) for row in rows] == [
        ("pi-worker1", "1.31.4", len(WORKER_IMAGES)), ("pi-master1", "1.31.4", len(WORKER_IMAGES + CONTROL_PLANE_IMAGES))]
    settings = (directory / "cluster.yaml").read_text()
    assert "kubernetes_release: 1.31.4" in settings and "offline: true" in settings

    archive.stop()
    registry.stop()
    try:
        succeeded(cli("build", "--cluster", directory, "--all", "--base", offline_base, "-o", tmp_path / "cards",
                      "--no-login", *args))
    finally:
        archive.serve(archive.port)
        registry.start()
    master = bundle_of(tmp_path / "cards" / "pi-master1.img")
    assert sorted(entry["reference"] for entry in master["images"]) == sorted(WORKER_IMAGES + CONTROL_PLANE_IMAGES)
    assert bundle_of(tmp_path / "cards" / "pi-worker1.img")["kubernetes"] == "1.31.4"


def test_a_root_too_small_for_the_bundle_is_grown_and_still_checks_clean(tmp_path, offline_base, archive, registry):
    """A vendor root cut to what its OS needs: the output's last partition and ext4 grow; the base is untouched."""
    base = tmp_path / "full.img"
    tool("cp", "--sparse=always", offline_base, base)
    root = Card(base).root
    tool("debugfs", "-w", "-R", "write /dev/null /filler", root.spec)
    tool("debugfs", "-w", "-R", "fallocate /filler 0 380000", root.spec)  # leaves ~150 MiB: less than the margin
    before = Card(base).table["partitions"][-1]
    output = tmp_path / "grown.img"

    proc = succeeded(PiImage(tmp_path / "cache")("build", "--profile", "worker-8g", "--base", base, "-o", output,
                                                 *offline_args(archive, registry)))

    after = Card(output).table["partitions"][-1]
    assert after["start"] == before["start"] and after["size"] > before["size"]
    manifest = json.loads(output.with_name(output.name + ".json").read_text())
    assert manifest["bundle"]["grown_by"] > 0
    assert "root grown by" in proc.stdout
    assert tool("e2fsck", "-fn", Card(output).root.spec, check=False).returncode == 0
    assert Card(base).table["partitions"][-1] == before, "the base is never written"


@pytest.mark.parametrize("setting, message", [
    ("registry_mirrors={registry.k8s.io: ftp://mirror.example}", "is not a registry mirror URL"),
    ("registry_mirrors={registry.k8s.io: https://mirror.example/k8s}", "a registry mirror is a host"),
    ("extra_images=[Not An Image!]", "is not an image reference"),
    ("package_mirrors={http://archive.invalid/debian: mirror.example}", "is not an http:// or https:// URL"),
])
def test_a_bad_offline_setting_is_one_line_naming_it(tmp_path, offline_base, setting, message):
    output = tmp_path / "out.img"
    proc = PiImage(tmp_path / "cache")("build", "--profile", "worker-8g", "--base", offline_base, "--offline",
                                       "--kube-key", KUBE_KEY, "--set", setting, "-o", output)
    assert proc.returncode == 1 and message in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert not output.exists()


def bad_base(tmp_path, offline_base, files: dict[str, bytes]) -> Path:
    base = tmp_path / "bad.img"
    tool("cp", "--sparse=always", offline_base, base)
    debugfs_write(base, files, tmp_path)
    return base


@pytest.mark.parametrize("case, message", [
    ("no-dpkg", "cannot read /var/lib/dpkg/status"),
    ("i386", "architecture is i386, for which Kubernetes publishes no images"),
    ("wrong-key", "apt cannot verify an archive the image uses"),
    ("unreachable", "apt cannot reach an archive the image uses"),
    ("missing-image", "cannot fetch the image registry.k8s.io/not-there:v1"),
])
def test_what_stops_a_bundle_is_one_line_and_nothing_is_left(tmp_path, offline_base, archive, registry, case,
                                                               message):
    args = offline_args(archive, registry)
    base = offline_base
    if case == "no-dpkg":
        base = bad_base(tmp_path, offline_base, {"/var/lib/dpkg/status": b""})
    elif case == "i386":
        base = bad_base(tmp_path, offline_base, {"/var/lib/dpkg/status": STATUS.format(arch="i386").encode()})
    elif case == "wrong-key":
        base = bad_base(tmp_path, offline_base, {"/usr/share/keyrings/test-archive.gpg": KUBE_KEY.read_bytes()})
    elif case == "unreachable":
        args = [arg.replace(f"127.0.0.1:{archive.port}/debian", "127.0.0.1:9/debian") for arg in args]
    else:
        args += ["--set", "extra_images=[registry.k8s.io/not-there:v1]"]
    cache = tmp_path / "cache"
    output = tmp_path / "out.img"

    proc = PiImage(cache)("build", "--profile", "worker-8g", "--base", base, "-o", output, *args)

    assert proc.returncode == 1, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if not line.startswith("pi-image: ") or "error" in line]
    assert len(errors) == 1 and message in errors[0] and "Traceback" not in proc.stderr, proc.stderr
    assert not output.exists() and not list(tmp_path.glob("*.img.tmp*"))
    assert not list((cache / "bundles").glob(".work-*")), "no half-made bundle in the cache"
