"""`pi-image build --offline`: the node's packages and images on its card, resolved by the real apt against a signed
archive on 127.0.0.1 and fetched by the real skopeo from a real registry (Debian's docker-registry) on 127.0.0.1,
reached through the build's package_mirrors and registry_mirrors. Everything is read back with debugfs, apt-ftparchive's
own index, skopeo and containerd; a second build with both servers stopped comes from the cache alone.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import tomllib
from oci_registry import populate
from offline_world import (
    CONTROL_PLANE_IMAGES,
    STATUS,
    WORKER_IMAGES,
    debugfs_write,
    offline_args,
    offline_base,
    start_archive,
    start_registry,
)
from readback import KUBE_KEY, Card, PiImage, succeeded, tool

BUNDLE = "/var/lib/pi-image/bundle"

pytestmark = pytest.mark.skipif(not all(shutil.which(t) for t in ("skopeo", "docker-registry", "apt-ftparchive",
                                                                   "gpg", "dpkg-deb")),
                                reason="needs skopeo, docker-registry, apt-utils, gpg and dpkg-deb (./dev test "
                                       "installs them)")


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    repo = start_archive(tmp_path_factory.mktemp("offline-archive"))
    yield repo
    repo.stop()
    repo.key.close()


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    running = start_registry(tmp_path_factory.mktemp("offline-registry"))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def base(sample_image, tmp_path_factory, archive):
    return offline_base(sample_image("ubuntu-raspi"), tmp_path_factory.mktemp("offline-base"), archive)


@pytest.fixture(scope="module")
def built(tmp_path_factory, base, archive, registry):
    """A worker-8g built --offline, as a user with a fresh cache would."""
    work = tmp_path_factory.mktemp("offline-build")
    cli = PiImage(work / "cache")
    output = work / "worker.img"
    proc = succeeded(cli("build", "--profile", "worker-8g", "--base", base, "-o", output,
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
    assert all(entry["unpacked"] for entry in bundle["packages"]), "this host's dpkg unpacked them into the image"
    root = Card(output).root
    for entry in bundle["images"]:
        data = root.read(f"{BUNDLE}/{entry['file']}")
        assert data is not None and hashlib.sha256(data).hexdigest() == entry["sha256"], entry["file"]
        assert len(data) == entry["size"]
    assert "Pin: version 1.31.4-*" in root.text("/etc/apt/preferences.d/kubernetes"), "pinned to the bundle's patch"


def test_the_packages_are_unpacked_in_the_image_as_dpkg_leaves_them_for_the_node_to_configure(built, tmp_path):
    _, output, _ = built
    root = Card(output).root
    admin = tmp_path / "dpkg"
    (admin / "info").mkdir(parents=True)
    (admin / "status").write_bytes(root.read("/var/lib/dpkg/status"))
    for package in ("containerd", "kubeadm"):
        (admin / "info" / f"{package}.list").write_bytes(root.read(f"/var/lib/dpkg/info/{package}.list"))
    listed = tool("dpkg-query", f"--admindir={admin}", "-W", "-f=${Package} ${Version} ${db:Status-Abbrev}\n",
                  "containerd", "kubeadm", "libseccomp2").stdout.decode().splitlines()
    listing = tool("dpkg-query", f"--admindir={admin}", "-L", "containerd").stdout.decode().split()

    assert sorted(line.split()[0] + " " + line.split()[2] for line in listed) == \
        ["containerd iU", "kubeadm iU", "libseccomp2 ii"], "unpacked: the node's dpkg --configure -a finishes them"
    assert "/usr/share/doc/containerd/README" in listing
    assert root.read("/usr/share/doc/containerd/README") is not None
    assert "debs" not in root.listdir(BUNDLE), "no .deb beside its own files"
    assert tool("e2fsck", "-fn", root.spec).returncode == 0


def test_the_card_carries_every_image_for_its_platform_with_the_registrys_digests(built, registry, tmp_path):
    _, output, _ = built
    bundle = bundle_of(output)
    assert sorted(entry["reference"] for entry in bundle["images"]) == sorted(WORKER_IMAGES)
    [file] = {entry["file"] for entry in bundle["images"]}  # one archive holds them all: one import at first boot
    archive = tmp_path / "archive.tar"
    archive.write_bytes(Card(output).root.read(f"{BUNDLE}/{file}"))
    for entry in bundle["images"]:
        inspected = json.loads(tool("skopeo", "inspect", f"oci-archive:{archive}:{entry['reference']}").stdout)
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
    assert {"/var/lib/dpkg/status", "/var/lib/dpkg/info/containerd.list"} <= listed
    assert "offline     7 packages and 5 images on the card" in proc.stdout
    inspected = succeeded(built[0]("inspect", output)).stdout
    assert "offline         yes: 7 packages and 5 images for linux/arm64" in inspected
    assert "Kubernetes 1.31.4" in inspected
    assert tool("e2fsck", "-fn", Card(output).root.spec).returncode == 0


def test_a_warm_cache_builds_the_same_card_with_no_network(built, base, archive, registry, tmp_path):
    cli, output, _ = built
    args = offline_args(archive, registry)
    archive.stop()
    registry.stop()
    try:
        again = tmp_path / "again.img"
        succeeded(cli("build", "--profile", "worker-8g", "--base", base, "-o", again, *args))
        assert bundle_of(again) == bundle_of(output)
    finally:
        archive.serve(archive.port)
        registry.start()


def test_pi_image_bundle_fills_the_cache_then_a_whole_cluster_builds_with_no_network(
        tmp_path, base, archive, registry):
    cli = PiImage(tmp_path / "cache")
    directory = tmp_path / "lab"
    mirrors = [arg for host in ("registry.k8s.io", "ghcr.io")
               for arg in ("--registry-mirror", f"{host}={registry.url}")]
    succeeded(cli("cluster", "init", directory, "--api-server", "192.168.6.11:6443", "--endpoint", "192.168.6.11:8443",
                  "--kubernetes-version", "1.31", "--node-subnet", "192.168.6.0/24", "--gateway", "192.168.6.1",
                  "--offline", *mirrors))
    succeeded(cli("cluster", "add-node", directory, "pi-master1", "--profile", "master-2g",
                  "--address", "192.168.6.11"))
    succeeded(cli("cluster", "add-node", directory, "pi-worker1", "--profile", "worker-8g"))
    args = [arg for arg in offline_args(archive, registry) if arg != "--offline"][:-2]  # the cluster gives the rest
    rows = json.loads(succeeded(cli("bundle", "--cluster", directory, "--base", base, "--json",
                                    *args)).stdout)
    assert [(row["node"], row["kubernetes"], row["images"]) for row in rows] == [
        ("pi-worker1", "1.31.4", len(WORKER_IMAGES)),
        ("pi-master1", "1.31.4", len(WORKER_IMAGES + CONTROL_PLANE_IMAGES))]
    settings = (directory / "cluster.yaml").read_text()
    assert "kubernetes_release: 1.31.4" in settings and "offline: true" in settings

    archive.stop()
    registry.stop()
    try:
        succeeded(cli("build", "--cluster", directory, "--all", "--base", base, "-o", tmp_path / "cards",
                      "--no-login", *args))
        profile_image = tmp_path / "worker-8g.img"  # a fleet image, a node stamped onto each card at flash time
        succeeded(cli("build", "--cluster", directory, "--profile", "worker-8g", "--base", base, "-o", profile_image,
                      "--no-login", *args))
        card = tmp_path / "card.img"
        succeeded(cli("flash", profile_image, card, "--cluster", directory, "--yes"))
    finally:
        archive.serve(archive.port)
        registry.start()
    stamped = bundle_of(card)
    assert stamped == bundle_of(tmp_path / "cards" / "pi-worker1.img"), "the card carries the fleet image's bundle"
    master = bundle_of(tmp_path / "cards" / "pi-master1.img")
    assert sorted(entry["reference"] for entry in master["images"]) == sorted(WORKER_IMAGES + CONTROL_PLANE_IMAGES)
    assert bundle_of(tmp_path / "cards" / "pi-worker1.img")["kubernetes"] == "1.31.4"


def test_a_root_too_small_for_the_bundle_is_grown_and_still_checks_clean(tmp_path, base, archive, registry):
    """A vendor root cut to what its OS needs: the output's last partition and ext4 grow; the base is untouched."""
    full = tmp_path / "full.img"
    tool("cp", "--sparse=always", base, full)
    root = Card(full).root
    tool("debugfs", "-w", "-R", "write /dev/null /filler", root.spec)
    tool("debugfs", "-w", "-R", "fallocate /filler 0 380000", root.spec)  # leaves ~150 MiB: less than the margin
    before = Card(full).table["partitions"][-1]
    output = tmp_path / "grown.img"

    proc = succeeded(PiImage(tmp_path / "cache")("build", "--profile", "worker-8g", "--base", full, "-o", output,
                                                 *offline_args(archive, registry)))

    after = Card(output).table["partitions"][-1]
    assert after["start"] == before["start"] and after["size"] > before["size"]
    manifest = json.loads(output.with_name(output.name + ".json").read_text())
    assert manifest["bundle"]["grown_by"] > 0
    assert "root grown by" in proc.stdout
    assert tool("e2fsck", "-fn", Card(output).root.spec, check=False).returncode == 0
    assert Card(full).table["partitions"][-1] == before, "the base is never written"


