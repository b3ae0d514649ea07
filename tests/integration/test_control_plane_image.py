"""A control-plane card carries its token endpoint: the package, the unit, the cluster's settings and secrets (0600)
and the pinned flannel manifest; workers carry none of it. Read back with debugfs. Then the endpoint is run from
the files read out of the master's card, as its unit runs it, and the operator talks to it: the admin kubeconfig,
a card built after the master's, a node added after it (`pi-image cluster sync`).
"""

from __future__ import annotations

import json
import re
import stat
import subprocess
from pathlib import Path

import pytest
import yaml
from join_fakes.harness import FIRSTBOOT_PYTHON, REPO, FakeCluster, make_ca
from readback import KUBE_KEY, PiImage, filesystems, make_cluster, succeeded

from builder import cluster as clusters
from firstboot import protocol
from firstboot.client import EndpointClient

MASTER_FILES = {  # path: mode
    "/etc/pi-image/cluster/cluster.yaml": 0o644, "/etc/pi-image/cluster/inventory.yaml": 0o644,
    "/etc/pi-image/cluster/tokend.json": 0o600, "/etc/pi-image/cluster/secrets/enrollment.key": 0o600,
    "/etc/pi-image/cluster/secrets/endpoint.key": 0o600, "/etc/pi-image/cluster/secrets/endpoint.crt": 0o600,
}
NODES = {"pi-master1": ["--profile", "master-2g", "--address", "192.168.6.10"],
         "pi-worker1": ["--profile", "worker-8g"]}


@pytest.fixture(scope="module")
def built(cli: PiImage, base: Path, tmp_path_factory) -> tuple[Path, Path]:
    """(cluster directory, images directory) after `build --all` of a master and a worker."""
    work = tmp_path_factory.mktemp("cp")
    lab = make_cluster(cli, work / "lab", "192.168.6.0/24", NODES)
    succeeded(cli("build", "--cluster", lab, "--all", "--base", base, "--output", work / "out", "--kube-key", KUBE_KEY))
    return lab, work / "out"


def test_the_master_card_carries_the_endpoint_and_the_cluster_secrets(built):
    lab, out = built
    root = filesystems(out / "pi-master1.img")["root"]
    config = json.loads(root.text("/etc/pi-image/node.json"))

    for directory in ("/etc/pi-image/cluster", "/etc/pi-image/cluster/secrets"):
        entry = root.stat(directory)
        assert (entry.kind, entry.mode, entry.uid) == ("dir", 0o700, 0)
    for path, mode in MASTER_FILES.items():
        entry = root.stat(path)
        assert (entry.mode, entry.uid, entry.gid) == (mode, 0, 0), path
    for name in ("enrollment.key", "endpoint.key", "endpoint.crt"):
        assert root.read(f"/etc/pi-image/cluster/secrets/{name}") == (lab / "secrets" / name).read_bytes()
    tokend = json.loads(root.text("/etc/pi-image/cluster/tokend.json"))
    assert tokend["listen"] == "0.0.0.0:8443" and tokend["nodes"] == {"pi-master1": 0, "pi-worker1": 1}
    assert (tokend["ca_cert_file"], tokend["kubeconfig"]) == \
        ("/etc/kubernetes/pki/ca.crt", "/etc/kubernetes/admin.conf")
    assert root.text("/etc/systemd/system/pi-image-tokend.service") == \
        (REPO / "firstboot/units/pi-image-tokend.service").read_text()
    assert root.stat("/etc/systemd/system/multi-user.target.wants/pi-image-tokend.service").target == \
        "/etc/systemd/system/pi-image-tokend.service"
    assert sorted(root.listdir("/usr/lib/pi-image/firstboot/endpoint")) == \
        sorted(p.name for p in (REPO / "firstboot/endpoint").glob("*.py"))
    assert (config["role"], config["api_server"], config["node_subnet"]) == \
        ("control-plane", "192.168.6.10:6443", "192.168.6.0/24")
    assert config["control_plane"] == {"pod_subnet": "10.244.0.0/16", "service_subnet": "10.96.0.0/12",
                                       "admin_user": "ubuntu"}
    assert "credential" not in config and "endpoint" not in config


def test_the_master_card_and_its_manifest_keep_the_secrets(built):
    lab, out = built
    manifest_text = (out / "pi-master1.img.json").read_text()
    manifest = json.loads(manifest_text)
    by_path = {entry["path"]: entry for entry in manifest["files"]}

    assert stat.S_IMODE((out / "pi-master1.img").stat().st_mode) == 0o600
    for path, mode in MASTER_FILES.items():
        assert ("sha256" in by_path[path]) == (mode == 0o644), path
    for name in ("enrollment.key", "endpoint.key"):
        secret = (lab / "secrets" / name).read_text().strip().splitlines()[-2 if name == "endpoint.key" else 0]
        assert secret not in manifest_text
    assert manifest["role"] == "control-plane"


