"""Flash it, power it on, it joins: a built image boots under real systemd, installs its container runtime and the
kube packages with the real apt from a signed archive, starts the real containerd with pi-image's configuration,
and joins through the real endpoint. Then it is rebooted, and nothing happens again. The tests are one story told
in order: they share the guest (conftest.SHARED_GUEST_MODULES keeps them in one pytest-xdist worker).
"""

import json

import pytest
from lab import BOOT_TIMEOUT, NODE
from ubuntu_layout import read_root_file

pytestmark = pytest.mark.system


@pytest.fixture(scope="module")
def first_boot(module_lab):
    """The node's first power-on, with the endpoint already running."""
    module_lab.endpoint.start()
    guest = module_lab.boot()
    guest.wait_powered_off(BOOT_TIMEOUT, watch=("joined the cluster",))
    return module_lab, guest


def test_power_on_joins_with_the_cluster_subnet_address_and_retires_its_token(first_boot):
    lab, guest = first_boot
    report = lab.guest_report(1)

    assert report["reason"] == "done", guest.serial[-3000:]
    assert lab.status()["state"] == "joined"
    assert lab.status()["last_error"] is None
    [join] = lab.fake.joins()
    assert join["node"] == NODE
    assert join["node_ip"] == "10.0.2.15", "the address in the cluster's node subnet, not the first NIC's"
    assert any(" 10.0.3.15/24 " in line for line in report["addresses"][:2]), report["addresses"]
    assert join["config"]["apiVersion"] == "kubeadm.k8s.io/v1beta4"
    [token_id] = lab.tokens_issued()
    assert join["config"]["discovery"]["bootstrapToken"]["token"].startswith(token_id + ".")
    assert lab.fake.cluster()["tokens"] == {}, "the node's token is deleted once it reports joined"
    assert lab.fake.cluster()["nodes"] == {NODE: "Ready"}
    assert lab.audit_decisions() == ["token-issued", "report-joined"]


def test_first_boot_prepares_the_kernel_before_joining(first_boot):
    lab, guest = first_boot
    report = lab.guest_report(1)

    assert report["modules"] == {"overlay": True, "br_netfilter": True}
    proc = report["proc"]
    assert proc["/proc/sys/net/bridge/bridge-nf-call-iptables"].strip() == "1"
    assert proc["/proc/sys/net/bridge/bridge-nf-call-ip6tables"].strip() == "1"
    assert proc["/proc/sys/net/ipv4/ip_forward"].strip() == "1"
    assert "memory" in proc["/sys/fs/cgroup/cgroup.controllers"].split()
    assert len(proc["/proc/swaps"].strip().splitlines()) == 1, "swap is off"
    assert "cgroup_enable=memory" in proc["/proc/cmdline"], "the kernel got the build's cmdline.txt"
    assert report["hostname"].strip() == NODE
    assert report["unit"]["Result"] == "success" and report["unit"]["ExecMainStatus"] == "0"
    assert json.loads(report["done"]) == {"joined": True, "node": NODE}
    assert "command not found" not in lab.guest_file("/var/lib/pi-image/firstboot.log"), "no sysctl binary needed"
    assert [args[0] for args in lab.guest_calls("kubeadm")] == ["version", "join"]
    assert f"node {NODE} joined the cluster" in guest.serial


def test_first_boot_installs_and_starts_the_real_containerd_with_pi_images_config(first_boot, node_build):
    lab, guest = first_boot
    report = lab.guest_report(1)

    packages = {line.split()[0]: line.split()[1:] for line in report["packages"]}
    assert packages["containerd"][0].startswith("1.6.") and packages["containerd"][1] == "ii", report["packages"]
    assert packages["runc"][1] == "ii"
    assert packages["kubeadm"] == ["1.31.4-1.1", "hi"], "the pin chose 1.31 out of 1.30 and 1.31; held"
    runtime = report["runtime"]
    assert runtime["is_active"] == "active"
    assert "Server:" in runtime["ctr_version"] and "Version:" in runtime["ctr_version"], runtime["ctr_version"]
    assert "SystemdCgroup = true" in runtime["systemd_cgroup"]
    built = read_root_file(node_build.image, "/etc/containerd/config.toml")
    assert lab.guest_file("/etc/containerd/config.toml").encode() == built, "dpkg kept pi-image's config.toml"
    assert lab.guest_file("/etc/containerd/config.toml.dpkg-dist") is not None, "...and set the package's aside"
    assert "containerd answers on /var/run/containerd/containerd.sock" in guest.serial


def test_no_token_is_left_on_the_device_or_its_console(first_boot):
    lab, guest = first_boot
    secrets = lab.api.tokens_seen
    assert secrets, "the guest's kubeadm presented a token"
    places = {"serial console": guest.serial, "agent log": lab.guest_file("/var/lib/pi-image/firstboot.log"),
              "journal": lab.guest_file("/var/lib/pi-image-test/boot-1.journal")}
    assert lab.guest_file("/var/lib/pi-image/join-config.yaml") is None
    assert lab.guest_file("/var/lib/pi-image/issued-token.json") is None, "the kept token goes once joined"
    for place, text in places.items():
        assert text and not any(secret in text for secret in secrets), f"a token secret is in the {place}"


def test_reboot_does_not_run_the_agent_again(first_boot):
    lab, _ = first_boot
    calls_before, host_calls_before = lab.guest_calls(), lab.fake.calls()

    guest = lab.boot()
    guest.wait_powered_off(BOOT_TIMEOUT)

    report = lab.guest_report(2)
    assert report["reason"] == "done"
    assert report["unit"]["ConditionResult"] == "no", "ConditionPathExists=! on the marker skipped the unit"
    assert report["modules"] == {"overlay": True, "br_netfilter": True}, "the build's modules-load.d, not the agent"
    assert report["proc"]["/proc/sys/net/bridge/bridge-nf-call-iptables"].strip() == "1", "the build's sysctl.d"
    assert report["proc"]["/proc/sys/net/ipv4/ip_forward"].strip() == "1"
    assert lab.guest_calls() == calls_before
    assert lab.fake.calls() == host_calls_before, "nothing new was issued"
    assert lab.audit_decisions() == ["token-issued", "report-joined"]
    assert lab.status()["state"] == "joined"
