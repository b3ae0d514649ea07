"""A freshly flashed node joins by itself: the real agent against the real endpoint over pinned TLS."""

import json
import os
import re
import socket
import ssl
import stat

import pytest
import yaml
from join_fakes.harness import (
    KERNEL_SWITCHES,
    TOKEN_SHAPE,
    files_containing_tokens,
    run_agent,
)

from firstboot.client import EndpointClient


def test_worker_joins_with_its_cluster_subnet_address_and_its_token_is_retired(join_lab):
    root = join_lab.node_root()

    result = run_agent(root, join_lab.fake)

    assert result.returncode == 0, result.stderr
    [join] = join_lab.fake.joins()
    assert join["node"] == "pi-worker1"
    assert join["node_ip"] == "192.168.6.15"  # eth1 is in 192.168.6.0/24; eth0 (10.0.2.15) is first but not
    assert join["config"]["apiVersion"] == "kubeadm.k8s.io/v1beta4"
    assert join["config"]["nodeRegistration"]["kubeletExtraArgs"] == [{"name": "node-ip", "value": "192.168.6.15"}]
    assert join["config"]["discovery"]["bootstrapToken"]["apiServerEndpoint"] == "192.168.6.10:6443"
    assert join_lab.state()["state"] == "joined"
    assert join_lab.fake.cluster()["tokens"] == {}, "the node's token is deleted once it reports joined"
    [token] = join_lab.fake.created_tokens()
    assert 1795 <= token["ttl_seconds"] <= 1800 and token["description"] == "pi-image pi-worker1"
    assert join_lab.fake.deleted_tokens() == [token["token_id"]]
    marker = root / "var/lib/pi-image/firstboot.done"
    assert json.loads(marker.read_text()) == {"joined": True, "node": "pi-worker1"}
    assert not (root / "var/lib/pi-image/join-config.yaml").exists(), "the file holding the token is removed"


@pytest.mark.parametrize("ca_type", ["rsa", "ecdsa"])
def test_discovery_hash_is_right_for_rsa_and_ecdsa_cluster_cas(make_join_lab, ca_type):
    world = make_join_lab(ca_type=ca_type)
    world.server.start()

    result = run_agent(world.node_root(), world.fake)

    assert result.returncode == 0, result.stderr
    [join] = world.fake.joins()
    assert join["config"]["discovery"]["bootstrapToken"]["caCertHashes"] == [world.ca_hash]


def test_node_of_an_older_minor_gets_a_v1beta3_join_configuration(make_join_lab):
    world = make_join_lab(version="1.30")
    world.fake.knob("kubeadm_version", "v1.30.6")
    world.fake.knob("cluster_version", "v1.30.6")
    world.server.start()

    result = run_agent(world.node_root(), world.fake)

    assert result.returncode == 0, result.stderr
    [join] = world.fake.joins()
    assert join["config"]["apiVersion"] == "kubeadm.k8s.io/v1beta3"
    assert join["config"]["nodeRegistration"]["kubeletExtraArgs"] == {"node-ip": "192.168.6.15"}


def test_local_setup_loads_modules_sets_sysctls_turns_swap_off_and_holds_packages(join_lab):
    root = join_lab.node_root()
    result = run_agent(root, join_lab.fake)

    assert result.returncode == 0, result.stderr
    assert join_lab.fake.calls("modprobe") == [["overlay"], ["br_netfilter"]]
    for switch in KERNEL_SWITCHES:  # written to /proc/sys directly: no sysctl binary needed (procps may be absent)
        assert (root / "proc/sys" / switch).read_text().strip() == "1"
    assert join_lab.fake.calls("swapoff") == [["-a"]]
    assert join_lab.fake.calls("apt-mark") == [["hold", "kubelet", "kubeadm", "kubectl"]]
    assert ["enable", "--no-reload", "kubelet"] in join_lab.fake.calls("systemctl")


def test_missing_kube_packages_are_installed_before_joining(join_lab):
    for tool in ("kubelet", "kubeadm", "kubectl"):
        (join_lab.fake.bin / tool).unlink()  # the agent's PATH no longer has them; the endpoint's kubeadm is gone too
    root = join_lab.node_root()

    result = run_agent(root, join_lab.fake)

    assert result.returncode == 0, result.stderr
    assert join_lab.fake.calls("dpkg") == [["--force-confold", "--configure", "-a"]]  # what a power cut left, first
    assert join_lab.fake.calls("apt-get") == [["update"], ["install", "-y", "-o", "Dpkg::Options::=--force-confold",
                                                           "-o", "DPkg::Lock::Timeout=60", "kubelet", "kubeadm",
                                                           "kubectl"]]
    assert join_lab.state()["state"] == "joined"


def test_image_built_without_a_cluster_only_does_local_setup(join_lab, tmp_path):
    from join_fakes.harness import make_root

    from builder.cluster import local_node_config

    root = make_root(tmp_path, local_node_config("lonely-pi", "1.31"))

    result = run_agent(root, join_lab.fake)

    assert result.returncode == 0, result.stderr
    assert join_lab.fake.calls("modprobe")
    assert join_lab.fake.calls("kubeadm", "join") == []
    assert json.loads((root / "var/lib/pi-image/firstboot.done").read_text())["joined"] is False


