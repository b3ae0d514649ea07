"""A cluster directory: the settings, the inventory and the secrets that let built images join by themselves.

    DIR/cluster.yaml     api_server, endpoint, kubernetes_version, node_subnet, gateway, dns, approval_mode, ca_cert,
                         kubeconfig, endpoint_fingerprint (public: what images pin)
    DIR/inventory.yaml   nodes: [{name, role, profile, mac, address, generation}]
    DIR/secrets/         0700 — enrollment.key (hex), endpoint.key + endpoint.crt (ECDSA P-256, self-signed); 0600
    DIR/tokend.json      the token endpoint's configuration, regenerated from the above (firstboot/endpoint/settings.py)
    DIR/state/           the endpoint's SQLite state and audit log when it runs from this directory

Node credentials are never stored: each is HMAC-SHA256(enrollment key, node name, generation), derived when an image
is built. Every build of a node bumps its generation, so the endpoint accepts only the newest card of each node.
"""

from __future__ import annotations

import datetime
import difflib
import ipaddress
import json
import os
import re
import secrets
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from firstboot import protocol
from firstboot.endpoint.state import default_state_dir

from .errors import UserError
from .runtimes import RUNTIMES

ROLES = ("worker", "control-plane")
DEFAULT_CA_CERT = "/etc/kubernetes/pki/ca.crt"
DEFAULT_KUBECONFIG = "/etc/kubernetes/admin.conf"
_MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
_CLUSTER_KEYS = {"api_server", "endpoint", "kubernetes_version", "node_subnet", "gateway", "dns", "approval_mode",
                 "endpoint_fingerprint", "ca_cert", "kubeconfig"}
_NODE_KEYS = {"name", "role", "profile", "mac", "address", "generation"}


@dataclass
class Node:
    """One inventory entry: what the build needs to give an image its identity."""

    name: str
    profile: str
    role: str = "worker"
    mac: str | None = None
    address: str | None = None  # A.B.C.D or A.B.C.D/NN, inside the node subnet
    generation: int = 0  # bumped by each build of this node; its credential is valid for this generation only


@dataclass
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
    approval_mode: bool = False
    ca_cert: str = DEFAULT_CA_CERT
    kubeconfig: str = DEFAULT_KUBECONFIG
    nodes: list[Node] = field(default_factory=list)

    @property
    def secrets_dir(self) -> Path:
        return self.directory / "secrets"

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
        return protocol.node_credential(_read_enrollment_key(self.secrets_dir), node.name, node.generation)

    def settings(self) -> dict:
        """cluster.yaml's content."""
        return {k: v for k, v in asdict(self).items() if k in _CLUSTER_KEYS and v not in (None, [])}


def init_cluster(directory: Path, api_server: str, endpoint: str, kubernetes_version: str, node_subnet: str,
                 approval_mode: bool = False, gateway: str | None = None, dns: list[str] | None = None) -> Cluster:
    """Create DIR with settings, an empty inventory and fresh secrets; refuses to overwrite an existing cluster."""
    if (directory / "cluster.yaml").exists():
        raise UserError(f"{directory}: already a cluster directory (cluster.yaml exists); pick another directory")
    api_server = _host_port(api_server, "--api-server")
    endpoint = _host_port(endpoint, "--endpoint")
    if _same_socket(api_server, endpoint):
        raise UserError(f"--endpoint {endpoint} is the API server's own address and port: the token endpoint needs "
                        f"a port of its own (like {protocol.split_host_port(endpoint)[0]}:8443)")
    version = _minor(kubernetes_version, "--kubernetes-version")
    subnet = _subnet(node_subnet, "--node-subnet")
    gateway = _address_in(gateway, subnet, "--gateway") if gateway else None
    servers = [_address(server, "--dns") for server in dns or []]
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"{directory}: cannot create the cluster directory: {err.strerror}") from None
    fingerprint = _create_secrets(directory / "secrets", protocol.split_host_port(endpoint)[0])
    cluster = Cluster(directory, api_server, endpoint, version, subnet, fingerprint, gateway, servers, approval_mode)
    _write_yaml(directory / "cluster.yaml", cluster.settings(), 0o644)
    save_inventory(cluster)
    return cluster


