"""Cluster commands: `cluster init|add-node`, `token-server`, `approve`, `status`. Parsing and printing only."""

from __future__ import annotations

import contextlib
import datetime
import json
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import click

from firstboot import protocol
from firstboot.client import Answer, EndpointClient, EndpointUnreachable
from firstboot.endpoint import tokend
from firstboot.endpoint.settings import ServerSettings, SettingsError
from firstboot.endpoint.state import NodeStore, database_path

from . import addresses, cluster as clusters
from .errors import UserError
from .outputs import write_private
from .profiles import check_value, load_profile

CLUSTER_OPTION = click.option(
    "--cluster", "cluster_dir", required=True, envvar="PI_IMAGE_CLUSTER", show_envvar=True,
    type=click.Path(file_okay=False, path_type=Path), help="Cluster directory made by `pi-image cluster init`.")
STATE_OPTION = click.option(
    "--state-dir", type=click.Path(file_okay=False, path_type=Path),
    help="The token endpoint's state and audit log [default: DIR/state, also where the shipped pi-image-tokend unit "
         "keeps them for /etc/pi-image/cluster on the master].")
MASTER_ENDPOINT_OPTION = click.option("--endpoint", metavar="HOST:PORT",
                                      help="The master's token endpoint [default: cluster.yaml's].")
JSON_OPTION = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")


@click.group("cluster")
def cluster_group() -> None:
    """Create and edit a cluster directory (settings, inventory, secrets).

    \b
    Examples:
      pi-image cluster init lab --api-server 192.168.6.10:6443 --endpoint 192.168.6.10:8443 \\
          --kubernetes-version 1.31 --node-subnet 192.168.6.0/24
      pi-image cluster add-node lab pi-worker1 --profile worker-8g --mac dc:a6:32:01:02:03 --address 192.168.6.21
    """


@cluster_group.command("init")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--api-server", required=True, metavar="HOST:PORT", help="The Kubernetes API server nodes join.")
@click.option("--endpoint", required=True, metavar="HOST:PORT", help="Where the token endpoint will listen.")
@click.option("--kubernetes-version", required=True, metavar="1.XX", help="Minor version images are built for.")
@click.option("--node-subnet", required=True, metavar="CIDR", help="Subnet whose address becomes each node-ip.")
@click.option("--gateway", metavar="A.B.C.D", help="The node subnet's gateway: nodes with a fixed --address route "
              "through it (edit later as `gateway:` in cluster.yaml).")
@click.option("--dns", metavar="A.B.C.D[,...]", help="Name servers for nodes with a fixed address "
              "[default: the gateway] (later: `dns:` in cluster.yaml).")
@click.option("--pod-subnet", default=clusters.DEFAULT_POD_SUBNET, show_default=True, metavar="CIDR",
              help="Pods' network (kubeadm's podSubnet, flannel's Network).")
@click.option("--service-subnet", default=clusters.DEFAULT_SERVICE_SUBNET, show_default=True, metavar="CIDR",
              help="Services' network (kubeadm's serviceSubnet).")
@click.option("--approval-mode", is_flag=True, help="Unknown nodes wait for `pi-image approve` instead of refusal.")
@click.option("--offline", is_flag=True, help="Every card carries its packages and container images (`build "
              "--offline` for all the cluster's builds; later: `offline:` in cluster.yaml).")
@click.option("--registry-mirror", "registry_mirrors", multiple=True, metavar="REGISTRY=URL",
              help="A container registry mirror for every node and for --offline builds, like "
                   "registry.k8s.io=http://192.168.6.2:5000 (repeatable; later: `registry_mirrors:` in cluster.yaml).")
@JSON_OPTION
def init_command(directory: Path, api_server: str, endpoint: str, kubernetes_version: str, node_subnet: str,
                 gateway: str | None, dns: str | None, pod_subnet: str, service_subnet: str, approval_mode: bool,
                 offline: bool, registry_mirrors: tuple[str, ...], as_json: bool) -> None:
    """Create DIRECTORY with cluster.yaml, an empty inventory.yaml and fresh secrets/.

    \b
    Examples:
      pi-image cluster init lab --api-server 192.168.6.10:6443 --endpoint 192.168.6.10:8443 \\
          --kubernetes-version 1.31 --node-subnet 192.168.6.0/24
      pi-image cluster init lab ... --offline --registry-mirror registry.k8s.io=http://192.168.6.2:5000
    """
    servers = [server.strip() for server in (dns or "").split(",") if server.strip()]
    mirrors = dict(_assignment(item, "--registry-mirror") for item in registry_mirrors)
    check_value("registry_mirrors", mirrors, "--registry-mirror")
    cluster = clusters.init_cluster(directory, api_server, endpoint, kubernetes_version, node_subnet, approval_mode,
                                    gateway, servers, pod_subnet, service_subnet, offline, mirrors)
    summary = {"directory": str(directory), "endpoint": cluster.endpoint,
               "endpoint_fingerprint": cluster.endpoint_fingerprint, "kubernetes_version": cluster.kubernetes_version}
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    click.echo(f"created cluster directory {directory}")
    click.echo(f"token endpoint {cluster.endpoint}, certificate {cluster.endpoint_fingerprint}")
    click.echo(f"next: pi-image cluster add-node {directory} NAME --profile PROFILE")


