"""A cluster directory: the settings, the inventory and the secrets that let built images join by themselves.

    DIR/cluster.yaml     api_server, endpoint, kubernetes_version, node_subnet, pod_subnet, service_subnet, gateway,
                         dns, approval_mode, ca_cert, kubeconfig, endpoint_fingerprint (public: what images pin);
                         offline, registry_mirrors, package_mirrors (every node's default, as profile settings);
                         kubernetes_release (the exact patch every card of the cluster runs, recorded by the first
                         --offline build or the first of a node installed from the upstream release: later cards
                         hold or fetch the same one); upgrade_to (the minor `pi-image cluster upgrade` moves the
                         control planes to: until they all run it, cards are still made at kubernetes_version, which
                         then becomes it — builder/cluster/upgrade.py)
    DIR/inventory.yaml   nodes: [{name, role, profile, mac, address, generation, base}], retired: {name: generation}
    DIR/secrets/         0700 — enrollment.key (hex), endpoint.key + endpoint.crt (ECDSA P-256, self-signed); 0600;
                         certificate.key (hex, kubeadm's --certificate-key: made by `cluster init --vip`, else when the
                         first card of several control planes needs it)
    DIR/tokend.json      the token endpoint's configuration, regenerated from the above (firstboot/endpoint/settings.py)
    DIR/state/           the endpoint's SQLite state and audit log when it runs from this directory
    DIR/.inventory.lock  held by every change of the directory (inventory_lock): each writer re-reads the files
                         under it and replaces them atomically, so no change is lost and no generation goes back

Node credentials are never stored: each is HMAC-SHA256(enrollment key, node name, generation), derived when an image
is built. Every build of a node bumps its generation, so the endpoint accepts only the newest card of each node.

A cluster of several control planes (a virtual IP inside the node subnet as the API server, kube-vip holding it):
builder/cluster/several.py says when a cluster is one and checks it; node_config(), master_files() and
server_config() below give its nodes what they need.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import fcntl
import ipaddress
import json
import os
import re
import sys
import threading
from collections.abc import Iterator
from dataclasses import KW_ONLY, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from firstboot import protocol
from firstboot.endpoint.state import default_state_dir
from firstboot.nodeconfig import ROLES, ControlPlaneSettings, NodeConfig

from ..config import addresses
from ..config.addresses import DEFAULT_POD_SUBNET, DEFAULT_SERVICE_SUBNET
from ..config.profiles import check_value, load_profile
from ..config.runtimes import RUNTIMES
from ..errors import UserError
from ..outputs import write_atomic
from . import secrets as cluster_secrets
from . import several

DEFAULT_CA_CERT = "/etc/kubernetes/pki/ca.crt"
DEFAULT_KUBECONFIG = "/etc/kubernetes/admin.conf"
CLUSTER_ENV = "PI_IMAGE_CLUSTER"
_MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
_CLUSTER_KEYS = {"api_server", "endpoint", "kubernetes_version", "node_subnet", "pod_subnet", "service_subnet",
                 "gateway", "dns", "approval_mode", "endpoint_fingerprint", "ca_cert", "kubeconfig",
                 "offline", "registry_mirrors", "package_mirrors", "kubernetes_release", "api_server_vip",
                 "upgrade_to"}
# cluster.yaml keys that are profile settings too: a node's profile takes the cluster's unless it sets its own
NODE_DEFAULTS = ("offline", "registry_mirrors", "package_mirrors")
_NODE_KEYS = {"name", "role", "profile", "mac", "address", "generation", "base"}
REQUIRED_KEYS = ("api_server", "endpoint", "kubernetes_version", "node_subnet", "endpoint_fingerprint")
_URL_RE = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*://")  # how builder/bases/catalog.py tells a URL from a name
_held_locks = threading.local()  # the directories whose inventory lock this thread holds (the lock is re-entrant)


@dataclass
class Node:
    """One inventory entry: what the build needs to give an image its identity."""

    name: str
    profile: str
    _: KW_ONLY
    role: str = "worker"
    mac: str | None = None
    address: str | None = None  # A.B.C.D or A.B.C.D/NN, inside the node subnet
    generation: int = 0  # bumped by each build of this node; its credential is valid for this generation only
    base: str | None = None  # its vendor image (catalog name, URL or file), where it differs from its profile's


@dataclass(kw_only=True)
class Cluster:
    """A loaded cluster directory."""

    directory: Path
    api_server: str
    endpoint: str
    kubernetes_version: str
    node_subnet: str
    endpoint_fingerprint: str
    gateway: str | None = None  # of the node subnet: static addresses route through it
    dns: list[str] = field(default_factory=list)
    pod_subnet: str = DEFAULT_POD_SUBNET  # kubeadm's podSubnet = flannel's Network
    service_subnet: str = DEFAULT_SERVICE_SUBNET
    approval_mode: bool = False
    # api_server is a virtual IP or a load balancer in front of the control planes, not a control plane's own address
    api_server_vip: bool = False
    ca_cert: str = DEFAULT_CA_CERT
    kubeconfig: str = DEFAULT_KUBECONFIG
    nodes: list[Node] = field(default_factory=list)
    # generation of each removed node: a node added again under its name goes on from there, so no card made
    # before its removal can authenticate again
    retired: dict[str, int] = field(default_factory=dict)
    offline: bool = False
    registry_mirrors: dict[str, str] = field(default_factory=dict)
    package_mirrors: dict[str, str] = field(default_factory=dict)
    kubernetes_release: str | None = None  # "1.31.4": the patch every card runs, once a bundle or release pinned it
    upgrade_to: str | None = None  # "1.32": the minor `cluster upgrade` moves the control planes to, until they run it

    @property
    def secrets_dir(self) -> Path:
        return self.directory / cluster_secrets.SECRETS_DIR

    @property
    def state_dir(self) -> Path:
        """Where the token endpoint keeps its state when it runs from this directory (as the master's unit does)."""
        return Path(default_state_dir(str(self.directory / "tokend.json")))

    def node(self, name: str) -> Node:
        """The inventory entry for `name`; UserError naming the inventory if there is none."""
        for node in self.nodes:
            if node.name == name:
                return node
        known = ", ".join(n.name for n in self.nodes) or "none yet"
        raise UserError(f"{self.directory / 'inventory.yaml'}: no node named {name!r} (known: {known}); "
                        f"add it with `pi-image cluster add-node {self.directory} {name} --profile PROFILE`")

    def credential(self, node: Node) -> str:
        """The node's credential (hex) for its current generation, derived from the enrollment key."""
        key = cluster_secrets.read_enrollment_key(self.secrets_dir)
        return protocol.node_credential(key, node.name, node.generation)

    def admin_credential(self) -> str:
        """The operator's credential for the endpoint's /v1/admin/ requests (never a node's)."""
        return protocol.admin_credential(cluster_secrets.read_enrollment_key(self.secrets_dir))

    def settings(self) -> dict:
        """cluster.yaml's content."""
        return {k: v for k, v in asdict(self).items() if k in _CLUSTER_KEYS and v not in (None, [], {}, False)}


def init_cluster(directory: Path, api_server: str | None, endpoint: str | None, kubernetes_version: str,
                 node_subnet: str, approval_mode: bool = False, gateway: str | None = None,
                 dns: list[str] | None = None, pod_subnet: str = DEFAULT_POD_SUBNET,
                 service_subnet: str = DEFAULT_SERVICE_SUBNET, offline: bool = False,
                 registry_mirrors: dict[str, str] | None = None, api_server_vip: bool = False,
                 vip: str | None = None) -> Cluster:
    """Create DIR with settings, an empty inventory and fresh secrets; refuses to overwrite an existing cluster.

    `vip` (A.B.C.D, for several control planes held by kube-vip; see builder.cluster.several): the API server is
    VIP:6443 (`api_server` may then be omitted, else its host must be the VIP), api_server_vip is set, the endpoint
    defaults to VIP:8443, and the certificate key is made with the other secrets."""
    if (directory / "cluster.yaml").exists():
        raise _already_a_cluster(directory)
    if vip is not None:
        api_server, endpoint = _vip_sockets(vip, api_server, endpoint, node_subnet, gateway)
        api_server_vip = True
    if api_server is None or endpoint is None:
        missing = "--api-server" if api_server is None else "--endpoint"
        raise UserError(f"cluster init: {missing} HOST:PORT is needed (or --vip A.B.C.D for several control planes, "
                        "which makes both)")
    api_server = addresses.host_port(api_server, "--api-server")
    endpoint = addresses.host_port(endpoint, "--endpoint")
    if addresses.same_socket(api_server, endpoint):
        raise UserError(f"--endpoint {endpoint} is the API server's own address and port: the token endpoint needs "
                        f"a port of its own (like {protocol.split_host_port(endpoint)[0]}:8443)")
    version = addresses.minor(kubernetes_version, "--kubernetes-version")
    subnet = addresses.subnet(node_subnet, "--node-subnet")
    gateway = addresses.address_in(gateway, subnet, "--gateway") if gateway else None
    servers = [addresses.address(server, "--dns") for server in dns or []]
    pods = addresses.pod_subnet(pod_subnet, "--pod-subnet")
    services = addresses.subnet(service_subnet, "--service-subnet")
    addresses.disjoint({"--node-subnet": subnet, "--pod-subnet": pods, "--service-subnet": services}, "cluster init")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"{directory}: cannot create the cluster directory: {err.strerror}") from None
    with inventory_lock(directory):
        if (directory / "cluster.yaml").exists():  # another init won the race
            raise _already_a_cluster(directory)
        fingerprint = cluster_secrets.create_secrets(directory / cluster_secrets.SECRETS_DIR,
                                                     protocol.split_host_port(endpoint)[0])
        if vip is not None:
            cluster_secrets.create_certificate_key(directory / cluster_secrets.SECRETS_DIR)
        cluster = Cluster(directory=directory, api_server=api_server, endpoint=endpoint, kubernetes_version=version,
                          node_subnet=subnet, endpoint_fingerprint=fingerprint, gateway=gateway, dns=servers,
                          pod_subnet=pods, service_subnet=services, approval_mode=approval_mode, offline=offline,
                          registry_mirrors=dict(registry_mirrors or {}), api_server_vip=api_server_vip)
        _write_inventory(cluster)
        _write_yaml(directory / "cluster.yaml", cluster.settings(), 0o644)  # last: it makes DIR a cluster
    return cluster