def load_cluster(directory: Path) -> Cluster:
    """Read DIR/cluster.yaml and DIR/inventory.yaml."""
    path = directory / "cluster.yaml"
    settings = _read_yaml_mapping(path, "run `pi-image cluster init` first")
    _reject_unknown_keys(path, settings, _CLUSTER_KEYS, "")
    missing = sorted({"api_server", "endpoint", "kubernetes_version", "node_subnet", "endpoint_fingerprint"}
                     - set(settings))
    if missing:
        raise UserError(f"{path}: missing key(s) {', '.join(missing)}")
    settings["kubernetes_version"] = _minor(str(settings["kubernetes_version"]), f"{path}: kubernetes_version")
    settings["node_subnet"] = _subnet(str(settings["node_subnet"]), f"{path}: node_subnet")
    if settings.get("gateway") is not None:
        settings["gateway"] = _address_in(str(settings["gateway"]), settings["node_subnet"], f"{path}: gateway")
    dns = settings.get("dns") or []
    if not isinstance(dns, list):
        raise UserError(f"{path}: dns must be a list of addresses (like [192.168.6.1]), not {dns!r}")
    settings["dns"] = [_address(str(server), f"{path}: dns") for server in dns]
    for key in ("api_server", "endpoint", "endpoint_fingerprint", "ca_cert", "kubeconfig"):
        if key in settings and not isinstance(settings[key], str):
            raise UserError(f"{path}: {key} must be a string, not {settings[key]!r}")
    if not isinstance(settings.get("approval_mode", False), bool):
        raise UserError(f"{path}: approval_mode must be true or false")
    return Cluster(directory, nodes=load_inventory(directory, settings["node_subnet"]), **settings)


def load_inventory(directory: Path, node_subnet: str) -> list[Node]:
    """The nodes of DIR/inventory.yaml, validated (names, addresses and MACs unique)."""
    path = directory / "inventory.yaml"
    data = _read_yaml_mapping(path, "run `pi-image cluster init` first")
    _reject_unknown_keys(path, data, {"nodes"}, "")
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
        fields = {k: (str(v) if v is not None else None) for k, v in entry.items() if k != "generation"}
        nodes.append(_checked_node(Node(**fields, generation=generation), node_subnet, where))
    _refuse_duplicates(path, nodes)
    return nodes


def save_inventory(cluster: Cluster) -> None:
    """Write DIR/inventory.yaml and regenerate DIR/tokend.json (a running endpoint re-reads it)."""
    entries = [{k: v for k, v in asdict(node).items() if v is not None} for node in cluster.nodes]
    _write_yaml(cluster.directory / "inventory.yaml", {"nodes": entries}, 0o644)
    write_server_config(cluster)


def add_node(cluster: Cluster, name: str, profile: str, role: str | None, profile_role: str,
             mac: str | None = None, address: str | None = None) -> Node:
    """Add a node to the inventory; its role is the profile's unless `role` says the same or the profile has none."""
    if role and role != profile_role:
        raise UserError(f"--role {role} conflicts with profile '{profile}', which builds a {profile_role} node: "
                        f"drop --role or pick a {role} profile")
    node = _checked_node(Node(name, profile, role or profile_role, mac.lower() if mac else None, address),
                         cluster.node_subnet, f"node {name!r}")
    if node.address and cluster.gateway and node.address.split("/")[0] == cluster.gateway:
        raise UserError(f"node {name!r}: {cluster.gateway} is the subnet's gateway; give the node an address of its own")
    _refuse_duplicates(cluster.directory / "inventory.yaml", cluster.nodes + [node])
    cluster.nodes.append(node)
    save_inventory(cluster)
    return node


def remove_node(cluster: Cluster, name: str) -> Node:
    """Take `name` out of the inventory: its cards can no longer ask for a token."""
    node = cluster.node(name)
    cluster.nodes.remove(node)
    save_inventory(cluster)
    return node


def next_generation(cluster: Cluster, name: str) -> Node:
    """Bump `name`'s generation (a new card is being built) and save; the old cards' credentials die with it."""
    node = cluster.node(name)
    node.generation += 1
    save_inventory(cluster)
    return node


