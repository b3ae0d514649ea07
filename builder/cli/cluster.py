"""Cluster commands: `cluster init|add-node|remove-node|kubeconfig|sync|upgrade`, `token-server`, `approve`, `status`.
Parsing and printing only (what status shows and how the master is asked: fleet_status.py)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

from firstboot import protocol
from firstboot.endpoint import tokend
from firstboot.endpoint.settings import ServerSettings, SettingsError

from .. import cluster as clusters
from ..cluster import status as fleet
from ..cluster import upgrade as upgrades
from ..cluster.kubeconfig import merge_kubeconfig
from ..cluster.settings import set_command, show_command
from ..cluster.verify import verify_command
from ..config.profiles import check_value, load_profile
from ..errors import UserError
from ..outputs import write_atomic
from ..targets import MACHINE_TARGETS

CLUSTER_OPTION = click.option(
    "--cluster", "cluster_dir", required=True, envvar="PI_IMAGE_CLUSTER", show_envvar=True,
    type=click.Path(file_okay=False, path_type=Path), help="Cluster directory made by `pi-image cluster init`.")
DEFAULT_CLUSTER_OPTION = click.option(
    "--cluster", "cluster_dir", type=click.Path(file_okay=False, path_type=Path),
    help="Cluster directory made by `pi-image cluster init` [default: $PI_IMAGE_CLUSTER, else "
         "~/.config/pi-image/cluster].")
STATE_OPTION = click.option(
    "--state-dir", "--state", "state_dir", type=click.Path(file_okay=False, path_type=Path),
    help="The token endpoint's state and audit log [default: DIR/state, also where the shipped pi-image-tokend unit "
         "keeps them for /etc/pi-image/cluster on the master].")
MASTER_ENDPOINT_OPTION = click.option("--endpoint", metavar="HOST:PORT",
                                      help="The master's token endpoint, the only one asked [default: cluster.yaml's, "
                                           "then each control plane's where there are several].")
LOCAL_OPTION = click.option("--local", is_flag=True, help="Use the token endpoint's state in DIR/state on this machine "
                            "instead of asking the master [default where `pi-image token-server` serves DIR here].")
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
@click.option("--api-server", metavar="HOST:PORT", help="The Kubernetes API server nodes join [required unless "
              "--vip; with it: VIP:6443].")
@click.option("--endpoint", metavar="HOST:PORT", help="Where the token endpoint will listen [required unless --vip; "
              "with it: VIP:8443, and every control plane serves it on that port].")
@click.option("--vip", metavar="A.B.C.D", help="Several control planes (3 or 5): a free address of the node subnet "
              "(not the gateway, no node's) that kube-vip holds on them as the API server.")
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
@click.option("--api-server-vip", is_flag=True, help="--api-server is a virtual IP or load balancer in front of the "
              "control planes, not a control plane's own address (which add-node then does not require).")
@click.option("--offline", is_flag=True, help="Every card carries its packages and container images (`build "
              "--offline` for all the cluster's builds; later: `offline:` in cluster.yaml).")
@click.option("--registry-mirror", "registry_mirrors", multiple=True, metavar="REGISTRY=URL",
              help="A container registry mirror for every node and for --offline builds, like "
                   "registry.k8s.io=http://192.168.6.2:5000 (repeatable; later: `registry_mirrors:` in cluster.yaml).")
@JSON_OPTION
def init_command(directory: Path, api_server: str | None, endpoint: str | None, vip: str | None,
                 kubernetes_version: str, node_subnet: str, gateway: str | None, dns: str | None, pod_subnet: str,
                 service_subnet: str, approval_mode: bool, api_server_vip: bool, offline: bool,
                 registry_mirrors: tuple[str, ...], as_json: bool) -> None:
    """Create DIRECTORY with cluster.yaml, an empty inventory.yaml and fresh secrets/.

    With --vip, the cluster has three (or five) control planes behind a virtual IP: add each with a fixed
    --address before building the first card; the first one added initializes the cluster, the others join it, and
    every one serves join tokens (power them on in any order).

    \b
    Examples:
      pi-image cluster init lab --api-server 192.168.6.10:6443 --endpoint 192.168.6.10:8443 \\
          --kubernetes-version 1.31 --node-subnet 192.168.6.0/24
      pi-image cluster init lab ... --offline --registry-mirror registry.k8s.io=http://192.168.6.2:5000
    \b
    Three control planes:
      pi-image cluster init lab --vip 192.168.6.5 --kubernetes-version 1.31 --node-subnet 192.168.6.0/24 \\
          --gateway 192.168.6.1
      pi-image cluster add-node lab pi-master1 --profile master-2g --address 192.168.6.11
      pi-image cluster add-node lab pi-master2 --profile master-2g --address 192.168.6.12
      pi-image cluster add-node lab pi-master3 --profile master-2g --address 192.168.6.13
      pi-image build --cluster lab --all --base ubuntu-24.04 -o cards/
    """
    for option, value in (("--api-server", api_server), ("--endpoint", endpoint)):
        if value is None and vip is None:
            raise click.UsageError(f"Missing option '{option}' (or --vip A.B.C.D for several control planes, which "
                                   "makes it).")
    servers = [server.strip() for server in (dns or "").split(",") if server.strip()]
    mirrors = dict(_assignment(item, "--registry-mirror") for item in registry_mirrors)
    check_value("registry_mirrors", mirrors, "--registry-mirror")
    cluster = clusters.init_cluster(directory, api_server, endpoint, kubernetes_version, node_subnet, approval_mode,
                                    gateway, servers, pod_subnet, service_subnet, offline, mirrors, api_server_vip,
                                    vip)
    summary = {"directory": str(directory), "endpoint": cluster.endpoint,
               "endpoint_fingerprint": cluster.endpoint_fingerprint, "kubernetes_version": cluster.kubernetes_version}
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    click.echo(f"created cluster directory {directory}")
    click.echo(f"token endpoint {cluster.endpoint}, certificate {cluster.endpoint_fingerprint}")
    if vip:
        click.echo(f"API server {cluster.api_server}: a virtual IP kube-vip holds on the control planes")
        click.echo(f"next: pi-image cluster add-node {directory} NAME --profile PROFILE --address A.B.C.D, for each "
                   "of three (or five) control planes, then the workers")
        return
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
    if load_profile(profile)["target"] in MACHINE_TARGETS:  # no card: a seed ISO, or an enroll script
        click.echo(f"next: pi-image seed-iso --cluster {directory} --node {node.name} (a fresh cloud image), or "
                   f"pi-image enroll --cluster {directory} --node {node.name} (a machine installed already)")
    else:
        click.echo(f"next: pi-image build --cluster {directory} --node {node.name}"
                   + ("" if node.base else " --base IMAGE"))
    click.echo(fleet.push_inventory(cluster))


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
    click.echo(fleet.push_inventory(cluster))


@cluster_group.command("kubeconfig")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Where to write it [default: DIRECTORY/kubeconfig].")
@MASTER_ENDPOINT_OPTION
@click.option("--force", is_flag=True, help="Replace an existing FILE instead of merging into it.")
def kubeconfig_command(directory: Path, output: Path | None, endpoint: str | None, force: bool) -> None:
    """Fetch the cluster's admin kubeconfig from the master's token endpoint (pinned TLS, the admin credential).

    The master's card makes it at first boot (kubeadm init); this copies it here, 0600. Into an existing FILE it is
    merged under a context named after the cluster directory (its cluster and user too; entries of those names
    replaced, the rest kept); --force replaces the file instead.

    \b
    Examples:
      pi-image cluster kubeconfig lab
      pi-image cluster kubeconfig lab -o ~/.kube/config && kubectl --context lab get nodes
    """
    cluster = clusters.load_cluster(directory)
    target = output or directory / "kubeconfig"
    answered = fleet.ask_master(cluster, endpoint, lambda client: client.admin_kubeconfig())
    for line in answered.note():
        click.echo(line)
    text = answered.answer.payload.get("kubeconfig")
    if not isinstance(text, str):
        raise UserError(f"the token endpoint at {answered.address} gave no kubeconfig: {answered.answer.error}")
    name = directory.resolve().name
    if target.exists() and not force:
        try:
            existing = target.read_text()
        except (OSError, UnicodeDecodeError) as err:
            raise UserError(f"{target}: cannot read it to merge into ({err}): --force replaces it") from None
        write_atomic(target, merge_kubeconfig(existing, text, name, str(target)))
        click.echo(f"merged the admin kubeconfig of cluster {name} into {target} as context {name} (0600)")
        click.echo(f"next: kubectl --kubeconfig {target} --context {name} get nodes")
        return
    write_atomic(target, text)
    click.echo(f"wrote the admin kubeconfig of cluster {name} to {target} (0600)")
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
    answered = fleet.ask_master(cluster, endpoint, lambda client: client.admin_sync_inventory(nodes))
    for line in answered.note():
        click.echo(line)
    click.echo(f"the token endpoint at {answered.address} now knows the {answered.answer.payload.get('nodes')} "
               f"node(s) of {directory / 'inventory.yaml'}")
    click.echo(f"next: power the new nodes on; `pi-image status --cluster {directory}` shows them")


@cluster_group.command("upgrade")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--to", "to", metavar="1.NN", help="The next minor [default: the upgrade cluster.yaml records, resumed].")
@click.option("--no-wait", is_flag=True, help="Start the upgrade and return; `pi-image status` follows it, the same "
              "command run again waits for it and upgrades the other control planes.")
@MASTER_ENDPOINT_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document at the end (no progress lines).")
def upgrade_command(directory: Path, to: str | None, no_wait: bool, endpoint: str | None, as_json: bool) -> None:
    """Move the running cluster of DIRECTORY one Kubernetes minor up: its control planes upgrade themselves in place.

    Checked first, and refused in one line with nothing changed: a downgrade, the same minor, a jump of two, a minor
    pi-image does not know, another upgrade recorded or running, an offline or release-path cluster (not yet), a node
    whose kubelet would fall outside Kubernetes' version-skew policy (more than three minors behind, or ahead), a
    master that does not answer. Then the first control plane runs `kubeadm upgrade apply` (the others `kubeadm
    upgrade node`, one after the other), each drained around its kubelet's restart; every phase is shown as its
    status reports it. Once every control plane runs the new minor, cluster.yaml says so and new cards get it;
    workers keep their version until reflashed. A failure says its phase and fix (exit 1): the same command resumes.

    \b
    Examples:
      pi-image cluster upgrade lab --to 1.32
      pi-image cluster upgrade lab --to 1.32 --no-wait && pi-image status --cluster lab --watch
      pi-image cluster upgrade lab                 # resume the upgrade cluster.yaml records
      pi-image cluster upgrade lab --to 1.32 --json | jq .control_planes
    """
    cluster = clusters.load_cluster(directory)
    upgrade = upgrades.prepare_upgrade(cluster, to, endpoint)
    say = (lambda line: None) if as_json else click.echo
    say(f"{'resuming the upgrade' if upgrade.resumed else 'upgrading'} {directory} from Kubernetes "
        f"{upgrade.start} to {upgrade.to}:")
    for row in upgrades.outlook(upgrade):
        say(f"  {row['node']} ({row['role']}" + (f", kubelet {row['kubelet_version']}" if row["kubelet_version"]
                                                  else "") + f"): {row['action']}")
    done = upgrades.run_upgrade(upgrade, not no_wait, say)
    if as_json:
        click.echo(json.dumps(upgrade.to_dict(done), indent=2))
        return
    if not done:
        running = next(step for step in upgrade.steps if step.state != "done")
        click.echo(f"{running.node}: upgrade to {upgrade.to} {running.state} ({running.mode}, its endpoint "
                   f"{running.address}); {directory / 'cluster.yaml'} records upgrade_to {upgrade.to}")
        click.echo(f"next: pi-image status --cluster {directory} --watch (each phase), then `pi-image cluster "
                   f"upgrade {directory}` " + ("upgrades the other control planes" if len(upgrade.steps) > 1
                                                 else "records the new version"))
        return
    took = ", ".join(f"{step.node} in {fleet.duration(step.took)}" for step in upgrade.steps if step.took is not None)
    click.echo(f"the control plane of {directory} runs Kubernetes {upgrade.to}" + (f" ({took})" if took else "")
               + f"; {directory / 'cluster.yaml'} now says kubernetes_version {upgrade.to}")
    workers = [node.name for node in cluster.nodes if node.role != "control-plane"]
    if workers:
        click.echo(f"next: reflash the workers to move them to {upgrade.to} (`pi-image build --cluster {directory} "
                   f"--node NAME`: {', '.join(workers)}), then `pi-image cluster verify {directory}`")
    else:
        click.echo(f"next: pi-image cluster verify {directory}")


@click.command("token-server")
@CLUSTER_OPTION
@click.option("--listen", metavar="ADDR:PORT", help="Address to serve on [default: 0.0.0.0:<endpoint port>].")
@click.option("--ca-cert", type=click.Path(dir_okay=False, path_type=Path),
              help="Cluster CA certificate for the discovery hash "
                   f"[default: cluster.yaml, {clusters.DEFAULT_CA_CERT}].")
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


@click.command("approve")
@click.argument("name")
@DEFAULT_CLUSTER_OPTION
@STATE_OPTION
@LOCAL_OPTION
@MASTER_ENDPOINT_OPTION
@click.option("--replace", is_flag=True, help="Also let it replace a Ready node of the same name (a reflash).")
def approve_command(name: str, cluster_dir: Path | None, state_dir: Path | None, local: bool, endpoint: str | None,
                    replace: bool) -> None:
    """Let node NAME join: a pending unknown node, or a reflashed one replacing its Ready namesake.

    Asks the master's token endpoint (pinned TLS, the admin credential), unless the endpoint serves from this
    machine or --local/--state-dir says so. NAME must be in the inventory or have asked to join (`pi-image status`
    shows it as pending).

    \b
    Examples:
      pi-image approve pi-worker7
      pi-image approve pi-worker1 --cluster lab --replace
    """
    if not protocol.NODE_NAME_RE.match(name):
        raise UserError(f"{name!r} is not a valid node name (lower-case letters, digits and '-')")
    cluster = clusters.load_cluster(clusters.required_cluster_dir(cluster_dir))
    consent = " (may replace its Ready namesake once)" if replace else ""
    here = fleet.local_state_dir(cluster, state_dir, local, endpoint)
    if here is None:
        state, address = fleet.approve(cluster, name, replace, endpoint)
        click.echo(f"approved {name} on the master {address}{consent}; it is {state} there")
        return
    here_dir = here[0]
    if all(node.name != name for node in cluster.nodes) and name not in fleet.recorded_nodes(here_dir):
        raise UserError(f"node {name!r} is in no inventory and has not asked to join: nothing to approve; add it "
                        f"with `pi-image cluster add-node {cluster.directory} {name} --profile PROFILE`, or approve it "
                        "once `pi-image status` shows it pending")
    with fleet.node_store(here_dir) as store:
        store.approve(name, replace)
    click.echo(f"approved {name} in the local state in {here_dir}{consent}")


@click.command("status")
@DEFAULT_CLUSTER_OPTION
@STATE_OPTION
@LOCAL_OPTION
@MASTER_ENDPOINT_OPTION
@click.option("--watch", is_flag=True, help="Redraw every 2 s until Ctrl-C.")
@JSON_OPTION
def status_command(cluster_dir: Path | None, state_dir: Path | None, local: bool, endpoint: str | None, watch: bool,
                   as_json: bool) -> None:
    """Show every node's story: its phase and how long each took, address, architecture, OS, whether its card is
    the newest, its last error and the fix.

    Also each node's kubelet version, and above the nodes the cluster's Kubernetes version, the API server's and an
    upgrade's phase (`pi-image cluster upgrade`); when every control plane runs the minor an upgrade recorded,
    cluster.yaml is moved to it.

    Asks the master's token endpoint (pinned TLS, the admin credential) and says so; reads the endpoint's state
    here instead where `pi-image token-server` serves this cluster from this machine, with --local or --state-dir,
    and before the master's card is built. A master that cannot be reached: one line, what it said last, exit 1.

    \b
    Phases: booted, local-setup, runtime-installed (bundle or network),
      waiting-for-control-plane, token-issued, initialized (a control plane),
      joined, ready (from the API server); pending: waiting for `pi-image approve`.

    \b
    Examples:
      pi-image status
      pi-image status --cluster lab --watch
      pi-image status --json | jq '.[] | select(.last_error)'
    """
    cluster = clusters.load_cluster(clusters.required_cluster_dir(cluster_dir))
    here = fleet.local_state_dir(cluster, state_dir, local, endpoint)
    if not watch:
        view, away = _fleet_view(cluster, here, endpoint)
        if view is not None:
            _show(view, as_json)
        if away:
            raise UserError(away)
        return
    clear = sys.stdout.isatty() and not as_json
    try:
        while True:
            view, away = _fleet_view(cluster, here, endpoint)
            click.echo("\x1b[H\x1b[2J" if clear else ("" if as_json else "\n"), nl=False)
            if away:
                click.echo(f"pi-image: {away}", err=not clear)
            if view is not None:
                _show(view, as_json, compact=True)
            time.sleep(2)
    except KeyboardInterrupt:
        return


def _fleet_view(cluster: clusters.Cluster, here: tuple[Path, str] | None,
                endpoint: str | None) -> tuple[fleet.FleetView | None, str | None]:
    """The rows to show, and the one line to say when the master cannot be reached: what it said last is shown,
    if it ever answered here."""
    return fleet.select_view(cluster, here, endpoint)


def _show(view: fleet.FleetView, as_json: bool, compact: bool = False) -> None:
    if as_json:
        rows = [row.to_dict() for row in view.rows]
        click.echo(json.dumps(rows) if compact else json.dumps(rows, indent=2))
        return
    click.echo("\n".join(fleet.status_lines(view, time.time())))


for _command in (show_command, set_command, verify_command):  # cluster show / set / verify
    cluster_group.add_command(_command)



def _assignment(item: str, option: str) -> tuple[str, str]:
    """KEY=VALUE of a repeatable option, or a usage error naming it."""
    key, sep, value = item.partition("=")
    if not sep or not key or not value:
        raise click.BadParameter(f"{item!r}: expected KEY=VALUE", param_hint=option)
    return key.strip(), value.strip()