def _vip_sockets(vip: str, api_server: str | None, endpoint: str | None, node_subnet: str,
                 gateway: str | None) -> tuple[str, str]:
    """The API server and the endpoint of `cluster init --vip VIP`: VIP:6443 and VIP:8443 unless given (an API server
    given must be at the VIP); the VIP checked against the node subnet and the gateway (several.vip_problem)."""
    subnet = addresses.subnet(node_subnet, "--node-subnet")
    several.check_vip(vip.strip(), subnet, gateway and addresses.address_in(gateway, subnet, "--gateway"), [],
                      f"--vip {vip}", f"pick a free address inside {subnet} that no node and no router uses")
    host = str(ipaddress.ip_address(vip.strip()))
    if api_server is not None:
        api_host = protocol.split_host_port(addresses.host_port(api_server, "--api-server"))[0]
        if api_host != host:
            raise UserError(f"--api-server {api_server}: with --vip {host} the API server is the virtual IP: drop "
                            f"--api-server (it becomes {host}:{several.DEFAULT_API_PORT}) or give {host}:PORT")
    return (api_server or f"{host}:{several.DEFAULT_API_PORT}",
            endpoint or f"{host}:{several.DEFAULT_ENDPOINT_PORT}")


def _already_a_cluster(directory: Path) -> UserError:
    return UserError(f"{directory}: already a cluster directory (cluster.yaml exists); pick another directory, or "
                     f"change its settings with `pi-image cluster set {directory} KEY=VALUE`")


