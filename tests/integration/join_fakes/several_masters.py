"""Three control planes and a worker (`SeveralMastersLab`): a cluster made by the real builder code (`cluster init
--vip`), the kubeadm/kubectl stand-ins playing one cluster, sandbox roots flashed with each node's card, and the real
token endpoint of any master started on demand (in this process, as test_endpoint_several_masters.py runs it).

Every endpoint a card names (the VIP's, each master's ADDRESS:8443) is a port of 127.0.0.1 here, fixed when the lab
is made: nothing listens there until the test starts that master's endpoint, so a card's agent finds it down.
"""

import socket
import threading
import time
from pathlib import Path

from builder import cluster as clusters
from builder.plan.kube_vip import kube_vip_manifest
from firstboot.commands import CommandRunner
from firstboot.endpoint.settings import ServerSettings
from firstboot.endpoint.tokend import Limits, build_endpoint

from .control_plane import TWO_NICS, master_card
from .harness import FakeCluster, built_card, make_ca, make_root

VIP = "192.168.6.10"
MASTERS = {"pi-master1": "192.168.6.11", "pi-master2": "192.168.6.12", "pi-master3": "192.168.6.13"}
WORKER, WORKER_IP = "pi-worker1", "192.168.6.15"  # the stand-in `ip`'s default eth1


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class SeveralMastersLab:
    """pi-master1..3 (the first may initialize) and pi-worker1 of one cluster whose API server is VIP:6443."""

    def __init__(self, base: Path, version="1.31", kubeadm="v1.31.4"):
        self.base = base
        self.fake = FakeCluster(base)
        self.cluster = clusters.init_cluster(base / "cluster", None, None, version, "192.168.6.0/24", vip=VIP)
        for name, address in MASTERS.items():
            clusters.add_node(self.cluster, name, "master-2g", None, "control-plane", address=address)
        clusters.add_node(self.cluster, WORKER, "worker-8g", None, "worker")
        self.ca_cert = base / "ca.crt"
        for knob, value in {"kubeadm_version": kubeadm, "cluster_version": kubeadm, "ca_cert_file": self.ca_cert,
                            "expected_ca_hash": make_ca(self.ca_cert)}.items():
            self.fake.knob(knob, value)
        endpoint_port = self.cluster.endpoint.rpartition(":")[2]
        self.ports = {"{}:{}".format(host, endpoint_port): free_port() for host in [VIP] + list(MASTERS.values())}
        self.endpoints = {}

    @property
    def certificate_key(self):
        return (self.cluster.directory / "secrets/certificate.key").read_text().strip()

    def node_root(self, name):
        """A sandbox device flashed with a fresh build of `name`, its endpoints this machine's loopback ports."""
        cluster, node = built_card(self.cluster.directory, name)
        config = clusters.node_config(cluster, node, admin_user="ubuntu")
        config = config.replace(endpoint=self._local(config.endpoint),
                                fallback_endpoints=[self._local(address) for address in config.fallback_endpoints])
        base = self.base / "{}-{}".format(name, node.generation)
        if node.role == "worker":
            return make_root(base, config)
        root = master_card(base, cluster, config)
        (root / "etc/pi-image/kube-vip.yaml").write_bytes(kube_vip_manifest(VIP, 6443))
        return root

    def _local(self, address):
        return "127.0.0.1:{}".format(self.ports[address])

    def be(self, name):
        """The stand-ins answer as `name`'s machine: its address on the node subnet (a second NIC has the default
        route), the only one its kubeadm can advertise."""
        address = MASTERS.get(name, WORKER_IP)
        self.fake.knob("ip_addr", TWO_NICS.replace(MASTERS["pi-master1"], address))
        self.fake.knob("expected_advertise_address", address)

    def start_endpoint(self, master):
        """`master`'s token endpoint (the real one) on its loopback port, with its card's state directory."""
        settings = ServerSettings(str(self.cluster.directory / "tokend.json"), {
            "listen": "127.0.0.1:{}".format(self.ports["{}:8443".format(MASTERS[master])]),
            "ca_cert_file": str(self.ca_cert), "kubeconfig": str(self.base / "admin.conf"), "node_name": master})
        endpoint = build_endpoint(settings, str(self.base / ("state-" + master)), Limits(),
                                  CommandRunner(env=self.fake.env), time.time)
        threading.Thread(target=endpoint.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        self.endpoints[master] = endpoint
        return endpoint

    def stop_endpoint(self, master):
        endpoint = self.endpoints.pop(master)
        endpoint.shutdown()
        endpoint.server_close()

    def stop(self):
        for master in list(self.endpoints):
            self.stop_endpoint(master)

    def members(self):
        """etcd's members by name."""
        return sorted(member["name"] for member in self.fake.cluster().get("etcd_members", []))