@cluster_group.command("add-node")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.argument("name")
@click.option("--profile", required=True, help="Build profile for this node's image (see `pi-image profiles`).")
@click.option("--role", type=click.Choice(clusters.ROLES), help="Node role [default: the profile's].")
@click.option("--mac", help="MAC address of the node's cluster interface.")
@click.option("--address", metavar="A.B.C.D[/NN]", help="Fixed IP address inside the node subnet [default: DHCP].")
@click.option("--base", metavar="NAME|URL|FILE", help="The node's vendor image, for a fleet of several OSes "
              "(`pi-image bases` lists names) [default: the profile's].")
def add_node_command(directory: Path, name: str, profile: str, role: str | None, mac: str | None,
                     address: str | None, base: str | None) -> None:
    """Add node NAME to DIRECTORY's inventory; its role comes from the profile.

    \b
    Examples:
      pi-image cluster add-node lab pi-master1 --profile master-2g --address 192.168.6.11
      pi-image cluster add-node lab pi-worker1 --profile worker-8g --mac dc:a6:32:01:02:03 --address 192.168.6.21
      pi-image cluster add-node lab kali1 --profile kali-worker --base kali-raspberry-pi
    """
    cluster = clusters.load_cluster(directory)
    node = clusters.add_node(cluster, name, profile, role, load_profile(profile)["role"], mac, address, base)
    where = f" at {node.address}" if node.address else " (DHCP)"
    click.echo(f"added {node.role} {node.name}{where} (profile {node.profile}"
               + (f", base {node.base}" if node.base else "") + f") to {directory / 'inventory.yaml'}")
    click.echo(f"next: pi-image build --cluster {directory} --node {node.name}" + ("" if node.base else " --base IMAGE"))
    _hint_sync(cluster, node.name)


@cluster_group.command("remove-node")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.argument("name")
def remove_node_command(directory: Path, name: str) -> None:
    """Take node NAME out of DIRECTORY's inventory: its cards can no longer ask for a join token.

    It does not remove a joined node from Kubernetes: run `kubectl delete node NAME` for that.

    \b
    Example:
      pi-image cluster remove-node lab pi-worker3
    """
    cluster = clusters.load_cluster(directory)
    node = clusters.remove_node(cluster, name)
    click.echo(f"removed {node.role} {node.name} from {directory / 'inventory.yaml'}")
    _hint_sync(cluster, node.name)


def _hint_sync(cluster: clusters.Cluster, changed: str) -> None:
    """Where a control plane's card carries a copy of the inventory, say how to bring it up to date."""
    if any(node.role == "control-plane" and node.generation and node.name != changed for node in cluster.nodes):
        click.echo(f"  if the master already runs: pi-image cluster sync {cluster.directory} (its token endpoint "
                   "has the inventory of when its card was built)")


@cluster_group.command("kubeconfig")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Where to write it [default: DIRECTORY/kubeconfig].")
@MASTER_ENDPOINT_OPTION
def kubeconfig_command(directory: Path, output: Path | None, endpoint: str | None) -> None:
    """Fetch the cluster's admin kubeconfig from the master's token endpoint (pinned TLS, the admin credential).

    The master's card makes it at first boot (kubeadm init); this copies it here, 0600.

    \b
    Examples:
      pi-image cluster kubeconfig lab
      pi-image cluster kubeconfig lab -o ~/.kube/config && kubectl get nodes
    """
    cluster = clusters.load_cluster(directory)
    target = output or directory / "kubeconfig"
    answer = _admin_request(cluster, endpoint, lambda client: client.admin_kubeconfig())
    text = answer.payload.get("kubeconfig")
    if not isinstance(text, str):
        raise UserError(f"the token endpoint gave no kubeconfig: {answer.error}")
    write_private(target, text)
    click.echo(f"wrote the admin kubeconfig of cluster {directory.name} to {target} (0600)")
    click.echo(f"next: KUBECONFIG={target} kubectl get nodes")