def load_cluster(directory: Path) -> Cluster:
    """Read DIR/cluster.yaml and DIR/inventory.yaml."""
    path = directory / "cluster.yaml"
    settings = _read_yaml_mapping(path, "run `pi-image cluster init` first")
    _reject_unknown_keys(path, settings, _CLUSTER_KEYS, "")
    settings = check_settings(settings, str(path))
    nodes, retired = load_inventory(directory, settings["node_subnet"])
    return Cluster(directory=directory, nodes=nodes, retired=retired, **settings)


def check_settings(settings: dict, where: str) -> dict:
    """cluster.yaml's `settings` (known keys only) checked and normalized; a UserError naming `where` and the key.

    The one check of cluster settings: load_cluster() of every file and `pi-image cluster set` of every value."""
    settings = dict(settings)
    missing = sorted(set(REQUIRED_KEYS) - set(settings))
    if missing:
        raise UserError(f"{where}: missing key(s) {', '.join(missing)}")
    for key in ("api_server", "endpoint", "endpoint_fingerprint", "ca_cert", "kubeconfig"):
        if key in settings and not isinstance(settings[key], str):
            raise UserError(f"{where}: {key} must be a string, not {settings[key]!r}")
    for key in ("api_server", "endpoint"):
        settings[key] = addresses.host_port(settings[key], f"{where}: {key}")
    if addresses.same_socket(settings["api_server"], settings["endpoint"]):
        raise UserError(f"{where}: endpoint {settings['endpoint']} is the API server's own address and port: the "
                        "token endpoint needs a port of its own (like "
                        f"{protocol.split_host_port(settings['endpoint'])[0]}:8443)")
    settings["kubernetes_version"] = addresses.minor(str(settings["kubernetes_version"]),
                                                     f"{where}: kubernetes_version")
    for key, check in (("node_subnet", addresses.subnet), ("pod_subnet", addresses.pod_subnet),
                       ("service_subnet", addresses.subnet)):
        if key in settings:
            settings[key] = check(str(settings[key]), f"{where}: {key}")
    addresses.disjoint({"node_subnet": settings["node_subnet"],
                        "pod_subnet": settings.get("pod_subnet", DEFAULT_POD_SUBNET),
                        "service_subnet": settings.get("service_subnet", DEFAULT_SERVICE_SUBNET)}, where)
    if settings.get("gateway") is not None:
        settings["gateway"] = addresses.address_in(str(settings["gateway"]), settings["node_subnet"],
                                                   f"{where}: gateway")
    dns = settings.get("dns") or []
    if not isinstance(dns, list):
        raise UserError(f"{where}: dns must be a list of addresses (like [192.168.6.1]), not {dns!r}")
    settings["dns"] = [addresses.address(str(server), f"{where}: dns") for server in dns]
    for key in ("approval_mode", "offline", "api_server_vip"):
        if not isinstance(settings.get(key, False), bool):
            raise UserError(f"{where}: {key} must be true or false, not {settings[key]!r}")
    for key in NODE_DEFAULTS:
        if key in settings:
            check_value(key, settings[key], where)
    release = settings.get("kubernetes_release")
    if release is not None and not re.fullmatch(re.escape(settings["kubernetes_version"]) + r"\.\d{1,3}", str(release)):
        raise UserError(f"{where}: kubernetes_release {release!r} is not a patch of kubernetes_version "
                        f"{settings['kubernetes_version']} (like {settings['kubernetes_version']}.4)")
    if settings.get("upgrade_to") is not None:
        settings["upgrade_to"] = addresses.minor(str(settings["upgrade_to"]), f"{where}: upgrade_to")
        current, target = (protocol.minor_version(settings[key]) for key in ("kubernetes_version", "upgrade_to"))
        if target <= current:
            raise UserError(f"{where}: upgrade_to {settings['upgrade_to']} is not newer than kubernetes_version "
                            f"{settings['kubernetes_version']}: remove the line (`pi-image cluster upgrade` records "
                            "it)")
    return settings