@pytest.mark.parametrize("setting, message", [
    ("registry_mirrors={registry.k8s.io: ftp://mirror.example}", "is not a registry mirror URL"),
    ("registry_mirrors={registry.k8s.io: https://mirror.example/k8s}", "a registry mirror is a host"),
    ("extra_images=[Not An Image!]", "is not an image reference"),
    ("package_mirrors={http://archive.invalid/debian: mirror.example}", "is not an http:// or https:// URL"),
])
def test_a_bad_offline_setting_is_one_line_naming_it(tmp_path, base, setting, message):
    output = tmp_path / "out.img"
    proc = PiImage(tmp_path / "cache")("build", "--profile", "worker-8g", "--base", base, "--offline",
                                       "--kube-key", KUBE_KEY, "--set", setting, "-o", output)
    assert proc.returncode == 1 and message in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert not output.exists()


def bad_base(tmp_path, base, files: dict[str, bytes]) -> Path:
    bad = tmp_path / "bad.img"
    tool("cp", "--sparse=always", base, bad)
    debugfs_write(bad, files, tmp_path)
    return bad


@pytest.mark.parametrize("case, message", [
    ("no-dpkg", "cannot read /var/lib/dpkg/status"),
    ("i386", "architecture is i386, for which Kubernetes publishes no images"),
    ("wrong-key", "apt cannot verify an archive the image uses"),
    ("unreachable", "apt cannot reach an archive the image uses"),
    ("missing-image", "cannot fetch the image registry.k8s.io/not-there:v1"),
])
def test_what_stops_a_bundle_is_one_line_and_nothing_is_left(tmp_path, base, archive, registry, case,
                                                               message):
    args = offline_args(archive, registry)
    if case == "no-dpkg":
        base = bad_base(tmp_path, base, {"/var/lib/dpkg/status": b""})
    elif case == "i386":
        base = bad_base(tmp_path, base, {"/var/lib/dpkg/status": STATUS.format(arch="i386").encode()})
    elif case == "wrong-key":
        base = bad_base(tmp_path, base, {"/usr/share/keyrings/test-archive.gpg": KUBE_KEY.read_bytes()})
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


