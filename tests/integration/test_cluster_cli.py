"""An operator sets up a cluster directory, fills the inventory and watches nodes join — through the real CLI."""

import configparser
import hashlib
import json
import re
import shlex
import stat
import subprocess
import sys

import pytest
import yaml
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from join_fakes.harness import FIRSTBOOT_PYTHON, REPO, FakeCluster, built_card, make_ca

from builder import cluster as clusters
from builder.cli import main as pi_image
from builder.errors import UserError
from firstboot import protocol
from firstboot.client import EndpointClient
from firstboot.endpoint.settings import ServerSettings

TOKEND_UNIT = REPO / "firstboot" / "units" / "pi-image-tokend.service"

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


def endpoint_settings(cluster_dir):
    """tokend.json as the token endpoint reads it."""
    return ServerSettings(str(cluster_dir / "tokend.json"))


def built_credential(cluster_dir, name):
    """What `pi-image build --cluster DIR --node NAME` puts in the image: the credential of the node's next build."""
    return clusters.node_config(*built_card(cluster_dir, name)).credential


def one_line_error(result):
    lines = result.output.strip().splitlines()
    return result.exit_code == 1 and len(lines) == 1 and lines[0].startswith("pi-image: error: ") and \
        "Traceback" not in result.output


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
    [node] = clusters.load_cluster(cluster_dir).nodes
    assert (node.name, node.role, node.profile, node.mac, node.address) == \
        ("pi-worker1", "worker", "worker-8g", "dc:a6:32:01:02:03", "192.168.6.21")
    assert endpoint_settings(cluster_dir).known_nodes() == {"pi-worker1"}
    assert mode(cluster_dir / "tokend.json") == 0o600


@pytest.mark.parametrize("args,message", [
    (["pi-worker1", "--profile", "worker-8g"], "already"),
    (["Pi_Worker", "--profile", "worker-8g"], "is not a valid node name"),
    (["pi-worker2", "--profile", "worker-8g", "--mac", "dc:a6:32"], "is not a MAC address"),
    (["pi-worker2", "--profile", "worker-8g", "--address", "10.0.0.5"], "outside the cluster's node subnet"),
])
def test_add_node_refuses_bad_entries_with_the_reason(cluster_dir, args, message):
    cli("cluster", "add-node", cluster_dir, "pi-worker1", "--profile", "worker-8g")

    result = cli("cluster", "add-node", cluster_dir, *args)

    assert result.exit_code != 0 and message in result.output


def test_inventory_typo_is_reported_with_file_and_suggestion(cluster_dir):
    (cluster_dir / "inventory.yaml").write_text("nodes:\n  - name: pi-worker1\n    profil: worker-8g\n")

    with pytest.raises(UserError,
                       match=r"inventory.yaml: nodes\[0\]: unknown key 'profil' \(did you mean 'profile'\?\)"):
        clusters.load_cluster(cluster_dir)


def test_each_build_carries_the_pin_and_a_credential_of_its_own_generation(cluster_dir):
    cli("cluster", "add-node", cluster_dir, "pi-worker1", "--profile", "worker-8g")
    cli("cluster", "add-node", cluster_dir, "pi-master", "--profile", "master-2g", "--address", "192.168.6.10")
    key = bytes.fromhex((cluster_dir / "secrets/enrollment.key").read_text().strip())
    cluster = clusters.load_cluster(cluster_dir)

    first = clusters.node_config(*built_card(cluster_dir, "pi-worker1"), runtime="docker")
    second = clusters.node_config(*built_card(cluster_dir, "pi-worker1"))
    master = clusters.node_config(cluster, cluster.node("pi-master"))

    assert first.credential == protocol.node_credential(key, "pi-worker1", 1)
    assert second.credential == protocol.node_credential(key, "pi-worker1", 2) != first.credential
    assert endpoint_settings(cluster_dir).generation("pi-worker1") == 2, "the endpoint accepts the newest build only"
    assert first.endpoint == "192.168.6.10:8443" and first.runtime == "docker"
    assert first.endpoint_fingerprint == cluster.endpoint_fingerprint
    assert master.credential is None and master.role == "control-plane"
    with pytest.raises(UserError, match="no node named 'pi-ghost'"):
        cluster.node("pi-ghost")


def test_status_lists_inventory_nodes_before_any_endpoint_ran_without_creating_its_state(cluster_dir):
    cli("cluster", "add-node", cluster_dir, "pi-worker1", "--profile", "worker-8g")

    status = cli("status", "--cluster", cluster_dir, "--json")

    assert status.exit_code == 0, status.output
    assert [(row["node"], row["state"]) for row in json.loads(status.output)] == [("pi-worker1", "not-seen")]
    assert "pi-worker1" in cli("status", "--cluster", cluster_dir).output
    assert not (cluster_dir / "state").exists()


def test_approve_refuses_a_node_that_is_in_no_inventory_and_never_asked(cluster_dir):
    result = cli("approve", "nobody", "--cluster", cluster_dir)

    assert one_line_error(result), result.output
    assert "'nobody' is in no inventory and has not asked to join" in result.output
    assert "approved" not in result.output
    assert not (cluster_dir / "state").exists(), "nothing was recorded"