def load_inventory(directory: Path, node_subnet: str) -> tuple[list[Node], dict[str, int]]:
    """The nodes of DIR/inventory.yaml, validated (names, addresses and MACs unique), and the retired generations."""
    path = directory / "inventory.yaml"
    data = _read_yaml_mapping(path, "run `pi-image cluster init` first")
    _reject_unknown_keys(path, data, {"nodes", "retired"}, "")
    retired = data.get("retired") or {}
    if not isinstance(retired, dict) or not all(isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool)
                                                for k, v in retired.items()):
        raise UserError(f"{path}: 'retired' must map node names to generations (written by remove-node)")
    entries = data.get("nodes") or []
    if not isinstance(entries, list):
        raise UserError(f"{path}: 'nodes' must be a list")
    nodes: list[Node] = []
    for index, entry in enumerate(entries):
        where = f"{path}: nodes[{index}]"
        if not isinstance(entry, dict):
            raise UserError(f"{where} must be a mapping")
        _reject_unknown_keys(path, entry, _NODE_KEYS, f"nodes[{index}]: ")
        if "name" not in entry or "profile" not in entry:
            raise UserError(f"{where} needs 'name' and 'profile'")
        generation = entry.get("generation", 0)
        if not isinstance(generation, int) or isinstance(generation, bool) or generation < 0:
            raise UserError(f"{where}: generation must be a whole number, not {generation!r}")
        text: dict[str, Any] = {k: (str(v) if v is not None else None) for k, v in entry.items()
                                if k not in ("name", "profile", "generation")}
        node = Node(str(entry["name"]), str(entry["profile"]), **text, generation=generation)
        nodes.append(_checked_node(node, node_subnet, where))
    _refuse_duplicates(path, nodes)
    return nodes, retired


@contextlib.contextmanager
def changing(directory: Path) -> Iterator[Cluster]:
    """The cluster as DIR holds it now, to change in the `with` block: read under the inventory lock, and written
    back atomically when the block ends without an error (inventory.yaml and tokend.json; cluster.yaml if its
    settings changed). Every change of a cluster directory goes through here, so none works on a stale copy."""
    with inventory_lock(directory):
        cluster = load_cluster(directory)
        settings = cluster.settings()
        yield cluster
        if cluster.settings() != settings:
            _write_yaml(directory / "cluster.yaml", cluster.settings(), 0o644)
        _write_inventory(cluster)


def _write_inventory(cluster: Cluster) -> None:
    """inventory.yaml and tokend.json of `cluster`, atomically (the caller holds the inventory lock)."""
    entries = [{k: v for k, v in asdict(node).items() if v is not None} for node in cluster.nodes]
    data: dict = {"nodes": entries}
    if cluster.retired:
        data["retired"] = dict(sorted(cluster.retired.items()))
    _write_yaml(cluster.directory / "inventory.yaml", data, 0o644)
    _write_server_config(cluster)


def add_node(cluster: Cluster, name: str, profile: str, role: str | None, profile_role: str,
             mac: str | None = None, address: str | None = None, base: str | None = None) -> Node:
    """Add a node to the inventory; its role is the profile's unless `role` says the same or the profile has none.

    Applied to the inventory as it is now (re-read under the lock); `cluster` is brought up to date with it. A node
    added again after its removal goes on from its retired generation. A `base` that is a file or directory is
    stored as its absolute path (the inventory is used from other directories); a catalog name or URL as it is."""
    if role and role != profile_role:
        raise UserError(f"--role {role} conflicts with profile '{profile}', which builds a {profile_role} node: "
                        f"drop --role or pick a {role} profile")
    with changing(cluster.directory) as current:
        node = Node(name, profile, role=role or profile_role, mac=mac.lower() if mac else None, address=address,
                    base=_stored_base(base, name) if base else None)
        _checked_node(node, current.node_subnet, f"node {name!r}")
        several.check_control_planes(dataclasses.replace(current, nodes=current.nodes + [node]), f"node {name!r}")
        _check_node_in(current, node, f"node {name!r}", f"add it with --address {_api_host(current)}")
        _refuse_duplicates(current.directory / "inventory.yaml", current.nodes + [node])
        node.generation = current.retired.pop(name, 0)
        current.nodes.append(node)
    _adopt(cluster, current)
    return node


