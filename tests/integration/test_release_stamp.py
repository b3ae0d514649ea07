"""A cluster's profile image on the release path is stamped at flash time with no network: the image's recipe keeps
the release's URLs and digests, so `pi-image flash` gives each card the node.json a per-node build would have without
asking the release location again (the card is written where there is no internet, as the seed's author's was)."""

from __future__ import annotations

import hashlib
import json

from http_fixture import FileServer
from readback import KUBE_KEY, filesystems, make_cluster, succeeded

RELEASE, CRICTL, CNI, ARCH = "1.31.4", "v1.31.1", "v1.5.1", "arm64"
ASSETS = {"kubeadm": f"release/v{RELEASE}/bin/linux/{ARCH}/kubeadm",
          "kubelet": f"release/v{RELEASE}/bin/linux/{ARCH}/kubelet",
          "kubectl": f"release/v{RELEASE}/bin/linux/{ARCH}/kubectl",
          f"crictl-{CRICTL}-linux-{ARCH}.tar.gz": f"cri-tools/{CRICTL}/crictl-{CRICTL}-linux-{ARCH}.tar.gz",
          f"cni-plugins-linux-{ARCH}-{CNI}.tgz": f"plugins/{CNI}/cni-plugins-linux-{ARCH}-{CNI}.tgz"}


def test_a_release_profile_image_is_stamped_with_the_release_location_gone(cli, base, tmp_path):
    files = {"release/stable-1.31.txt": f"v{RELEASE}\n".encode()}
    for name, path in ASSETS.items():
        files[path + ".sha256"] = hashlib.sha256(name.encode()).hexdigest().encode()
    server = FileServer(files)
    lab = make_cluster(cli, tmp_path / "lab", "192.168.6.0/24", {"pi-worker7": ["--profile", "worker-8g"]})
    image = tmp_path / "profile.img"
    try:
        succeeded(cli("build", "--cluster", lab, "--profile", "worker-8g", "--base", base, "-o", image,
                      "--set", "kube_install=release", "--set", f"kube_release_url={server.url('release')}",
                      "--set", f"crictl_url={server.url('cri-tools')}",
                      "--set", f"cni_plugins_url={server.url('plugins')}", "--kube-key", KUBE_KEY))
        asked = len(server.log)
    finally:
        server.close()

    card = tmp_path / "card.img"
    succeeded(cli("flash", image, card, "--yes", "--cluster", lab, "--node", "pi-worker7"))

    config = json.loads(filesystems(card)["root"].text("/etc/pi-image/node.json"))
    assert config["node"] == "pi-worker7" and config["kubernetes_release"] == RELEASE
    assert config["release"]["sha256"] == {name: hashlib.sha256(name.encode()).hexdigest() for name in ASSETS}
    assert asked == len(ASSETS) + 1, "the build asked for stable-1.31.txt and each .sha256 once"


def test_an_unreachable_release_location_is_one_line_naming_the_settings_to_fix(cli, base, tmp_path):
    server = FileServer({})
    url = server.url("release")
    server.close()  # nothing listens there any more

    proc = cli("build", "--profile", "worker-8g", "--base", base, "-o", tmp_path / "w.img", "--kube-key", KUBE_KEY,
               "--set", "kube_install=release", "--set", f"kube_release_url={url}")

    assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr
    assert "kube_release_url" in proc.stderr and "pi-image bases" not in proc.stderr, proc.stderr
    assert not (tmp_path / "w.img").exists()
