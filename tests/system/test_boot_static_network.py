"""A worker of a Kubernetes 1.30 cluster, with a fixed address from the inventory, joins.

`cluster init --kubernetes-version 1.30 --gateway --dns` + `add-node --address`: the build puts the address, the
default route and the name servers into the cloud-init seed on system-boot (netplan v2 network-config, as on Ubuntu
raspi) and points the image's kube repository and apt pin at 1.30. This boot runs the real cloud-init, which hands
the seed to the real netplan, which configures systemd-networkd: no DHCP lease on the cluster NIC, the node reaches
the archive and the endpoint through the gateway it was given. Its apt installs 1.30 out of an archive that also
offers 1.31, and its kubeadm gets a v1beta3 JoinConfiguration (the schema 1.30 reads).
"""

import pytest
from lab import BOOT_TIMEOUT

pytestmark = pytest.mark.system
ADDRESS = "10.0.2.20"
GATEWAY = "10.0.2.2"  # QEMU user networking's router: the host
DNS = "10.0.2.3"      # ...and its name server
# The cluster NIC is the guest's second virtio NIC, which udev names ens3 (a Pi's is eth0, the profile's default).
BUILD = {"version": "1.30", "init_args": ("--gateway", GATEWAY, "--dns", DNS), "add_args": ("--address", ADDRESS),
         "build_args": ("--set", "network={interface: ens3}")}


@pytest.fixture(scope="module")
def first_boot(module_lab):
    module_lab.endpoint.start()
    guest = module_lab.boot(cloud_init=True)
    guest.wait_powered_off(BOOT_TIMEOUT, watch=("joined the cluster",))
    return module_lab, guest


def test_a_node_with_a_fixed_address_gateway_and_dns_from_the_inventory_joins(first_boot):
    lab, guest = first_boot
    report = lab.guest_report(1)

    assert report["reason"] == "done", guest.serial[-3000:]
    [join] = lab.fake.joins()
    assert join["node_ip"] == ADDRESS
    assert any(f"ens3    inet {ADDRESS}/24 " in line and "dynamic" not in line for line in report["addresses"]), \
        report["addresses"]
    assert any(f"via {GATEWAY} dev ens3" in line for line in report["routes"]), report["routes"]
    assert f"DNS={DNS}" in report["networkd"]["10-netplan-ens3.network"], report["networkd"]
    netplan = lab.guest_file("/etc/netplan/50-cloud-init.yaml")
    assert netplan and f"{ADDRESS}/24" in netplan, "cloud-init wrote the seed's network-config for netplan"
    assert lab.status()["state"] == "joined"


def test_a_1_30_cluster_gives_a_node_whose_apt_pins_1_30_and_whose_kubeadm_gets_v1beta3(first_boot):
    lab, _ = first_boot
    report = lab.guest_report(1)

    policy = report["kubeadm_policy"]
    assert "Installed: 1.30.5-1.1" in policy and "Candidate: 1.30.5-1.1" in policy, policy
    assert "1.31.4-1.1" in policy, "the archive offers 1.31 too: the pin chose"
    assert "kubeadm 1.30.5-1.1 hi" in report["packages"]
    assert "/kube/v1.30/" in lab.guest_file("/etc/apt/sources.list.d/kubernetes.list")
    [join] = lab.fake.joins()
    assert join["config"]["apiVersion"] == "kubeadm.k8s.io/v1beta3"