@cluster_group.command("sync")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@MASTER_ENDPOINT_OPTION
def sync_command(directory: Path, endpoint: str | None) -> None:
    """Tell the master's token endpoint about the inventory as it is now (nodes added or removed since the
    master's card was built; pinned TLS, the admin credential).

    Cards built later join without it (each names its build); a node added or removed since needs it.

    \b
    Example:
      pi-image cluster add-node lab pi-worker9 --profile worker-8g && pi-image cluster sync lab
    """
    cluster = clusters.load_cluster(directory)
    nodes = clusters.server_config(cluster)["nodes"]
    answer = _admin_request(cluster, endpoint, lambda client: client.admin_sync_inventory(nodes))
    click.echo(f"the token endpoint at {endpoint or cluster.endpoint} now knows the {answer.payload.get('nodes')} "
               f"node(s) of {directory / 'inventory.yaml'}")
    click.echo(f"next: power the new nodes on; `pi-image status --cluster {directory}` on the master shows them")


def _admin_request(cluster: clusters.Cluster, endpoint: str | None,
                   request: Callable[[EndpointClient], Answer]) -> Answer:
    """One admin request to the cluster's token endpoint (or `endpoint`); a UserError unless it answers 200."""
    address = addresses.host_port(endpoint, "--endpoint") if endpoint else cluster.endpoint
    client = EndpointClient(address, cluster.endpoint_fingerprint, protocol.ADMIN_NAME, cluster.admin_credential())
    try:
        answer = request(client)
    except EndpointUnreachable as err:
        raise UserError(f"{err}: is the master up (its first boot takes a few minutes)? Try again later") from None
    if answer.status != 200:
        raise UserError(f"the token endpoint at {address} refused: {answer.error}")
    return answer


@click.command("token-server")
@CLUSTER_OPTION
@click.option("--listen", metavar="ADDR:PORT", help="Address to serve on [default: 0.0.0.0:<endpoint port>].")
@click.option("--ca-cert", type=click.Path(dir_okay=False, path_type=Path),
              help=f"Cluster CA certificate for the discovery hash [default: cluster.yaml, {clusters.DEFAULT_CA_CERT}].")
@click.option("--kubeconfig", type=click.Path(dir_okay=False, path_type=Path),
              help=f"Admin kubeconfig for kubeadm/kubectl [default: cluster.yaml, {clusters.DEFAULT_KUBECONFIG}].")
@STATE_OPTION
@click.option("-v", "--verbose", is_flag=True, help="Log every request and command.")
def token_server_command(cluster_dir: Path, listen: str | None, ca_cert: Path | None, kubeconfig: Path | None,
                         state_dir: Path | None, verbose: bool) -> None:
    """Serve short-lived join tokens to this cluster's nodes over pinned HTTPS (runs until Ctrl-C).

    Run it where kubectl can reach the cluster with the admin kubeconfig (normally the master).
    State and the audit log go to DIR/state/ unless --state-dir says otherwise.

    \b
    Examples:
      sudo pi-image token-server --cluster lab
      pi-image token-server --cluster lab --listen 127.0.0.1:8443 --ca-cert ca.crt --kubeconfig admin.conf
    """
    if listen is not None:
        try:
            protocol.split_host_port(listen)
        except ValueError:
            raise UserError(f"--listen {listen!r} is not ADDR:PORT with a port up to 65535 "
                            "(like 0.0.0.0:8443; port 0 picks a free one)") from None
    cluster = clusters.load_cluster(cluster_dir)
    config_path = clusters.write_server_config(cluster)
    ca_path = ca_cert or Path(cluster.ca_cert)
    if not ca_path.is_file():
        raise UserError(f"cluster CA certificate {ca_path} not found: run on the master or pass --ca-cert PATH")
    overrides = {"listen": listen, "ca_cert_file": str(ca_path.resolve()),
                 "kubeconfig": str(kubeconfig.resolve()) if kubeconfig else None}
    try:
        settings = ServerSettings(str(config_path), overrides)
    except SettingsError as err:
        raise UserError(str(err)) from None
    try:
        tokend.serve(settings, str(state_dir or cluster.state_dir), verbose=verbose)
    except OSError as err:
        raise UserError(f"cannot serve on {settings.listen}: {err.strerror or err}") from None


@contextlib.contextmanager
def node_store(state_dir: Path) -> Iterator[NodeStore]:
    """The endpoint's state in `state_dir`, closed afterwards; a directory that cannot be used is a UserError."""
    try:
        store = NodeStore(str(state_dir))
    except (OSError, sqlite3.Error) as err:
        raise _unusable_state(state_dir, err) from None
    try:
        yield store
    except sqlite3.Error as err:
        raise UserError(f"{database_path(str(state_dir))}: {err}") from None
    finally:
        store.close()