def test_approve_replace_of_an_inventory_node_records_consent(cluster_dir):
    cli("cluster", "add-node", cluster_dir, "pi-worker1", "--profile", "worker-8g")

    approved = cli("approve", "pi-worker1", "--replace", "--cluster", cluster_dir)
    status = cli("status", "--cluster", cluster_dir, "--json")

    assert approved.exit_code == 0 and "may replace its Ready namesake once" in approved.output
    assert [(row["node"], row["state"]) for row in json.loads(status.output)] == [("pi-worker1", "approved")]


@pytest.mark.parametrize("args,message", [
    (["approve", "Bad_Name"], "is not a valid node name"),
    (["approve", "pi-worker1", "--state-dir", "{dir}/cluster.yaml/state"], "cannot use the token endpoint's state"),
    (["approve", "pi-worker1", "--state-dir", "{dir}/broken"], "cannot use the token endpoint's state"),
    (["status", "--state-dir", "{dir}/broken"], "cannot use the token endpoint's state"),
    (["approve", "pi-worker1", "--cluster", "{dir}/missing"], "missing"),
    (["status", "--cluster", "{dir}/missing"], "missing"),
])
def test_approve_and_status_explain_bad_input_in_one_line(cluster_dir, args, message):
    cli("cluster", "add-node", cluster_dir, "pi-worker1", "--profile", "worker-8g")
    (cluster_dir / "broken").mkdir()
    (cluster_dir / "broken" / "tokend.db").write_text("not a database, a text file")
    argv = [arg.format(dir=cluster_dir) for arg in args]
    if "--cluster" not in argv:
        argv += ["--cluster", str(cluster_dir)]

    result = cli(*argv)

    assert one_line_error(result) and message in result.output, result.output


def test_approve_and_status_on_the_master_share_the_shipped_units_state(cluster_dir, tmp_path):
    """The unit's own command line, with the master's /etc/pi-image/cluster being this cluster directory."""
    cli("cluster", "add-node", cluster_dir, "pi-worker1", "--profile", "worker-8g")
    credential = built_credential(cluster_dir, "pi-worker1")
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.read(str(TOKEND_UNIT))
    argv = shlex.split(unit["Service"]["ExecStart"].replace("/etc/pi-image/cluster", str(cluster_dir)))
    fake = FakeCluster(tmp_path)
    make_ca(tmp_path / "ca.crt")
    overrides = ["--listen", "127.0.0.1:0", "--ca-cert", str(tmp_path / "ca.crt"),
                 "--kubeconfig", str(tmp_path / "admin.conf")]
    server = subprocess.Popen([FIRSTBOOT_PYTHON] + argv[1:] + overrides, cwd=str(REPO), env=fake.env,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        port = re.search(r":(\d+)$", server.stdout.readline().decode().strip()).group(1)
        fingerprint = clusters.load_cluster(cluster_dir).endpoint_fingerprint
        answer = EndpointClient("127.0.0.1:" + port, fingerprint, "pi-worker1", credential).join(
            {"kubeadm_version": "v1.31.4"})
    finally:
        server.terminate()
        server.wait(10)

    status = json.loads(cli("status", "--cluster", cluster_dir, "--local", "--json").output)
    assert answer.status == 200
    assert [(row["node"], row["state"]) for row in status] == [("pi-worker1", "token-issued")]


def test_token_server_command_serves_the_pinned_certificate(cluster_dir, tmp_path):
    cli("cluster", "add-node", cluster_dir, "pi-worker1", "--profile", "worker-8g")
    credential = built_credential(cluster_dir, "pi-worker1")
    fake = FakeCluster(tmp_path)
    make_ca(tmp_path / "ca.crt")
    command = [sys.executable, "-c", "from builder.cli import main; main()", "token-server", "--cluster",
               str(cluster_dir), "--listen", "127.0.0.1:0", "--ca-cert", str(tmp_path / "ca.crt"),
               "--kubeconfig", str(tmp_path / "admin.conf")]
    server = subprocess.Popen(command, cwd=str(REPO), env=fake.env, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL)
    try:
        port = re.search(r":(\d+)$", server.stdout.readline().decode().strip()).group(1)
        client = EndpointClient("127.0.0.1:" + port, clusters.load_cluster(cluster_dir).endpoint_fingerprint,
                                "pi-worker1", credential)
        answer = client.join({"kubeadm_version": "v1.31.4"})
    finally:
        server.terminate()
        server.wait(10)

    assert answer.status == 200 and answer.payload["state"] == "token-issued"
    assert (cluster_dir / "state/tokend.db").exists()


def test_token_server_without_the_cluster_ca_says_where_to_find_it(cluster_dir):
    result = cli("token-server", "--cluster", cluster_dir, "--ca-cert", cluster_dir / "missing.crt")

    assert result.exit_code == 1 and "pass --ca-cert PATH" in result.output