def test_the_pod_network_is_the_clusters(built):
    _, out = built
    manifest = filesystems(out / "pi-master1.img")["root"].text("/usr/lib/pi-image/cni/kube-flannel.yml")
    config_map = next(d for d in yaml.safe_load_all(manifest) if d and d["kind"] == "ConfigMap")

    assert json.loads(config_map["data"]["net-conf.json"])["Network"] == "10.244.0.0/16"


def test_a_worker_card_carries_none_of_it(built):
    _, out = built
    root = filesystems(out / "pi-worker1.img")["root"]

    assert root.stat("/etc/pi-image/cluster") is None
    assert root.stat("/usr/lib/pi-image/firstboot/endpoint") is None
    assert root.stat("/etc/systemd/system/pi-image-tokend.service") is None
    assert root.stat("/usr/lib/pi-image/cni") is None
    assert json.loads(root.text("/etc/pi-image/node.json"))["generation"] == 1


def test_a_cluster_with_its_own_pod_subnet(cli, base, tmp_path):
    lab = tmp_path / "lab"
    succeeded(cli("cluster", "init", lab, "--api-server", "10.1.0.10:6443", "--endpoint", "10.1.0.10:8443",
                  "--kubernetes-version", "1.31", "--node-subnet", "10.1.0.0/24", "--pod-subnet", "10.32.0.0/16",
                  "--service-subnet", "10.33.0.0/16", "--gateway", "10.1.0.1"))
    succeeded(cli("cluster", "add-node", lab, "m1", "--profile", "master-2g", "--address", "10.1.0.10"))
    succeeded(cli("build", "--cluster", lab, "--node", "m1", "--base", base, "-o", tmp_path / "m1.img",
                  "--kube-key", KUBE_KEY))
    root = filesystems(tmp_path / "m1.img")["root"]
    config_map = next(d for d in yaml.safe_load_all(root.text("/usr/lib/pi-image/cni/kube-flannel.yml"))
                      if d and d["kind"] == "ConfigMap")

    assert json.loads(config_map["data"]["net-conf.json"])["Network"] == "10.32.0.0/16"
    assert json.loads(root.text("/etc/pi-image/node.json"))["control_plane"]["service_subnet"] == "10.33.0.0/16"


