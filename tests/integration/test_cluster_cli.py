"""An operator sets up a cluster directory, fills the inventory and watches nodes join — through the real CLI."""

import hashlib
import hmac
import json
import re
import stat
import subprocess
import sys

import pytest
import yaml
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from builder import cluster as clusters
from builder.cli import main as pi_image
from builder.errors import UserError
from firstboot.client import EndpointClient
from join_fakes.harness import REPO, FakeCluster, make_ca

INIT = ["--api-server", "192.168.6.10:6443", "--endpoint", "192.168.6.10:8443", "--kubernetes-version", "v1.31",
        "--node-subnet", "192.168.6.0/24"]


def cli(*args):
    return CliRunner().invoke(pi_image, [str(a) for a in args])


@pytest.fixture
def cluster_dir(tmp_path):
    directory = tmp_path / "lab"
    result = cli("cluster", "init", directory, *INIT, "--json")
    assert result.exit_code == 0, result.output
    return directory


def mode(path):
    return stat.S_IMODE(path.stat().st_mode)


def test_cluster_init_writes_settings_inventory_and_private_secrets(cluster_dir):
    settings = yaml.safe_load((cluster_dir / "cluster.yaml").read_text())
    cert = x509.load_pem_x509_certificate((cluster_dir / "secrets/endpoint.crt").read_bytes())
    der = cert.public_bytes(serialization.Encoding.DER)

    assert settings["kubernetes_version"] == "1.31" and settings["node_subnet"] == "192.168.6.0/24"
    assert yaml.safe_load((cluster_dir / "inventory.yaml").read_text()) == {"nodes": []}
    assert mode(cluster_dir / "secrets") == 0o700
    assert {p.name: mode(p) for p in (cluster_dir / "secrets").iterdir()} == {
        "enrollment.key": 0o600, "endpoint.key": 0o600, "endpoint.crt": 0o600}
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey) and cert.public_key().curve.name == "secp256r1"
    assert settings["endpoint_fingerprint"] == "sha256:" + hashlib.sha256(der).hexdigest()
    assert len(bytes.fromhex((cluster_dir / "secrets/enrollment.key").read_text().strip())) == 32


def test_cluster_init_refuses_to_overwrite_an_existing_cluster(cluster_dir):
    result = cli("cluster", "init", cluster_dir, *INIT)

    assert result.exit_code == 1
    assert "already a cluster directory" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("option,value,message", [
    ("--api-server", "192.168.6.10", "is not HOST:PORT"),
    ("--kubernetes-version", "latest", "is not a Kubernetes minor version"),
    ("--node-subnet", "192.168.6/99", "is not a CIDR subnet"),
])
def test_cluster_init_explains_bad_settings_in_one_line(tmp_path, option, value, message):
    args = list(INIT)
    args[args.index(option) + 1] = value

    result = cli("cluster", "init", tmp_path / "lab", *args)

    assert result.exit_code == 1 and message in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_add_node_records_identity_and_the_endpoint_learns_the_new_name(cluster_dir):
    result = cli("cluster", "add-node", cluster_dir, "pi-worker1", "--profile", "worker-8g", "--mac",
                 "DC:A6:32:01:02:03", "--address", "192.168.6.21")

    assert result.exit_code == 0, result.output
    [node] = clusters.load_inventory(cluster_dir)
    assert (node.name, node.role, node.profile, node.mac, node.address) == \
        ("pi-worker1", "worker", "worker-8g", "dc:a6:32:01:02:03", "192.168.6.21")
    assert json.loads((cluster_dir / "tokend.json").read_text())["nodes"] == ["pi-worker1"]
    assert mode(cluster_dir / "tokend.json") == 0o600


@pytest.mark.parametrize("args,message", [
    (["pi-worker1", "--profile", "p"], "already in the inventory"),
    (["Pi_Worker", "--profile", "p"], "is not a valid node name"),
    (["pi-worker2", "--profile", "p", "--mac", "dc:a6:32"], "is not a MAC address"),
    (["pi-worker2", "--profile", "p", "--address", "10.0.0.5"], "outside the cluster's node subnet"),
])
def test_add_node_refuses_bad_entries_with_the_reason(cluster_dir, args, message):
    cli("cluster", "add-node", cluster_dir, "pi-worker1", "--profile", "worker-8g")

    result = cli("cluster", "add-node", cluster_dir, *args)

    assert result.exit_code != 0 and message in result.output


