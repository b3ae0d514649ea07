"""A control-plane node's world for the agent tests: a cluster directory with one control-plane node (MASTER at
MASTER_IP), the kubeadm/kubectl stand-ins, and sandbox roots flashed with its image (`ControlPlaneLab`)."""

import json
import os
from pathlib import Path

from builder import cluster as clusters
from builder.plan.cni import flannel_manifest
from firstboot.endpoint.state import NodeStore

from .harness import FakeCluster, built_card, make_ca, make_root

MASTER = "pi-master1"
MASTER_IP = "192.168.6.11"
# eth0 comes first and has the default route (the fake `ip route get` answers src 10.0.2.15); eth1 is on the subnet
TWO_NICS = "\\n".join([
    "1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever preferred_lft forever",
    "2: eth0    inet 10.0.2.15/24 brd 10.0.2.255 scope global eth0\\       valid_lft forever preferred_lft forever",
    "3: eth1    inet {}/24 brd 192.168.6.255 scope global eth1\\       valid_lft forever preferred_lft forever".format(
        MASTER_IP),
])
# the image's accounts; run by another user than root, the suite gives both that user's ids (the agent chowns)
ROOT_ID, ADMIN_ID = (0, 1000) if os.geteuid() == 0 else (os.geteuid(), os.geteuid())
PASSWD = "root:x:{0}:{0}:root:/root:/bin/bash\nubuntu:x:{1}:{1}:Ubuntu:/home/ubuntu:/bin/bash\n".format(
    ROOT_ID, ADMIN_ID)


class ControlPlaneLab:
    """A cluster directory with one control-plane node, the stand-ins, and sandbox roots flashed with its image."""

    def __init__(self, base: Path, version="1.31", kubeadm="v1.31.4", api_server=MASTER_IP + ":6443",
                 pod_subnet=clusters.DEFAULT_POD_SUBNET, service_subnet=clusters.DEFAULT_SERVICE_SUBNET,
                 admin_user="ubuntu"):
        self.base = base
        self.fake = FakeCluster(base)
        self.cluster = clusters.init_cluster(base / "cluster", api_server, MASTER_IP + ":8443", version,
                                             "192.168.6.0/24", pod_subnet=pod_subnet, service_subnet=service_subnet)
        clusters.add_node(self.cluster, MASTER, "master-2g", None, "control-plane", address=MASTER_IP)
        self.admin_user = admin_user
        make_ca(base / "ca.crt")  # what kubeadm init installs as the cluster CA
        for knob, value in {"kubeadm_version": kubeadm, "ip_addr": TWO_NICS, "expected_advertise_address": MASTER_IP,
                            "ca_cert_file": base / "ca.crt"}.items():
            self.fake.knob(knob, value)

    def node_root(self):
        """A sandbox device flashed with a fresh build of the master (master_card())."""
        cluster, node = built_card(self.cluster.directory, MASTER)
        return master_card(self.base / "build-{}".format(node.generation), cluster,
                           clusters.node_config(cluster, node, admin_user=self.admin_user))

    def state(self, root):
        """The master's row in the token endpoint's state on the device."""
        store = NodeStore(str(root / "etc/pi-image/cluster/state"))
        try:
            return store.get(MASTER)
        finally:
            store.close()

    def sequence(self):
        """Every recorded call as one line, in order ("kubeadm init --config ...")."""
        path = self.fake.state / "calls.jsonl"
        records = [json.loads(line) for line in path.read_text().splitlines()]
        return [" ".join([record["tool"]] + record["args"]) for record in records]


def master_card(base: Path, cluster, config):
    """A sandbox device flashed with a control plane's card: node.json (`config`, from the real builder code), the
    cluster directory's files (with the certificate key where `config` may initialize several), the flannel
    manifest, and root plus the admin user in /etc/passwd."""
    root = make_root(base, config)
    for relative, data, mode in clusters.master_files(cluster, config.control_plane):
        path = root / "etc/pi-image/cluster" / relative
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        path.write_bytes(data)
        path.chmod(mode)
    manifest = root / "usr/lib/pi-image/cni/kube-flannel.yml"
    manifest.parent.mkdir(parents=True)
    manifest.write_bytes(flannel_manifest(cluster.pod_subnet))
    (root / "etc/passwd").write_text(PASSWD)
    (root / "root").mkdir(mode=0o700)
    (root / "home/ubuntu").mkdir(parents=True)
    os.chown(str(root / "home/ubuntu"), ADMIN_ID, ADMIN_ID)
    return root