def remove_node(cluster: Cluster, name: str) -> Node:
    """Take `name` out of the inventory as it is now: its cards can no longer ask for a token (its generation is
    kept as retired, so a node added again under its name goes on from there). `cluster` is brought up to date."""
    with changing(cluster.directory) as current:
        node = current.node(name)
        current.nodes.remove(node)
        current.retired[name] = node.generation
    _adopt(cluster, current)
    return node


def check_inventory(cluster: Cluster, where: str) -> None:
    """Every node of `cluster` checked against its settings as they are now (after a change of them): its address
    inside the node subnet and not the gateway, a control plane at the API server's address; several control planes
    at a virtual IP of the node subnet that is neither the gateway nor a node's, each with a fixed address."""
    several.check_control_planes(cluster, where)
    for node in cluster.nodes:
        _check_node_in(cluster, node, f"{where}: node {node.name!r}", "change the setting back, or that node's "
                       f"entry in {cluster.directory / 'inventory.yaml'}", f"{where}: ")


def _check_node_in(cluster: Cluster, node: Node, where: str, control_plane_fix: str, prefix: str = "") -> None:
    _checked_node(node, cluster.node_subnet, where)
    if node.address and cluster.gateway and node.address.split("/")[0] == cluster.gateway:
        raise UserError(f"{where}: {cluster.gateway} is the subnet's gateway; give the node an address of its own")
    check_control_plane_address(cluster, node, control_plane_fix, prefix)


def _adopt(stale: Cluster, current: Cluster) -> None:
    """Make the caller's `stale` copy the cluster as written."""
    for item in fields(Cluster):
        setattr(stale, item.name, getattr(current, item.name))


def _stored_base(base: str, name: str) -> str:
    """A node's base as the inventory keeps it: an existing file or directory as its absolute path, a URL or a name
    as given (a catalog name: the build checks it against the catalog then); a path that does not exist is refused."""
    if Path(base).exists():
        return str(Path(base).resolve())
    if _URL_RE.match(base) or os.sep not in base:
        return base
    raise UserError(f"node {name!r}: --base {base}: no such file or directory; give an existing image file (kept as "
                    "its absolute path), an https URL or a catalog name (`pi-image bases` lists them)")


def record_generation(directory: Path, name: str, built: int) -> None:
    """Record that the card of `name`'s generation `built` is made (its older cards' credentials die with this).

    Under a lock on the inventory, and only forwards: if another build of the node recorded this generation or a
    newer one meanwhile, this card could never authenticate, so the build fails instead of publishing it.
    """
    with changing(directory) as cluster:
        node = cluster.node(name)
        if node.generation >= built:
            raise UserError(f"another build of node {name!r} finished first (generation {node.generation}): "
                            "this image could not join; build it again")
        node.generation = built


def record_release(directory: Path, release: str) -> None:
    """Record the Kubernetes patch the cluster's cards run (that of the first --offline build, or of the first build
    installing the upstream release), so that every later card runs the same one."""
    with changing(directory) as cluster:
        if cluster.kubernetes_release not in (None, release):
            raise UserError(f"{directory / 'cluster.yaml'}: the cluster's cards run Kubernetes "
                            f"{cluster.kubernetes_release}, not {release}: build again")
        cluster.kubernetes_release = release


def record_upgrade(directory: Path, to: str) -> None:
    """Record in cluster.yaml that the control planes are moving to minor `to` (`pi-image cluster upgrade`); a
    UserError if another upgrade was recorded meanwhile."""
    with changing(directory) as cluster:
        if cluster.upgrade_to not in (None, to):
            raise UserError(f"{directory / 'cluster.yaml'}: an upgrade to {cluster.upgrade_to} was recorded "
                            f"meanwhile: finish it first (`pi-image cluster upgrade {directory}`)")
        cluster.upgrade_to = to


def finish_upgrade(directory: Path, to: str) -> bool:
    """Every control plane runs minor `to`: cluster.yaml's kubernetes_version becomes it, and upgrade_to and
    kubernetes_release (a patch of the old minor) go, so the next builds make cards of `to`. False (nothing written)
    when cluster.yaml records no upgrade to `to` (done already by another command)."""
    with changing(directory) as cluster:
        if cluster.upgrade_to != to:
            return False
        cluster.kubernetes_version, cluster.upgrade_to, cluster.kubernetes_release = to, None, None
    return True


def upgrade_note(cluster: Cluster) -> str | None:
    """What a build says while an upgrade is recorded: its card is still of the old minor, and why."""
    if cluster.upgrade_to is None:
        return None
    return (f"cluster {cluster.directory} is upgrading to Kubernetes {cluster.upgrade_to}: this card is made at "
            f"{cluster.kubernetes_version}, which it joins with until every control plane runs {cluster.upgrade_to} "
            "(a kubelet may trail the API server by three minors); cards built after that get "
            f"{cluster.upgrade_to} (`pi-image status` shows how far the upgrade is)")