def test_inventory_typo_is_reported_with_file_and_suggestion(cluster_dir):
    (cluster_dir / "inventory.yaml").write_text("nodes:\n  - name: pi-worker1\n    profil: worker-8g\n")

    with pytest.raises(UserError, match=r"inventory.yaml: nodes\[0\]: unknown key 'profil' \(did you mean 'profile'\?\)"):
        clusters.load_inventory(cluster_dir)


def test_node_config_carries_the_pin_and_a_credential_derived_from_the_enrollment_key(cluster_dir):
    cli("cluster", "add-node", cluster_dir, "pi-worker1", "--profile", "worker-8g")
    cli("cluster", "add-node", cluster_dir, "pi-master", "--profile", "master-2g", "--role", "control-plane")
    key = bytes.fromhex((cluster_dir / "secrets/enrollment.key").read_text().strip())

    worker = clusters.node_config(cluster_dir, "pi-worker1", runtime="docker")
    master = clusters.node_config(cluster_dir, "pi-master")

    assert worker["credential"] == hmac.new(key, b"pi-worker1", hashlib.sha256).hexdigest()
    assert worker["endpoint"] == "192.168.6.10:8443" and worker["runtime"] == "docker"
    assert worker["endpoint_fingerprint"] == clusters.load_cluster(cluster_dir).endpoint_fingerprint
    assert "credential" not in master and master["role"] == "control-plane"
    with pytest.raises(UserError, match="no node named 'pi-ghost'"):
        clusters.node_config(cluster_dir, "pi-ghost")


def test_status_lists_inventory_nodes_before_they_are_seen_and_approve_records_consent(cluster_dir):
    cli("cluster", "add-node", cluster_dir, "pi-worker1", "--profile", "worker-8g")

    approved = cli("approve", "pi-stranger", "--cluster", cluster_dir)
    status = cli("status", "--cluster", cluster_dir, "--json")

    assert approved.exit_code == 0, approved.output
    assert [(row["node"], row["state"]) for row in json.loads(status.output)] == \
        [("pi-stranger", "approved"), ("pi-worker1", "not-seen")]
    assert "pi-worker1" in cli("status", "--cluster", cluster_dir).output


def test_token_server_command_serves_the_pinned_certificate(cluster_dir, tmp_path):
    cli("cluster", "add-node", cluster_dir, "pi-worker1", "--profile", "worker-8g")
    fake = FakeCluster(tmp_path)
    make_ca(tmp_path / "ca.crt")
    command = [sys.executable, "-c", "from builder.cli import main; main()", "token-server", "--cluster",
               str(cluster_dir), "--listen", "127.0.0.1:0", "--ca-cert", str(tmp_path / "ca.crt"),
               "--kubeconfig", str(tmp_path / "admin.conf")]
    server = subprocess.Popen(command, cwd=str(REPO), env=fake.env, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL)
    try:
        port = re.search(r":(\d+)$", server.stdout.readline().decode().strip()).group(1)
        cluster = clusters.load_cluster(cluster_dir)
        client = EndpointClient("127.0.0.1:" + port, cluster.endpoint_fingerprint, "pi-worker1",
                                cluster.credential("pi-worker1"))
        answer = client.join({"kubeadm_version": "v1.31.4"})
    finally:
        server.terminate()
        server.wait(10)

    assert answer.status == 200 and answer.payload["state"] == "token-issued"
    assert (cluster_dir / "state/tokend.db").exists()


def test_token_server_without_the_cluster_ca_says_where_to_find_it(cluster_dir):
    result = cli("token-server", "--cluster", cluster_dir, "--ca-cert", cluster_dir / "missing.crt")

    assert result.exit_code == 1 and "pass --ca-cert PATH" in result.output