def test_answers_leave_whole_in_one_write_and_the_connection_stays_open(join_lab):
    """Headers and body in one TLS record: written apart with Nagle on, the body waited for the client's delayed
    ACK (40 ms per answer, twice per join). And one connection carries the challenge and the POST."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", join_lab.server.port), timeout=10) as raw, \
            context.wrap_socket(raw) as tls:
        for _ in range(2):
            tls.sendall(b"GET /v1/challenge HTTP/1.1\r\nHost: tokend\r\n\r\n")
            answer = tls.recv(65536)  # one TLS record at most

            head, _, body = answer.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200"), answer
            assert b"Connection: close" not in head
            assert len(body) == int(re.search(rb"Content-Length: (\d+)", head).group(1))
            assert "nonce" in json.loads(body.decode())


@pytest.mark.skipif(os.geteuid() != 0, reason="giving files other owners needs root")
def test_owners_a_non_root_build_could_not_set_are_applied_at_first_boot(join_lab, tmp_path):
    from join_fakes.harness import make_root

    from builder.cluster import local_node_config
    from builder.image.tree import DirectoryFilesystem

    root = make_root(tmp_path, local_node_config("jetson", "1.31"))
    tree = DirectoryFilesystem(root, writable=True)
    tree._can_chown = False  # what a build by a normal user does: record the owners instead of setting them
    tree.mkdir("/home/nvidia", 0o750, uid=1000, gid=1000)
    tree.write("/home/nvidia/.profile", b"", uid=1000, gid=1000)
    tree.symlink("/home/nvidia/tools", "/opt/tools", uid=1000, gid=1000)
    tree.commit()
    assert (root / "etc/pi-image/owners.tsv").exists() and os.lstat(str(root / "home/nvidia")).st_uid == 0

    result = run_agent(root, join_lab.fake)

    assert result.returncode == 0, result.stderr
    for path in ("home/nvidia", "home/nvidia/.profile", "home/nvidia/tools"):
        assert (os.lstat(str(root / path)).st_uid, os.lstat(str(root / path)).st_gid) == (1000, 1000), path
    assert not (root / "etc/pi-image/owners.tsv").exists()
    assert (root / "etc/pi-image/owners.tsv.applied").exists()


def test_second_boot_after_joining_does_nothing(join_lab):
    root = join_lab.node_root()
    assert run_agent(root, join_lab.fake).returncode == 0
    calls_after_first_boot = len(join_lab.fake.calls())

    second = run_agent(root, join_lab.fake)

    assert second.returncode == 0
    assert "already done" in second.stderr
    assert len(join_lab.fake.calls()) == calls_after_first_boot


def test_no_token_reaches_any_log_state_file_status_output_or_the_device(join_lab):
    from click.testing import CliRunner

    from builder.cli import main

    root = join_lab.node_root()
    result = run_agent(root, join_lab.fake)
    join_lab.server.stop()
    status = CliRunner().invoke(main, ["status", "--cluster", str(join_lab.cluster.directory), "--local", "--json"])

    assert result.returncode == 0
    assert join_lab.fake.cluster()["tokens"] == {} and len(join_lab.fake.created_tokens()) == 1
    assert files_containing_tokens(root, join_lab.cluster.directory) == []
    assert not __import__("re").search(r"[a-z0-9]{6}\.[a-z0-9]{16}", result.stderr + status.output)
    node_json = root / "etc/pi-image/node.json"
    assert stat.S_IMODE(node_json.stat().st_mode) == 0o600
    assert stat.S_IMODE((join_lab.cluster.directory / "state" / "audit.log").stat().st_mode) == 0o600
    assert yaml.safe_load(status.output)[0]["state"] == "joined"


def test_the_master_never_has_a_bootstrap_token_on_a_command_line(join_lab):
    """Every process the endpoint starts is a stand-in that records its argv as it got it (what /proc/PID/cmdline
    shows any local user): the token goes to kubectl on stdin, inside the Secret kubeadm itself would create."""
    client = EndpointClient(join_lab.server.endpoint, join_lab.cluster.endpoint_fingerprint, "pi-worker1",
                            join_lab.credential())
    issued = client.join({"kubeadm_version": "v1.31.4"}).payload
    client.report("joined")

    argv = [" ".join(args) for args in join_lab.fake.calls()]
    [token] = join_lab.fake.created_tokens()
    assert issued["token"].startswith(token["token_id"] + ".")
    assert token["groups"] == "system:bootstrappers:kubeadm:default-node-token"
    assert join_lab.fake.deleted_tokens() == [token["token_id"]]
    assert not [line for line in argv if issued["token"].split(".")[1] in line or TOKEN_SHAPE.search(line.encode())]
    assert any("create -f -" in line for line in argv) and join_lab.fake.calls("kubeadm") == []