def next_free_node(cluster: Cluster, profile: str, base: str | None = None) -> tuple[Node, bool]:
    """The node a card of `profile` built from `base` (a catalog name or URL; None for a file) becomes when none is
    named: the first inventory node of that profile (and no other base) never built yet, else a new one (added to the
    inventory, DHCP) named after its siblings (pi-worker3 after pi-worker2), or PROFILE-1. Returns the node and
    whether it was added."""
    with inventory_lock(cluster.directory):
        current = load_cluster(cluster.directory)
        siblings = [node for node in current.nodes if same_profile(node.profile, profile)]
        for node in siblings:
            if node.generation == 0 and node.base in (None, base):
                return node, False
        taken = {node.name for node in current.nodes} | set(current.retired)
        stem = _name_stem(siblings[-1].name) if siblings else f"{Path(profile).stem}-"
        number = 1 + max((int(n.name[len(stem):]) for n in siblings
                          if n.name.startswith(stem) and n.name[len(stem):].isdigit()), default=0)
        while f"{stem}{number}" in taken:
            number += 1
        node = add_node(current, f"{stem}{number}", profile, None, load_profile(profile, {})["role"])
    _adopt(cluster, current)
    return node, True


def same_profile(a: str, b: str) -> bool:
    """True if two inventory/recipe profile references name the same profile (a name, or a file by its path)."""
    if a == b:
        return True
    return Path(a).is_file() and Path(b).is_file() and Path(a).resolve() == Path(b).resolve()


def _name_stem(name: str) -> str:
    """`pi-worker` of `pi-worker2`: the name without its trailing number."""
    return name.rstrip("0123456789")


def default_cluster_dir() -> Path | None:
    """The cluster build and flash use without --cluster: $PI_IMAGE_CLUSTER (which must be one), else
    $XDG_CONFIG_HOME/pi-image/cluster (~/.config/pi-image/cluster) if it holds a cluster.yaml, else None."""
    named = os.environ.get(CLUSTER_ENV)
    if named:
        if not (Path(named) / "cluster.yaml").is_file():
            raise UserError(f"{CLUSTER_ENV}={named}: no cluster.yaml there; create it with `pi-image cluster init "
                            f"{named} ...` or unset {CLUSTER_ENV}")
        return Path(named)
    default = default_cluster_location()
    return default if (default / "cluster.yaml").is_file() else None


def required_cluster_dir(cluster: Path | None) -> Path:
    """--cluster, else the default cluster (default_cluster_dir()); one line naming the three ways to give one."""
    directory = cluster or default_cluster_dir()
    if directory is None:
        raise UserError(f"no cluster: pass --cluster DIR, set {CLUSTER_ENV}, or create {default_cluster_location()} "
                        "with `pi-image cluster init`")
    return directory


def default_cluster_location() -> Path:
    """Where `pi-image cluster init` users keep their one cluster by default."""
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "pi-image" / "cluster"


def check_writable(directory: Path) -> None:
    """A cluster build records the node's generation in DIR: refuse before any work if it cannot."""
    if not os.access(directory, os.W_OK | os.X_OK):
        raise UserError(f"{directory}: cannot write the inventory here (a build records each node's generation): "
                        "run as the directory's owner")


