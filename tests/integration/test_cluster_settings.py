"""An operator changes a cluster after `init`: `cluster show` says what it is, `cluster set KEY=VALUE` changes what
is safe to change and refuses, with the reason, what would strand cards already built. A control plane must have
the API server's address: refused at add-node, at build, and at a `set` that would part them.

`show` and `set` are run as `pi-image cluster show|set` runs them: the commands under a `cluster` group of the
real PiImageGroup (which turns an error into one line), beside the real init, add-node and remove-node.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import stat
import time

import click
import pytest
import yaml
from click.testing import CliRunner

from builder import cluster as clusters
from builder.cli import PiImageGroup
from builder.cli.cluster import add_node_command, init_command, remove_node_command
from builder.cluster.settings import set_command, show_command
from builder.errors import UserError

API, ENDPOINT = "192.168.6.10:6443", "192.168.6.10:8443"
SAFE = {"gateway": "192.168.6.1", "dns": "192.168.6.1,1.1.1.1", "offline": "true", "approval_mode": "true",
        "registry_mirrors": "{registry.k8s.io: http://192.168.6.2:5000}",
        "package_mirrors": "{http://ports.ubuntu.com/ubuntu-ports: http://192.168.6.2/ubuntu-ports}"}
PINNED = {"endpoint": "192.168.6.20:8443", "api_server": "192.168.6.20:6443", "node_subnet": "192.168.0.0/16",
          "pod_subnet": "10.32.0.0/16", "service_subnet": "10.112.0.0/12", "kubernetes_version": "1.32",
          "kubernetes_release": "1.31.4"}


@click.group(cls=PiImageGroup)
def pi_image() -> None:
    """The CLI with `cluster show` and `cluster set` registered as the lead registers them."""


pi_image.add_command(click.Group("cluster", commands={"init": init_command, "add-node": add_node_command,
                                                      "remove-node": remove_node_command, "show": show_command,
                                                      "set": set_command}))


def cli(*args):
    return CliRunner().invoke(pi_image, [str(a) for a in args])


def ok(*args):
    result = cli(*args)
    assert result.exit_code == 0, result.output
    return result.stdout


def refused(*args) -> str:
    """The one line a refusal prints (and nothing on stdout)."""
    result = cli(*args)
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1 and not result.stdout, result.output
    assert lines[0].startswith("pi-image: error: ") and "Traceback" not in result.output
    return lines[0].removeprefix("pi-image: error: ")


@pytest.fixture
def lab(tmp_path):
    directory = tmp_path / "lab"
    ok("cluster", "init", directory, "--api-server", API, "--endpoint", ENDPOINT, "--kubernetes-version", "1.31",
       "--node-subnet", "192.168.6.0/24")
    ok("cluster", "add-node", directory, "pi-master1", "--profile", "master-2g", "--address", "192.168.6.10")
    ok("cluster", "add-node", directory, "pi-worker1", "--profile", "worker-8g")
    return directory


def build(directory, name):
    """What a build does to the inventory: record the node's next generation (a card exists from then on)."""
    clusters.record_generation(directory, name, clusters.load_cluster(directory).node(name).generation + 1)


def mode(path):
    return stat.S_IMODE(path.stat().st_mode)


def test_show_lists_the_settings_with_their_defaults_and_counts_the_nodes_never_a_secret(lab):
    build(lab, "pi-worker1")
    ok("cluster", "remove-node", lab, "pi-worker1")
    ok("cluster", "add-node", lab, "pi-worker2", "--profile", "worker-8g")
    text = ok("cluster", "show", lab)
    shown = json.loads(ok("cluster", "show", lab, "--json"))
    enrollment_key = (lab / "secrets/enrollment.key").read_text().strip()
    endpoint_key = (lab / "secrets/endpoint.key").read_text().splitlines()[1:-1]

    assert shown["settings"]["api_server"] == API and shown["settings"]["pod_subnet"] == "10.244.0.0/16"
    assert shown["settings"]["gateway"] is None and shown["settings"]["dns"] == []
    assert shown["settings"]["endpoint_fingerprint"] == clusters.load_cluster(lab).endpoint_fingerprint
    assert shown["nodes"] == {"total": 2, "control-plane": 1, "worker": 1, "built": 0, "retired": 1}
    assert "  api_server            192.168.6.10:6443" in text.splitlines()
    assert "nodes: 2 (1 control-plane, 1 worker; 0 built), 1 retired" in text
    for secret in [enrollment_key, *endpoint_key]:  # not even a line of the endpoint's key
        assert secret not in text and secret not in json.dumps(shown)