def test_a_damaged_cache_entry_is_fetched_again_never_used(built, base, archive, registry, tmp_path):
    cli, output, _ = built
    cache = cli.cache / "bundles"
    [deb] = cache.glob("packages/*/*/containerd_*.deb")
    for damaged in (deb, min(cache.glob("images/*.oci.tar"))):
        data = bytearray(damaged.read_bytes())
        data[len(data) // 2] ^= 0xFF
        damaged.write_bytes(bytes(data))

    again = tmp_path / "again.img"
    proc = succeeded(cli("build", "--profile", "worker-8g", "--base", base, "-o", again,
                         *offline_args(archive, registry)))

    assert "do not match their SHA-256s: downloading them again" in proc.stderr
    assert "again: the cached copy does not match its SHA-256" in proc.stderr
    assert bundle_of(again) == bundle_of(output)


def test_a_clusters_recorded_release_is_bundled_even_when_the_archive_offers_a_newer_one(
        tmp_path, base, archive, registry):
    cli = PiImage(tmp_path / "cache")
    directory = tmp_path / "lab"
    succeeded(cli("cluster", "init", directory, "--api-server", "192.168.6.11:6443", "--endpoint", "192.168.6.11:8443",
                  "--kubernetes-version", "1.31", "--node-subnet", "192.168.6.0/24", "--offline"))
    settings = directory / "cluster.yaml"
    settings.write_text(settings.read_text() + "kubernetes_release: 1.31.3\n")
    succeeded(cli("cluster", "add-node", directory, "pi-worker1", "--profile", "worker-8g"))
    args = [arg for arg in offline_args(archive, registry) if arg != "--offline"]
    populate(registry, ["registry.k8s.io/kube-proxy:v1.31.3"], tmp_path / "images")  # 1.31.3's own image

    proc = succeeded(cli("build", "--cluster", directory, "--node", "pi-worker1", "--base", base,
                         "-o", tmp_path / "w.img", *args))
    assert "the archive offers Kubernetes 1.31.4; the cluster's cards run 1.31.3" in proc.stderr
    assert {entry["package"]: entry["version"] for entry in bundle_of(tmp_path / "w.img")["packages"]}["kubeadm"] \
        == "1.31.3-1.1"

    settings.write_text(settings.read_text().replace("1.31.3", "1.31.2"))
    proc = cli("build", "--cluster", directory, "--node", "pi-worker1", "--base", base, "-o", tmp_path / "x.img",
               *args)
    assert proc.returncode == 1 and "run Kubernetes 1.31.2, which the archive no longer offers" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_a_users_image_table_that_does_not_add_up_is_one_line(tmp_path, base, monkeypatch):
    table = tmp_path / "kubeadm-images.yaml"
    table.write_text('minors:\n  "1.31": [{to: 9, etcd: 3.5.99-0}]\n')
    proc = PiImage(tmp_path / "cache")("build", "--profile", "worker-8g", "--base", base, "--offline", "--kube-key",
                                       KUBE_KEY, "-o", tmp_path / "out.img",
                                       env={"PI_IMAGE_KUBEADM_IMAGES": str(table)})
    assert proc.returncode == 1 and "minors.1.31 must be a list of" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