def recorded_nodes(state_dir: Path) -> dict[str, dict]:
    """The endpoint's row of every node it has seen or an operator approved, by name; none (and nothing created)
    where no endpoint or approval wrote yet."""
    try:
        seen = Path(database_path(str(state_dir))).exists()
    except OSError as err:
        raise _unusable_state(state_dir, err) from None
    if not seen:
        return {}
    with node_store(state_dir) as store:
        return {row["name"]: row for row in store.all()}


def _unusable_state(state_dir: Path, err: Exception) -> UserError:
    reason = getattr(err, "strerror", None) or err
    return UserError(f"cannot use the token endpoint's state in {state_dir}: {reason}; fix its permissions (or run "
                     "as the user the endpoint runs as), or pass --state-dir DIR")


@click.command("approve")
@click.argument("name")
@CLUSTER_OPTION
@STATE_OPTION
@click.option("--replace", is_flag=True, help="Also let it replace a Ready node of the same name (a reflash).")
def approve_command(name: str, cluster_dir: Path, state_dir: Path | None, replace: bool) -> None:
    """Let node NAME join: a pending unknown node, or a reflashed one replacing its Ready namesake.

    NAME must be in the inventory or have asked to join (`pi-image status` shows it as pending).

    \b
    Examples:
      pi-image approve pi-worker7 --cluster lab
      pi-image approve pi-worker1 --cluster lab --replace
    """
    if not protocol.NODE_NAME_RE.match(name):
        raise UserError(f"{name!r} is not a valid node name (lower-case letters, digits and '-')")
    cluster = clusters.load_cluster(cluster_dir)
    state_dir = state_dir or cluster.state_dir
    if all(node.name != name for node in cluster.nodes) and name not in recorded_nodes(state_dir):
        raise UserError(f"node {name!r} is in no inventory and has not asked to join: nothing to approve; add it "
                        f"with `pi-image cluster add-node {cluster_dir} {name} --profile PROFILE`, or approve it "
                        "once `pi-image status` shows it pending")
    with node_store(state_dir) as store:
        store.approve(name, replace)
    click.echo(f"approved {name}" + (" (may replace its Ready namesake once)" if replace else ""))


@click.command("status")
@CLUSTER_OPTION
@STATE_OPTION
@JSON_OPTION
def status_command(cluster_dir: Path, state_dir: Path | None, as_json: bool) -> None:
    """Show every node's join state, last report and last error.

    States: not-seen, pending, approved, token-issued, joined, failed.

    \b
    Examples:
      pi-image status --cluster lab
      pi-image status --cluster lab --json | jq '.[] | select(.state == "failed")'
    """
    rows = node_status(cluster_dir, state_dir)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo(f"{'NODE':<20} {'ROLE':<13} {'NETWORK':<18} {'STATE':<13} {'UPDATED':<20} LAST REPORT / ERROR")
    for row in rows:
        detail = row["last_error"] or row["last_report"] or ""
        click.echo(f"{row['node']:<20} {row['role'] or '-':<13} {row['network'] or '-':<18} {row['state']:<13} "
                   f"{row['updated'] or '-':<20} {detail}")


def node_status(cluster_dir: Path, state_dir: Path | None = None) -> list[dict]:
    """One dict per inventory or endpoint-known node: node, role, network (its fixed address or "dhcp", from the
    inventory), generation, state, updated, last_report, last_error, address (where it last connected from).

    Reads the state in `state_dir` (default DIR/state); before any endpoint ran, every node is "not-seen".
    """
    cluster = clusters.load_cluster(cluster_dir)
    rows = recorded_nodes(state_dir or cluster.state_dir)
    inventory = {node.name: node for node in cluster.nodes}
    result = []
    for name in sorted(set(rows) | set(inventory)):
        row, node = rows.get(name, {}), inventory.get(name)
        updated = row.get("updated_at")
        result.append({
            "node": name,
            "role": node.role if node else None,
            "network": (node.address or "dhcp") if node else None,
            "generation": node.generation if node else None,
            "state": row.get("state", "not-seen"),
            "updated": datetime.datetime.fromtimestamp(updated).isoformat(timespec="seconds") if updated else None,
            "last_report": row.get("last_report"),
            "last_error": row.get("last_error"),
            "address": row.get("address"),
        })
    return result


COMMANDS: list[click.Command] = [cluster_group, token_server_command, approve_command, status_command]


def _assignment(item: str, option: str) -> tuple[str, str]:
    """KEY=VALUE of a repeatable option, or a usage error naming it."""
    key, sep, value = item.partition("=")
    if not sep or not key or not value:
        raise click.BadParameter(f"{item!r}: expected KEY=VALUE", param_hint=option)
    return key.strip(), value.strip()
