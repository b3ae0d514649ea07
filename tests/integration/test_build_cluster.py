"""An operator builds a whole cluster's cards from its inventory: `--cluster DIR --node NAME` gives one image the
node's name, address, profile and join credential; `--all` makes one image per inventory node. Read back with
debugfs/mtools; the credential and pin are recomputed here from the cluster's secrets.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import subprocess
from pathlib import Path

import pytest
import yaml
from readback import KUBE_KEY, entries, filesystems, fingerprint, make_cluster, succeeded

pytest.importorskip("builder.cli.cluster", reason="`pi-image cluster` (builder/cli/cluster.py) is not there yet")

NODES = {  # name: (add-node arguments, role)
    "pi-master1": (["--profile", "master-2g", "--address", "192.168.6.10"], "control-plane"),
    "pi-worker1": (["--profile", "worker-8g", "--mac", "dc:a6:32:01:02:03", "--address", "192.168.6.21"], "worker"),
    "pi-worker2": (["--profile", "worker-8g", "--address", "192.168.6.22"], "worker"),
}


@pytest.fixture(scope="module")
def lab(cli, tmp_path_factory) -> Path:
    return make_cluster(cli, tmp_path_factory.mktemp("cluster") / "lab", "192.168.6.0/24",
                        {name: args for name, (args, _) in NODES.items()})


def expected_credential(cluster: Path, node: str) -> str:
    """HMAC-SHA256(enrollment key, "NAME:GENERATION") for the generation the inventory now records."""
    key = bytes.fromhex((cluster / "secrets" / "enrollment.key").read_text().strip())
    entry = next(n for n in yaml.safe_load((cluster / "inventory.yaml").read_text())["nodes"] if n["name"] == node)
    return hmac.new(key, f"{node}:{entry['generation']}".encode(), hashlib.sha256).hexdigest()


def endpoint_pin(cluster: Path) -> str:
    der = subprocess.run(["openssl", "x509", "-in", cluster / "secrets" / "endpoint.crt", "-outform", "DER"],
                         capture_output=True, check=True).stdout
    return "sha256:" + hashlib.sha256(der).hexdigest()


def node_config(image: Path) -> tuple[dict, object]:
    root = filesystems(image)["root"]
    return json.loads(root.text("/etc/pi-image/node.json")), root.stat("/etc/pi-image/node.json")


def test_node_build_takes_identity_profile_and_credential_from_the_inventory(cli, lab, base, tmp_path):
    image = tmp_path / "pi-worker1.img"
    succeeded(cli("build", "--cluster", lab, "--node", "pi-worker1", "--base", base, "--output", image,
                  "--kube-key", KUBE_KEY))  # no --profile: the inventory's worker-8g
    fs = filesystems(image)
    config, entry = node_config(image)
    network = yaml.safe_load(fs["boot"].text("/network-config"))["ethernets"]["eth0"]

    assert fs["root"].text("/etc/hostname") == "pi-worker1\n"
    assert json.loads(fs["root"].text("/etc/pi-image/build.json"))["profile"]["name"] == "worker-8g"
    assert (entry.mode, entry.uid, entry.gid) == (0o600, 0, 0)
    assert config["credential"] == expected_credential(lab, "pi-worker1")
    assert config["endpoint_fingerprint"] == endpoint_pin(lab)
    assert (config["node"], config["role"], config["endpoint"], config["api_server"], config["node_subnet"]) == \
        ("pi-worker1", "worker", "192.168.6.10:8443", "192.168.6.10:6443", "192.168.6.0/24")
    assert (network["dhcp4"], network["addresses"]) == (False, ["192.168.6.21/24"])
    assert "pi-worker1" in yaml.safe_load(fs["boot"].text("/meta-data"))["instance-id"]


def test_all_builds_one_image_per_inventory_node(cli, lab, base, tmp_path):
    out = tmp_path / "images"
    succeeded(cli("build", "--cluster", lab, "--all", "--base", base, "--output", out, "--kube-key", KUBE_KEY,
))

    assert entries(out) == sorted(f"{name}.img{suffix}" for name in NODES for suffix in ("", ".json"))
    credentials = set()
    for name, (_, role) in NODES.items():
        config, _ = node_config(out / f"{name}.img")
        assert filesystems(out / f"{name}.img")["root"].text("/etc/hostname") == name + "\n"
        assert (config["node"], config["role"]) == (name, role)
        if role == "worker":
            assert config["credential"] == expected_credential(lab, name)
            credentials.add(config["credential"])
        else:  # the first master runs `kubeadm init` itself: nothing to join with
            assert "credential" not in config
    assert len(credentials) == 2


def test_dry_run_of_all_writes_nothing(cli, lab, base, tmp_path):
    out = tmp_path / "images"
    out.mkdir()
    before = fingerprint(base)
    run = succeeded(cli("build", "--cluster", lab, "--all", "--dry-run", "--base", base, "--output", out,
                        "--kube-key", KUBE_KEY))

    assert entries(out) == []
    assert fingerprint(base) == before
    assert all(f"node {name!r}" in run.stdout for name in NODES)


def test_unknown_node_is_refused_with_the_known_names(cli, lab, base, tmp_path):
    run = cli("build", "--cluster", lab, "--node", "pi-worker9", "--base", base, "--output", tmp_path / "x.img",
              "--kube-key", KUBE_KEY)

    assert run.returncode != 0 and "Traceback" not in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1 and "pi-worker9" in run.stderr and "pi-worker1" in run.stderr
    assert entries(tmp_path) == []


def test_static_address_gets_the_prefix_of_the_node_subnet(cli, base, tmp_path):
    """A /16 home network: a /24 netmask would cut the node off from half its cluster."""
    cluster = make_cluster(cli, tmp_path / "big", "10.42.0.0/16",
                           {"pi-worker7": ["--profile", "worker-8g", "--address", "10.42.3.7"]})
    image = tmp_path / "pi-worker7.img"
    succeeded(cli("build", "--cluster", cluster, "--node", "pi-worker7", "--base", base, "--output", image,
                  "--kube-key", KUBE_KEY))
    network = yaml.safe_load(filesystems(image)["boot"].text("/network-config"))["ethernets"]["eth0"]

    assert network["addresses"] == ["10.42.3.7/16"]