@contextlib.contextmanager
def inventory_lock(directory: Path) -> Iterator[None]:
    """Held by every change of DIR (see `changing`); re-entrant within a thread (next_free_node adds a node under it).

    An flock on DIR/.inventory.lock: released by the kernel when its holder dies, so a killed build never wedges it.
    """
    held: set[str] = _held_locks.__dict__.setdefault("directories", set())
    key = os.path.realpath(directory)
    if key in held:
        yield
        return
    try:
        descriptor = os.open(directory / ".inventory.lock", os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
    except FileNotFoundError:
        raise UserError(f"{directory / 'cluster.yaml'}: not found; run `pi-image cluster init` first") from None
    except OSError as err:
        raise UserError(f"{directory}: cannot lock the inventory ({err.strerror}): run as the directory's "
                        "owner") from None
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        held.add(key)
        try:
            yield
        finally:
            held.discard(key)
    finally:
        os.close(descriptor)


def local_node_config(node_name: str, kubernetes_version: str, runtime: str = "containerd",
                      role: str = "worker") -> NodeConfig:
    """node.json for an image built without a cluster: the agent only does local setup, then marks itself done.

    node (Kubernetes node name), role (worker | control-plane), kubernetes_version ("1.31", the pinned minor),
    runtime (containerd | docker: picks kubeadm's CRI socket). The build adds runtime_packages
    (builder.config.runtimes), package_manager (the target's), kube_install, kubelet and built_at, and on the release
    path kubernetes_release and release (builder.build.prepare, builder.plan.release)."""
    if runtime not in RUNTIMES:
        raise UserError(f"runtime must be one of {', '.join(RUNTIMES)}, not {runtime!r}")
    return NodeConfig(node=node_name, role=role, runtime=runtime,
                      kubernetes_version=addresses.minor(kubernetes_version, "kubernetes_version"))


def node_config(cluster: Cluster, node: Node, runtime: str = "containerd", admin_user: str | None = None) -> NodeConfig:
    """node.json for `node`'s image (written 0600 root:root at /etc/pi-image/node.json; its keys: firstboot.nodeconfig).

    The keys of local_node_config(), plus api_server and node_subnet of the cluster and the node's `generation` (which
    build of the node the card is; the endpoint knows the current one); for a worker the token endpoint it asks for a
    join token and its credential (HMAC-SHA256(enrollment key, node name, generation)); for a control plane, which
    runs `kubeadm init` itself and never joins (so gets no credential), the pod and service subnets and `admin_user`
    (who gets ~/.kube/config).

    In a cluster of several control planes (builder.cluster.several) every node also gets `fallback_endpoints`,
    the other control planes' endpoints, and every control plane asks the endpoint as a worker does (endpoint,
    fingerprint, credential), with the virtual IP and whether it may initialize (the inventory's first) in its
    control_plane settings. A cluster with one control plane: exactly as before.

    A control plane of the inventory whose address is not the API server's is refused, as is one of 2, 4 or 6+
    control planes or of several without their virtual IP and fixed addresses (a profile image, whose node is not
    chosen yet, is checked when `pi-image flash` stamps one). While cluster.yaml records an upgrade (upgrade_to), the
    card is still of kubernetes_version, and stderr says so once (upgrade_note): nothing is refused.
    """
    listed = any(entry.name == node.name for entry in cluster.nodes)
    where = f"node {node.name!r}"
    _say_once(upgrade_note(cluster))
    several.check_control_planes(cluster, where, count=listed and node.role == "control-plane")
    if node.role == "control-plane" and listed:
        check_control_plane_address(cluster, node, f"set `address: {_api_host(cluster)}` for it in "
                                    f"{cluster.directory / 'inventory.yaml'}, or the API server's address with "
                                    f"`pi-image cluster set {cluster.directory} api_server=ADDRESS:PORT` while no "
                                    "card is built")
    config = local_node_config(node.name, cluster.kubernetes_version, runtime, node.role).replace(
        api_server=cluster.api_server, node_subnet=cluster.node_subnet, generation=node.generation,
        fallback_endpoints=several.fallback_endpoints(cluster, node.name))
    asks = config.replace(endpoint=cluster.endpoint, endpoint_fingerprint=cluster.endpoint_fingerprint,
                          credential=cluster.credential(node))
    if node.role == "worker":
        return asks
    settings = ControlPlaneSettings(pod_subnet=cluster.pod_subnet, service_subnet=cluster.service_subnet,
                                    admin_user=admin_user)
    if not several.several_control_planes(cluster):
        return config.replace(control_plane=settings)
    return asks.replace(control_plane=settings.replace(vip=several.virtual_ip(cluster),
                                                       may_initialize=several.may_initialize(cluster, node)))


def _say_once(note: str | None) -> None:
    """A note on stderr, once per process (a fleet build plans many cards of one cluster)."""
    if note and note not in _said:
        _said.add(note)
        print(f"pi-image: {note}", file=sys.stderr)


_said: set[str] = set()


def master_files(cluster: Cluster, settings: ControlPlaneSettings | None = None) -> list[tuple[str, bytes, int]]:
    """(path inside the cluster directory, content, mode) of what a control-plane image carries: the settings, the
    inventory, the token endpoint's configuration and the secrets it serves with (never the endpoint's state); and,
    for the control plane of several that may initialize the cluster (`settings`, node.json's), the certificate key
    (made now for a cluster that has none yet). The others get that key from an endpoint when they join.

    The endpoint on the master reads them from firstboot.nodeconfig.CLUSTER_DIR; `pi-image status|approve --cluster`
    run there find its state as they do on the host.
    """
    files = [("cluster.yaml", _yaml_text(cluster.settings()), 0o644),
             ("inventory.yaml", (cluster.directory / "inventory.yaml").read_bytes(), 0o644),
             ("tokend.json", (json.dumps(card_server_config(cluster), indent=2, sort_keys=True) + "\n").encode(),
              0o600)]
    names = list(cluster_secrets.SECRET_FILES)
    if settings is not None and settings.several and settings.may_initialize:
        with inventory_lock(cluster.directory):  # two first builds make one key
            names.append(cluster_secrets.create_certificate_key(cluster.secrets_dir).name)
    for name in names:
        files.append((f"{cluster_secrets.SECRETS_DIR}/{name}", (cluster.secrets_dir / name).read_bytes(), 0o600))
    return files


def server_config(cluster: Cluster) -> dict:
    """The token endpoint's tokend.json (see firstboot/endpoint/settings.py); secrets are referenced, not copied.

    `nodes` maps each inventory node to its current generation: only that generation's credential is accepted.
    A cluster of several control planes adds `control_planes` (their names: only they get the certificate key) and
    `certificate_key_file`.
    """
    config = {
        "api_server": cluster.api_server, "node_subnet": cluster.node_subnet,
        "kubernetes_version": cluster.kubernetes_version, "listen": f"0.0.0.0:{addresses.port(cluster.endpoint)}",
        "approval_mode": cluster.approval_mode, "nodes": {node.name: node.generation for node in cluster.nodes},
        **{setting: f"{cluster_secrets.SECRETS_DIR}/{name}" for setting, name in (
            ("enrollment_key_file", cluster_secrets.ENROLLMENT_KEY), ("tls_cert_file", cluster_secrets.ENDPOINT_CERT),
            ("tls_key_file", cluster_secrets.ENDPOINT_KEY))},
        "ca_cert_file": cluster.ca_cert, "kubeconfig": cluster.kubeconfig,
    }
    if several.several_control_planes(cluster):
        config.update(control_planes=[node.name for node in several.control_planes(cluster)],
                      certificate_key_file=f"{cluster_secrets.SECRETS_DIR}/{cluster_secrets.CERTIFICATE_KEY}")
    return config


def card_server_config(cluster: Cluster) -> dict:
    """tokend.json as a control-plane card carries it: kubeadm's own paths on that machine (never the host's
    cluster.yaml paths), and marked as a copy, so the inventory `pi-image cluster sync` pushes wins over it."""
    return {**server_config(cluster), "ca_cert_file": DEFAULT_CA_CERT, "kubeconfig": DEFAULT_KUBECONFIG,
            "inventory_copy": True}


def check_control_plane_address(cluster: Cluster, node: Node, fix: str, where: str = "") -> None:
    """A control plane must have the API server's address (api_server in cluster.yaml): it runs the API server,
    and every worker joins at that address, so with any other (or a DHCP one) they would dial it for ever.
    A UserError naming both addresses and `fix`. Not checkable where api_server names a host by DNS name, nor needed
    where it is a virtual IP or load balancer in front of the control planes (api_server_vip)."""
    if node.role != "control-plane" or cluster.api_server_vip:
        return
    try:
        api_host = ipaddress.ip_address(_api_host(cluster))
    except ValueError:
        return
    what = f"{where}control plane {node.name!r}"
    setting = f"api_server {cluster.api_server} of cluster {cluster.directory}"
    if not node.address:
        raise UserError(f"{what} has no fixed address but must have the API server's, {api_host} ({setting}): a "
                        f"DHCP address cannot be promised to it; {fix}")
    address = ipaddress.ip_interface(node.address).ip
    if address != api_host:
        raise UserError(f"{what} has address {address} but the API server is {api_host} ({setting}): workers would "
                        f"dial {api_host} for ever; {fix}")


def _api_host(cluster: Cluster) -> str:
    return protocol.split_host_port(cluster.api_server)[0]


def write_server_config(cluster: Cluster) -> Path:
    """(Re)write DIR/tokend.json atomically from the directory as it is now (under the inventory lock, re-read:
    `cluster` only says which directory, so a stale copy can never take a generation back)."""
    with inventory_lock(cluster.directory):
        return _write_server_config(load_cluster(cluster.directory))


def _write_server_config(cluster: Cluster) -> Path:
    path = cluster.directory / "tokend.json"
    write_atomic(path, json.dumps(server_config(cluster), indent=2, sort_keys=True) + "\n")
    return path


def _write_yaml(path: Path, data: dict, mode: int) -> None:
    write_atomic(path, _yaml_text(data).decode(), mode)


def _yaml_text(data: dict) -> bytes:
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False).encode()