def test_show_hides_credentials_in_a_mirror_url(lab):
    ok("cluster", "set", lab, "package_mirrors={http://ports.ubuntu.com/p: http://me:s3cret@192.168.6.2/p}")

    assert "s3cret" not in ok("cluster", "show", lab) + ok("cluster", "show", lab, "--json")
    assert "http://(credentials hidden)@192.168.6.2/p" in ok("cluster", "show", lab)


def test_set_before_any_card_changes_every_setting_and_the_endpoints_configuration(lab):
    out = ok("cluster", "set", lab, *(f"{key}={value}" for key, value in {**SAFE, **PINNED}.items()
                                       if key not in ("api_server", "kubernetes_release")))
    cluster = clusters.load_cluster(lab)
    tokend = json.loads((lab / "tokend.json").read_text())

    assert (cluster.gateway, cluster.dns, cluster.offline, cluster.approval_mode) == \
        ("192.168.6.1", ["192.168.6.1", "1.1.1.1"], True, True)
    assert cluster.registry_mirrors == {"registry.k8s.io": "http://192.168.6.2:5000"}
    assert (cluster.endpoint, cluster.node_subnet, cluster.pod_subnet, cluster.kubernetes_version) == \
        ("192.168.6.20:8443", "192.168.0.0/16", "10.32.0.0/16", "1.32")
    assert tokend["approval_mode"] is True and tokend["listen"] == "0.0.0.0:8443"
    assert "gateway: - -> 192.168.6.1" in out and "kubernetes_version: 1.31 -> 1.32" in out
    assert "rebuilt and reflashed" not in out, "no card exists to say it of"
    assert (mode(lab / "cluster.yaml"), mode(lab / "inventory.yaml"), mode(lab / "tokend.json")) == \
        (0o644, 0o644, 0o600)


@pytest.mark.parametrize("key", sorted(SAFE))
def test_once_a_card_exists_a_safe_setting_changes_and_says_what_it_reaches(lab, key):
    build(lab, "pi-worker1")

    out = ok("cluster", "set", lab, f"{key}={SAFE[key]}")

    assert out.startswith(f"{key}: ")
    assert ("next: restart `pi-image token-server" if key == "approval_mode" else "next: pi-image build") in out
    if key in ("gateway", "dns", "offline", "registry_mirrors"):
        assert "the 1 card(s) already built keep the old value until rebuilt and reflashed" in out
    assert clusters.load_cluster(lab).settings()[key]


@pytest.mark.parametrize("key,reason", [
    ("endpoint", "pins the token endpoint"), ("api_server", "pins the API server"),
    ("node_subnet", "chose its node-ip in it"), ("pod_subnet", "kubeadm configuration"),
    ("service_subnet", "kubeadm configuration"), ("kubernetes_version", "a kubeadm upgrade, not a setting"),
    ("kubernetes_release", "a kubeadm upgrade, not a setting; upgrade the running cluster one minor at a time "
                           "with `pi-image cluster upgrade"),
])
def test_once_a_card_exists_a_pinned_setting_is_refused_with_the_reason_and_nothing_written(lab, key, reason):
    build(lab, "pi-worker1")
    before = {name: (lab / name).read_bytes() for name in ("cluster.yaml", "inventory.yaml", "tokend.json")}

    message = refused("cluster", "set", lab, "gateway=192.168.6.1", f"{key}={PINNED[key]}")

    assert message.startswith(f"cluster set: {key} cannot change from ")
    assert "1 card(s) are built (pi-worker1)" in message and reason in message
    assert {name: (lab / name).read_bytes() for name in before} == before


def test_a_pinned_setting_given_its_own_value_is_no_change(lab):
    build(lab, "pi-worker1")

    assert "nothing changed" in ok("cluster", "set", lab, f"api_server={API}", "kubernetes_version=1.31")


@pytest.mark.parametrize("assignment,load_error", [
    ("gateway=10.0.0.1", "gateway: 10.0.0.1 is outside the cluster's node subnet 192.168.6.0/24"),
    ("dns=[192.168.6.300]", "dns: '192.168.6.300' is not an IP address"),
    ("pod_subnet=192.168.0.0/16", "node_subnet 192.168.6.0/24 overlaps pod_subnet 192.168.0.0/16"),
    ("offline=maybe", "offline must be true or false, not 'maybe'"),
    ("registry_mirrors={registry.k8s.io: ftp://x}", "'registry_mirrors'"),
    ("endpoint=192.168.6.10:6443", "endpoint 192.168.6.10:6443 is the API server's own address and port"),
    ("kubernetes_release=1.30.2", "kubernetes_release '1.30.2' is not a patch of kubernetes_version 1.31"),
    ("api_server=192.168.6.10", "api_server: '192.168.6.10' is not HOST:PORT"),
])
def test_a_bad_value_gets_the_error_a_hand_edited_cluster_yaml_gets(lab, assignment, load_error):
    key, _, raw = assignment.partition("=")
    message = refused("cluster", "set", lab, assignment)
    settings = yaml.safe_load((lab / "cluster.yaml").read_text())
    (lab / "cluster.yaml").write_text(yaml.safe_dump({**settings, key: yaml.safe_load(raw)}))
    with pytest.raises(UserError) as loaded:
        clusters.load_cluster(lab)

    assert load_error in message
    assert message.removeprefix("cluster set: ") == str(loaded.value).removeprefix(f"{lab / 'cluster.yaml'}: ")