def local_node_config(node_name: str, kubernetes_version: str, runtime: str = "containerd",
                      role: str = "worker") -> dict:
    """node.json for an image built without a cluster: the agent only does local setup, then marks itself done.

    Keys: node (Kubernetes node name), role (worker | control-plane), kubernetes_version ("1.31", the pinned minor),
    runtime (containerd | docker: picks kubeadm's CRI socket). The build adds runtime_packages (builder.runtimes).
    """
    if runtime not in RUNTIMES:
        raise UserError(f"runtime must be one of {', '.join(RUNTIMES)}, not {runtime!r}")
    return {"node": node_name, "role": role, "kubernetes_version": _minor(kubernetes_version, "kubernetes_version"),
            "runtime": runtime}


def node_config(cluster: Cluster, node: Node, runtime: str = "containerd") -> dict:
    """node.json for `node`'s image (written 0600 root:root at /etc/pi-image/node.json).

    The local keys of local_node_config(), plus for workers:
      endpoint             "HOST:PORT" of the token endpoint
      endpoint_fingerprint "sha256:<hex>" — the only certificate the agent will talk to
      credential           hex HMAC-SHA256(enrollment key, node name, generation): the node's secret
      generation           which build of this node the card is (informational: the endpoint knows the current one)
      api_server           "HOST:6443" (the agent routes to it to find its node-ip if no subnet address)
      node_subnet          CIDR: the node-ip is this node's address inside it
    Control-plane nodes get local keys only: the first master runs `kubeadm init` itself.
    """
    config = local_node_config(node.name, cluster.kubernetes_version, runtime, node.role)
    config["cluster"] = {"api_server": cluster.api_server, "node_subnet": cluster.node_subnet}
    if node.role == "worker":
        config.update(endpoint=cluster.endpoint, endpoint_fingerprint=cluster.endpoint_fingerprint,
                      credential=cluster.credential(node), generation=node.generation,
                      api_server=cluster.api_server, node_subnet=cluster.node_subnet)
    return config


def server_config(cluster: Cluster) -> dict:
    """The token endpoint's tokend.json (see firstboot/endpoint/settings.py); secrets are referenced, not copied.

    `nodes` maps each inventory node to its current generation: only that generation's credential is accepted.
    """
    return {
        "api_server": cluster.api_server, "node_subnet": cluster.node_subnet,
        "kubernetes_version": cluster.kubernetes_version, "listen": f"0.0.0.0:{_port(cluster.endpoint)}",
        "approval_mode": cluster.approval_mode, "nodes": {node.name: node.generation for node in cluster.nodes},
        "enrollment_key_file": "secrets/enrollment.key", "tls_cert_file": "secrets/endpoint.crt",
        "tls_key_file": "secrets/endpoint.key", "ca_cert_file": cluster.ca_cert, "kubeconfig": cluster.kubeconfig,
    }


def write_server_config(cluster: Cluster) -> Path:
    """(Re)write DIR/tokend.json atomically."""
    path = cluster.directory / "tokend.json"
    _write_private(path, json.dumps(server_config(cluster), indent=2, sort_keys=True) + "\n")
    return path


def _create_secrets(secrets_dir: Path, endpoint_host: str) -> str:
    """Enrollment key and the endpoint's TLS key + self-signed certificate; returns the certificate's fingerprint."""
    secrets_dir.mkdir(mode=0o700, exist_ok=True)
    secrets_dir.chmod(0o700)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pi-image token endpoint")])
    now = datetime.datetime.now(datetime.timezone.utc)
    try:
        alt_name: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(endpoint_host))
    except ValueError:
        alt_name = x509.DNSName(endpoint_host)
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.SubjectAlternativeName([alt_name]), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_private(secrets_dir / "enrollment.key", secrets.token_hex(32) + "\n")
    _write_private(secrets_dir / "endpoint.key", key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode())
    _write_private(secrets_dir / "endpoint.crt", certificate.public_bytes(serialization.Encoding.PEM).decode())
    return protocol.certificate_fingerprint(certificate.public_bytes(serialization.Encoding.DER))