class MasterEndpoint:
    """The token endpoint as the master's unit runs it, from the cluster directory read out of the master's card."""

    def __init__(self, card: Path, work: Path, *options: str):
        root = filesystems(card)["root"]
        self.directory = work / "etc-pi-image-cluster"
        for path in MASTER_FILES:
            target = self.directory / path.removeprefix("/etc/pi-image/cluster/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(root.read(path))
        self.fake = FakeCluster(work)
        self.fake.knob("expected_ca_hash", make_ca(work / "ca.crt"))
        self.kubeconfig = work / "admin.conf"
        argv = [FIRSTBOOT_PYTHON, "-m", "firstboot.endpoint", "--config", str(self.directory / "tokend.json"),
                "--listen", "127.0.0.1:0", "--ca-cert", str(work / "ca.crt"), "--kubeconfig", str(self.kubeconfig),
                *options]
        self.process = subprocess.Popen(argv, cwd=str(REPO), env=self.fake.env, stdout=subprocess.PIPE,
                                        stderr=subprocess.DEVNULL)
        line = self.process.stdout.readline().decode()
        self.address = "127.0.0.1:" + re.search(r":(\d+)$", line.strip()).group(1)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


@pytest.fixture
def master(built, tmp_path):
    lab, out = built
    endpoint = MasterEndpoint(out / "pi-master1.img", tmp_path)
    yield endpoint
    endpoint.stop()


def client(lab: Path, address: str, name: str, credential: str, generation: int | None = None) -> EndpointClient:
    return EndpointClient(address, clusters.load_cluster(lab).endpoint_fingerprint, name, credential,
                          generation=generation)


def card(lab: Path, name: str, generation: int) -> str:
    return protocol.node_credential(bytes.fromhex((lab / "secrets/enrollment.key").read_text().strip()), name,
                                    generation)


FACTS = {"kubeadm_version": "v1.31.4", "node_ip": "192.168.6.30"}


def test_the_admin_kubeconfig_comes_from_the_master_with_the_admin_credential_only(cli, built, master, tmp_path):
    lab, _ = built
    before = cli("cluster", "kubeconfig", lab, "--endpoint", master.address, "-o", tmp_path / "early")
    master.kubeconfig.write_text("apiVersion: v1\nkind: Config\n# the master's admin.conf\n")
    fetched = succeeded(cli("cluster", "kubeconfig", lab, "--endpoint", master.address, "-o", tmp_path / "kubeconfig"))
    as_a_node = client(lab, master.address, "pi-worker1", card(lab, "pi-worker1", 1), 1).admin_kubeconfig()
    admin = clusters.load_cluster(lab).admin_credential()
    admin_joins = client(lab, master.address, protocol.ADMIN_NAME, admin).join(FACTS)

    assert before.returncode == 1 and "not initialized" in before.stderr and len(before.stderr.splitlines()) == 1
    assert not (tmp_path / "early").exists()
    assert (tmp_path / "kubeconfig").read_bytes() == master.kubeconfig.read_bytes()
    assert stat.S_IMODE((tmp_path / "kubeconfig").stat().st_mode) == 0o600
    assert "next: KUBECONFIG=" in fetched.stdout
    assert as_a_node.status == 401 and "kubeconfig" not in as_a_node.payload
    assert admin_joins.status in (401, 403) and "token" not in admin_joins.payload


def test_a_card_built_after_the_masters_joins_and_the_older_one_no_longer_can(cli, built, master):
    lab, _ = built
    newer = client(lab, master.address, "pi-worker1", card(lab, "pi-worker1", 2), 2).join(FACTS)
    older = client(lab, master.address, "pi-worker1", card(lab, "pi-worker1", 1), 1).join(FACTS)
    forged = client(lab, master.address, "pi-worker1", "00" * 32, 7).join(FACTS)

    assert newer.status == 200 and newer.payload["state"] == "token-issued"
    assert older.status == 401
    assert forged.status == 401


def test_a_node_added_after_the_master_joins_once_the_inventory_is_synced(cli, built, master, tmp_path):
    lab = tmp_path / "lab"
    subprocess.run(["cp", "-a", str(built[0]), str(lab)], check=True)
    added = succeeded(cli("cluster", "add-node", lab, "pi-worker9", "--profile", "worker-8g"))
    unknown = client(lab, master.address, "pi-worker9", card(lab, "pi-worker9", 1), 1).join(FACTS)
    synced = succeeded(cli("cluster", "sync", lab, "--endpoint", master.address))
    known = client(lab, master.address, "pi-worker9", card(lab, "pi-worker9", 1), 1).join(FACTS)
    succeeded(cli("cluster", "remove-node", lab, "pi-worker9"))
    succeeded(cli("cluster", "sync", lab, "--endpoint", master.address))
    removed = client(lab, master.address, "pi-worker9", card(lab, "pi-worker9", 2), 2).join(FACTS)

    assert "pi-image cluster sync" in added.stdout
    assert unknown.status == 403
    assert "3 node(s)" in synced.stdout
    assert known.status == 200 and known.payload["state"] == "token-issued"
    assert removed.status == 403
    stored = master.directory / "state" / "inventory.json"
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600


def test_sync_with_a_wrong_admin_credential_changes_nothing(built, master):
    lab, _ = built
    answer = client(lab, master.address, protocol.ADMIN_NAME, "11" * 32).admin_sync_inventory({"intruder": 5})

    assert answer.status == 401
    assert not (master.directory / "state" / "inventory.json").exists()


def test_the_kubelet_is_sized_to_the_board(cli, base, tmp_path):
    """worker-4g and worker-8g were identical; now their node.json carries different kubelet settings."""
    sized = {}
    for name in ("worker-4g", "worker-8g"):
        image = tmp_path / f"{name}.img"
        succeeded(cli("build", "--profile", name, "--base", base, "-o", image, "--kube-key", KUBE_KEY))
        sized[name] = json.loads(filesystems(image)["root"].text("/etc/pi-image/node.json"))["kubelet"]

    assert sized["worker-4g"]["kubeReserved"]["memory"] == "1024Mi" and sized["worker-4g"]["maxPods"] == 64
    assert sized["worker-8g"]["kubeReserved"]["memory"] == "1843Mi" and sized["worker-8g"]["maxPods"] == 110


def test_a_slow_master_still_answers_an_authenticated_node(built, tmp_path):
    """The connection deadline is for strangers; a node's token may wait for kubectl on a busy Pi longer than it."""
    lab, out = built
    endpoint = MasterEndpoint(out / "pi-master1.img", tmp_path, "--connection-seconds", "2")
    endpoint.fake.knob("kubectl_sleep", "1")  # version, get nodes, create: 3 s of kubectl for one token
    try:
        answer = client(lab, endpoint.address, "pi-worker1", card(lab, "pi-worker1", 1), 1).join(FACTS)
    finally:
        endpoint.stop()

    assert answer.status == 200 and answer.payload["state"] == "token-issued"