@pytest.mark.parametrize("args,message", [
    (["gatway=192.168.6.1"], "unknown key 'gatway' (did you mean 'gateway'?)"),
    (["endpoint_fingerprint=sha256:00"], "endpoint_fingerprint cannot be set"),
    (["gateway"], "'gateway' is not KEY=VALUE (like gateway=192.168.6.1)"),
    (["endpoint="], "endpoint cannot be empty"),
    (["registry_mirrors={registry.k8s.io: [}"], "not a YAML value"),
])
def test_set_refuses_what_is_no_setting_in_one_line(lab, args, message):
    assert message in refused("cluster", "set", lab, *args)


def test_an_empty_value_goes_back_to_the_default(lab):
    ok("cluster", "set", lab, "gateway=192.168.6.1", "pod_subnet=10.32.0.0/16", "offline=true")

    out = ok("cluster", "set", lab, "gateway=", "pod_subnet=", "offline=null")
    cluster = clusters.load_cluster(lab)

    assert (cluster.gateway, cluster.pod_subnet, cluster.offline) == (None, "10.244.0.0/16", False)
    assert "gateway: 192.168.6.1 -> -" in out and "gateway" not in yaml.safe_load((lab / "cluster.yaml").read_text())


def test_a_setting_that_would_leave_a_node_out_of_place_is_refused(lab):
    ok("cluster", "add-node", lab, "pi-worker9", "--profile", "worker-8g", "--address", "192.168.6.99")

    assert "node 'pi-master1': address: 192.168.6.10 is outside the cluster's node subnet 10.6.0.0/24" in \
        refused("cluster", "set", lab, "node_subnet=10.6.0.0/24", "gateway=10.6.0.1", "api_server=10.6.0.10:6443",
                "endpoint=10.6.0.10:8443")
    assert "192.168.6.99 is the subnet's gateway" in refused("cluster", "set", lab, "gateway=192.168.6.99")


def test_a_control_plane_must_have_the_api_servers_address_at_add_node(lab):
    ok("cluster", "remove-node", lab, "pi-master1")

    other = refused("cluster", "add-node", lab, "pi-master1", "--profile", "master-2g", "--address", "192.168.6.11")
    dhcp = refused("cluster", "add-node", lab, "pi-master1", "--profile", "master-2g")

    assert "has address 192.168.6.11 but the API server is 192.168.6.10" in other
    assert other.endswith("add it with --address 192.168.6.10")
    assert "no fixed address" in dhcp and dhcp.endswith("add it with --address 192.168.6.10")
    assert "pi-master1" not in {node.name for node in clusters.load_cluster(lab).nodes}


def test_a_control_plane_must_have_the_api_servers_address_at_build(lab):
    inventory = yaml.safe_load((lab / "inventory.yaml").read_text())
    inventory["nodes"][0]["address"] = "192.168.6.11"  # edited by hand
    (lab / "inventory.yaml").write_text(yaml.safe_dump(inventory))
    cluster = clusters.load_cluster(lab)
    card = dataclasses.replace(cluster.node("pi-master1"), generation=1)

    with pytest.raises(UserError, match=r"control plane 'pi-master1' has address 192.168.6.11 but the API server is "
                                        r"192.168.6.10 .*set `address: 192.168.6.10` for it in .*inventory.yaml"):
        clusters.node_config(cluster, card)


def test_a_set_that_would_part_the_api_server_from_its_control_plane_is_refused(lab):
    message = refused("cluster", "set", lab, "api_server=192.168.6.20:6443")

    assert "control plane 'pi-master1' has address 192.168.6.10 but the API server is 192.168.6.20" in message
    assert clusters.load_cluster(lab).api_server == API


def hold_the_lock(directory, held, seconds):
    with clusters.inventory_lock(directory):
        held.set()
        time.sleep(seconds)


def test_set_waits_for_the_inventory_lock_like_every_other_change(lab):
    fork = multiprocessing.get_context("fork")
    held = fork.Event()
    holder = fork.Process(target=hold_the_lock, args=(lab, held, 0.5))
    holder.start()
    assert held.wait(10)
    started = time.monotonic()

    ok("cluster", "set", lab, "gateway=192.168.6.1")

    assert time.monotonic() - started >= 0.3
    holder.join(10)