def _read_yaml_mapping(path: Path, fix: str) -> dict:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: not found; {fix}") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text; fix or restore the file") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise UserError(f"{path}{line}: not valid YAML: {getattr(err, 'problem', err)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping at the top level")
    return data


def _reject_unknown_keys(path: Path, data: dict, allowed: set[str], where: str) -> None:
    for key in data:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), sorted(allowed), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise UserError(f"{path}: {where}unknown key {key!r}{hint}")


def _checked_node(node: Node, node_subnet: str, where: str) -> Node:
    if not protocol.NODE_NAME_RE.match(node.name):
        raise UserError(f"{where}: {node.name!r} is not a valid node name (lower-case letters, digits and '-', "
                        "at most 63 characters)")
    if node.role not in ROLES:
        raise UserError(f"{where}: role must be one of {', '.join(ROLES)}, not {node.role!r}")
    if node.mac and not _MAC_RE.match(node.mac.lower()):
        raise UserError(f"{where}: {node.mac!r} is not a MAC address (like dc:a6:32:01:02:03)")
    if node.address:
        node.address = addresses.address_in(node.address, node_subnet, f"{where}: address")
    return node


def _refuse_duplicates(path: Path, nodes: list[Node]) -> None:
    """Names, addresses and MACs are each one node's."""
    for what, value_of in (("name", lambda n: n.name), ("address", lambda n: n.address and n.address.split("/")[0]),
                           ("MAC", lambda n: n.mac and n.mac.lower())):
        seen: dict[str, str] = {}
        for node in nodes:
            value = value_of(node)
            if value and value in seen:
                raise UserError(f"{path}: {what} {value} already belongs to node {seen[value]!r}; every node needs "
                                "its own"
                                + (" (remove it first with `pi-image cluster remove-node`)" if what == "name" else ""))
            if value:
                seen[value] = node.name
