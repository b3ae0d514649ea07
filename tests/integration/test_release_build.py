"""`kube_install: release`: a node that installs Kubernetes from the upstream release, not from pkgs.k8s.io. The build
asks a release location on 127.0.0.1 (laid out as dl.k8s.io and the GitHub releases of cri-tools and the CNI plugins)
for the newest patch and each asset's published SHA-256, records them in node.json, writes the kubelet's unit and
kubeadm's drop-in, and no apt repository of Kubernetes. With --offline the card carries the five assets and the
runtime's packages only (apt against the signed test archive, images from the test registry: offline_world.py),
fetched through package_mirrors. Read back with debugfs.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from http_fixture import FileServer
from offline_world import ARCHIVE_HOST, STATUS, debugfs_write, offline_base, start_archive, start_registry
from readback import Card, PiImage, filesystems, make_cluster, succeeded

RELEASE, CRICTL, CNI, ARCH = "1.31.4", "v1.31.1", "v1.5.1", "arm64"  # the Ubuntu sample is an arm64 board image
ASSETS = {
    "kubeadm": f"release/v{RELEASE}/bin/linux/{ARCH}/kubeadm",
    "kubelet": f"release/v{RELEASE}/bin/linux/{ARCH}/kubelet",
    "kubectl": f"release/v{RELEASE}/bin/linux/{ARCH}/kubectl",
    f"crictl-{CRICTL}-linux-{ARCH}.tar.gz": f"cri-tools/{CRICTL}/crictl-{CRICTL}-linux-{ARCH}.tar.gz",
    f"cni-plugins-linux-{ARCH}-{CNI}.tgz": f"plugins/{CNI}/cni-plugins-linux-{ARCH}-{CNI}.tgz",
}
MIRRORED = "https://dl.invalid"  # the release location as the node names it: the build host reaches it by a mirror
UNIT = "/etc/systemd/system/kubelet.service"
DROP_IN = "/etc/systemd/system/kubelet.service.d/10-kubeadm.conf"


def bodies() -> dict[str, bytes]:
    return {name: f"{name} {RELEASE} stand-in\n".encode() * 64 for name in ASSETS}


@pytest.fixture(scope="module")
def location():
    """The release location: stable-1.31.txt, every asset and its `.sha256` (one with the file's name after it, as
    the CNI plugins publish theirs)."""
    files: dict[str, bytes] = {"release/stable-1.31.txt": f"v{RELEASE}\n".encode()}
    for name, path in ASSETS.items():
        data = bodies()[name]
        digest = hashlib.sha256(data).hexdigest()
        files[path] = data
        files[path + ".sha256"] = (f"{digest}  {name}\n" if name.startswith("cni") else digest).encode()
    server = FileServer(files)
    yield server
    server.close()


def release_sets(server: FileServer) -> list[str]:
    return ["--set", "kube_install=release", "--set", f"kube_release_url={server.url('release')}",
            "--set", f"crictl_url={server.url('cri-tools')}", "--set", f"cni_plugins_url={server.url('plugins')}"]


@pytest.fixture(scope="module")
def worker(cli, base, location, tmp_path_factory) -> Path:
    image = tmp_path_factory.mktemp("release") / "w.img"
    succeeded(cli("build", "--profile", "worker-8g", "--base", base, "-o", image, *release_sets(location)))
    return image


def test_node_json_records_the_exact_patch_and_every_assets_published_digest(worker, location):
    config = json.loads(filesystems(worker)["root"].text("/etc/pi-image/node.json"))

    assert config["kube_install"] == "release" and config["kubernetes_release"] == RELEASE
    assert "package_manager" not in config, "apt, the default, is not written"
    release = config["release"]
    assert release["sha256"] == {name: hashlib.sha256(data).hexdigest() for name, data in bodies().items()}
    assert (release["arch"], release["crictl_version"], release["cni_version"]) == (ARCH, CRICTL, CNI)
    assert release["kube_url"] == location.url("release")
    assert config["runtime_packages"] == ["containerd", "conntrack", "socat", "ethtool", "iptables"]
    assert not [path for path, _, _ in location.log if not path.endswith((".sha256", ".txt"))], \
        "the build fetches the checksums, never an asset's body"


def test_the_kubelet_unit_and_kubeadms_drop_in_run_the_release_binaries(worker):
    root = filesystems(worker)["root"]
    unit, drop_in = root.text(UNIT), root.text(DROP_IN)

    assert "ExecStart=/usr/local/bin/kubelet\n" in unit and "/usr/bin/" not in unit
    assert "ExecStart=/usr/local/bin/kubelet $KUBELET_KUBECONFIG_ARGS $KUBELET_CONFIG_ARGS" in drop_in
    assert "EnvironmentFile=-/var/lib/kubelet/kubeadm-flags.env" in drop_in
    link = root.stat("/etc/systemd/system/multi-user.target.wants/kubelet.service")
    assert link is not None and link.target == UNIT, "enabled, as the kubelet package enables it"


def test_no_apt_repository_of_kubernetes_is_in_the_image(worker):
    root = filesystems(worker)["root"]

    for path in ("/etc/apt/sources.list.d/kubernetes.list", "/etc/apt/preferences.d/kubernetes",
                 "/etc/apt/keyrings/kubernetes-apt-keyring.gpg"):
        assert root.stat(path) is None, path


def test_a_cluster_records_the_patch_so_every_card_gets_the_same(cli, base, location, tmp_path):
    lab = make_cluster(cli, tmp_path / "lab", "192.168.6.0/24", {"pi-worker1": ["--profile", "worker-8g"]})
    succeeded(cli("build", "--cluster", lab, "--node", "pi-worker1", "--base", base, "-o", tmp_path / "w.img",
                  *release_sets(location)))

    assert f"kubernetes_release: {RELEASE}" in (lab / "cluster.yaml").read_text()


def test_a_release_that_does_not_exist_is_one_line_naming_it(cli, base, location, tmp_path):
    proc = cli("build", "--profile", "worker-8g", "--base", base, "-o", tmp_path / "w.img", *release_sets(location),
               "--set", "kube_release_url=" + location.url("nowhere"))

    one_line(proc, "stable-1.31.txt", "kube_release_url")
    assert not (tmp_path / "w.img").exists()


def test_an_asset_whose_checksum_is_missing_is_one_line_naming_it(cli, base, location, tmp_path):
    proc = cli("build", "--profile", "worker-8g", "--base", base, "-o", tmp_path / "w.img", *release_sets(location),
               "--set", "crictl_url=" + location.url("elsewhere"))

    one_line(proc, f"crictl-{CRICTL}-linux-{ARCH}.tar.gz.sha256", "crictl_url")


def test_dry_run_shows_the_units_and_downloads_nothing(cli, base, location):
    before = len(location.log)
    proc = succeeded(cli("build", "--profile", "worker-8g", "--base", base, "--dry-run", *release_sets(location)))

    assert UNIT in proc.stdout and DROP_IN in proc.stdout and "kubernetes.list" not in proc.stdout
    assert len(location.log) == before


def test_profiles_keys_lists_the_new_settings(cli):
    keys = succeeded(cli("profiles", "--keys")).stdout

    for key in ("kube_install", "kube_release_url", "crictl_url", "cni_plugins_url"):
        assert key in keys


offline_tools = pytest.mark.skipif(
    not all(shutil.which(t) for t in ("skopeo", "docker-registry", "apt-ftparchive", "gpg", "dpkg-deb")),
    reason="needs skopeo, docker-registry, apt-utils, gpg and dpkg-deb (./dev test installs them)")


@pytest.fixture(scope="module")
def offline_card(sample_image, location, tmp_path_factory) -> Path:
    """A worker built --offline on the release path, its release location named as the node would reach it and
    fetched through package_mirrors. The kubelet's dependencies are installed in the base already (the test archive
    holds the runtime only)."""
    work = tmp_path_factory.mktemp("release-offline")
    archive, registry = start_archive(work / "archive"), start_registry(work / "registry")
    try:
        base = offline_base(sample_image("ubuntu-raspi"), work, archive)
        installed = "".join(f"\nPackage: {name}\nStatus: install ok installed\nArchitecture: arm64\nVersion: 1\n"
                            for name in ("conntrack", "socat", "ethtool", "iptables"))
        debugfs_write(base, {"/var/lib/dpkg/status": (STATUS.format(arch="arm64") + installed).encode()}, work)
        mirrors = {ARCHIVE_HOST: f"http://127.0.0.1:{archive.port}/debian", MIRRORED: location.url("").rstrip("/")}
        output = work / "w.img"
        succeeded(PiImage(work / "cache")(
            "build", "--profile", "worker-8g", "--base", base, "-o", output, "--offline",
            "--set", "kube_install=release", "--set", f"kube_release_url={MIRRORED}/release",
            "--set", f"crictl_url={MIRRORED}/cri-tools", "--set", f"cni_plugins_url={MIRRORED}/plugins",
            "--set", f"package_mirrors={json.dumps(mirrors)}",
            "--set", "registry_mirrors=" + json.dumps({"registry.k8s.io": registry.url, "ghcr.io": registry.url})))
    finally:
        archive.stop()
        archive.key.close()
        registry.stop()
    return output


@offline_tools
def test_offline_carries_the_five_assets_and_the_runtime_packages_only(offline_card):
    root = Card(offline_card).root
    bundle = json.loads(root.text("/var/lib/pi-image/bundle/bundle.json"))
    config = json.loads(root.text("/etc/pi-image/node.json"))

    assert {entry["file"] for entry in bundle["release"]} == {f"release/{name}" for name in ASSETS}
    for entry in bundle["release"]:
        data = root.read(f"/var/lib/pi-image/bundle/{entry['file']}")
        assert data == bodies()[entry["file"].removeprefix("release/")] and len(data) == entry["size"]
        assert hashlib.sha256(data).hexdigest() == entry["sha256"]
    assert {entry["package"] for entry in bundle["packages"]} == {"containerd", "runc"}, "no kube package"
    assert bundle["kubernetes"] == RELEASE and config["kubernetes_release"] == RELEASE
    assert config["release"]["kube_url"] == f"{MIRRORED}/release", "the node's own URL, not the build host's mirror"
    assert root.stat("/etc/apt/preferences.d/kubernetes") is None


def one_line(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    for needle in needles:
        assert needle in proc.stderr, proc.stderr