def _read_enrollment_key(secrets_dir: Path) -> bytes:
    path = secrets_dir / "enrollment.key"
    try:
        return bytes.fromhex(path.read_text().strip())
    except (OSError, ValueError) as err:
        raise UserError(f"{path}: cannot read the enrollment key ({err}); was the cluster created with "
                        "`pi-image cluster init`?") from None


def _write_private(path: Path, text: str, mode: int = 0o600) -> None:
    temporary = path.with_name(path.name + ".tmp")
    descriptor = os.open(temporary, os.O_CREAT | os.O_TRUNC | os.O_WRONLY, mode)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(text)
    os.chmod(temporary, mode)
    os.replace(temporary, path)


def _write_yaml(path: Path, data: dict, mode: int) -> None:
    _write_private(path, yaml.safe_dump(data, sort_keys=False, default_flow_style=False), mode)


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
        node.address = _address_in(node.address, node_subnet, f"{where}: address")
    return node


def _refuse_duplicates(path: Path, nodes: list[Node]) -> None:
    """Names, addresses and MACs are each one node's."""
    for what, value_of in (("name", lambda n: n.name), ("address", lambda n: n.address and n.address.split("/")[0]),
                           ("MAC", lambda n: n.mac and n.mac.lower())):
        seen: dict[str, str] = {}
        for node in nodes:
            value = value_of(node)
            if value and value in seen:
                raise UserError(f"{path}: {what} {value} already belongs to node {seen[value]!r}; every node needs its own"
                                + (" (remove it first with `pi-image cluster remove-node`)" if what == "name" else ""))
            if value:
                seen[value] = node.name


def _address(value: str, option: str) -> str:
    try:
        return str(ipaddress.ip_address(str(value).strip()))
    except ValueError:
        raise UserError(f"{option}: {value!r} is not an IP address (like 192.168.6.1)") from None


def _address_in(value: str, subnet: str, option: str) -> str:
    """A.B.C.D or A.B.C.D/NN inside `subnet` (a prefix, if given, must be the subnet's)."""
    try:
        interface = ipaddress.ip_interface(str(value).strip())
    except ValueError:
        raise UserError(f"{option}: {value!r} is not an IP address (like 192.168.6.15 or 192.168.6.15/24)") from None
    network = ipaddress.ip_network(subnet)
    if interface.ip not in network:
        raise UserError(f"{option}: {interface.ip} is outside the cluster's node subnet {subnet}; "
                        "use an address inside it")
    if "/" in str(value) and interface.network.prefixlen != network.prefixlen:
        raise UserError(f"{option}: {value} has prefix /{interface.network.prefixlen} but the node subnet is "
                        f"{subnet}: write {interface.ip}/{network.prefixlen} or just {interface.ip}")
    if interface.ip in (network.network_address, network.broadcast_address) and network.prefixlen < 31:
        raise UserError(f"{option}: {interface.ip} is the subnet's own network or broadcast address")
    return str(value).strip()


def _same_socket(a: str, b: str) -> bool:
    (host_a, port_a), (host_b, port_b) = protocol.split_host_port(a), protocol.split_host_port(b)
    return port_a == port_b and (host_a == host_b or "0.0.0.0" in (host_a, host_b))


def _host_port(value: str, option: str) -> str:
    try:
        if any(c.isspace() for c in value.strip()):
            raise ValueError(value)
        port = protocol.split_host_port(value)[1]
    except ValueError:
        raise UserError(f"{option}: {value!r} is not HOST:PORT (like 192.168.6.10:6443)") from None
    if port == 0:
        raise UserError(f"{option}: {value!r} needs a real port, not 0")
    return value.strip()


def _port(host_port: str) -> int:
    return protocol.split_host_port(host_port)[1]


def _minor(value: str, option: str) -> str:
    try:
        major, minor = protocol.minor_version(value)
        if major != 1:
            raise ValueError(value)
    except ValueError:
        raise UserError(f"{option}: {value!r} is not a Kubernetes minor version (like 1.31)") from None
    return f"{major}.{minor}"


def _subnet(value: str, option: str) -> str:
    try:
        return str(ipaddress.ip_network(value, strict=False))
    except ValueError:
        raise UserError(f"{option}: {value!r} is not a CIDR subnet (like 192.168.6.0/24)") from None
