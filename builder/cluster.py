"""A cluster directory: the settings, the inventory and the secrets that let built images join by themselves.

    DIR/cluster.yaml     api_server, endpoint, kubernetes_version, node_subnet, approval_mode, ca_cert, kubeconfig,
                         endpoint_fingerprint (public: what images pin)
    DIR/inventory.yaml   nodes: [{name, role, profile, mac, address}]
    DIR/secrets/         0700 — enrollment.key (hex), endpoint.key + endpoint.crt (ECDSA P-256, self-signed); 0600
    DIR/tokend.json      the token endpoint's configuration, regenerated from the above (firstboot/settings.py)
    DIR/state/           the endpoint's SQLite state and audit log when it runs from this directory

Node credentials are never stored: each is HMAC-SHA256(enrollment key, node name), derived when an image is built.
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

from .errors import UserError

ROLES = ("worker", "control-plane")
RUNTIMES = ("containerd", "docker")
DEFAULT_CA_CERT = "/etc/kubernetes/pki/ca.crt"
DEFAULT_KUBECONFIG = "/etc/kubernetes/admin.conf"
_MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
_CLUSTER_KEYS = {"api_server", "endpoint", "kubernetes_version", "node_subnet", "approval_mode",
                 "endpoint_fingerprint", "ca_cert", "kubeconfig"}
_NODE_KEYS = {"name", "role", "profile", "mac", "address"}


@dataclass
class Node:
    """One inventory entry: what the build needs to give an image its identity."""

    name: str
    profile: str
    role: str = "worker"
    mac: str | None = None
    address: str | None = None


@dataclass
class Cluster:
    """A loaded cluster directory."""

    directory: Path
    api_server: str
    endpoint: str
    kubernetes_version: str
    node_subnet: str
    endpoint_fingerprint: str
    approval_mode: bool = False
    ca_cert: str = DEFAULT_CA_CERT
    kubeconfig: str = DEFAULT_KUBECONFIG
    nodes: list[Node] = field(default_factory=list)

    @property
    def secrets_dir(self) -> Path:
        return self.directory / "secrets"

    @property
    def state_dir(self) -> Path:
        return self.directory / "state"

    def node(self, name: str) -> Node:
        """The inventory entry for `name`; UserError naming the inventory if there is none."""
        for node in self.nodes:
            if node.name == name:
                return node
        known = ", ".join(n.name for n in self.nodes) or "none yet"
        raise UserError(f"{self.directory / 'inventory.yaml'}: no node named {name!r} (known: {known}); "
                        f"add it with `pi-image cluster add-node {self.directory} {name} --profile PROFILE`")

    def credential(self, node_name: str) -> str:
        """The node's credential (hex), derived from the enrollment key."""
        return protocol.node_credential(_read_enrollment_key(self.secrets_dir), node_name)


def init_cluster(directory: Path, api_server: str, endpoint: str, kubernetes_version: str, node_subnet: str,
                 approval_mode: bool = False) -> Cluster:
    """Create DIR with settings, an empty inventory and fresh secrets; refuses to overwrite an existing cluster."""
    if (directory / "cluster.yaml").exists():
        raise UserError(f"{directory}: already a cluster directory (cluster.yaml exists); pick another directory")
    api_server = _host_port(api_server, "--api-server")
    endpoint = _host_port(endpoint, "--endpoint")
    version = _minor(kubernetes_version, "--kubernetes-version")
    subnet = _subnet(node_subnet, "--node-subnet")
    directory.mkdir(parents=True, exist_ok=True)
    fingerprint = _create_secrets(directory / "secrets", protocol.split_host_port(endpoint)[0])
    cluster = Cluster(directory, api_server, endpoint, version, subnet, fingerprint, approval_mode)
    settings = {k: v for k, v in asdict(cluster).items() if k in _CLUSTER_KEYS}
    _write_yaml(directory / "cluster.yaml", settings, 0o644)
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
    return Cluster(directory, nodes=load_inventory(directory), **settings)


def load_inventory(directory: Path) -> list[Node]:
    """The nodes of DIR/inventory.yaml, validated."""
    path = directory / "inventory.yaml"
    data = _read_yaml_mapping(path, "run `pi-image cluster init` first")
    entries = data.get("nodes") or []
    if not isinstance(entries, list):
        raise UserError(f"{path}: 'nodes' must be a list")
    nodes: list[Node] = []
    for index, entry in enumerate(entries):
        where = f"nodes[{index}]"
        if not isinstance(entry, dict):
            raise UserError(f"{path}: {where} must be a mapping")
        _reject_unknown_keys(path, entry, _NODE_KEYS, where + ": ")
        if "name" not in entry or "profile" not in entry:
            raise UserError(f"{path}: {where} needs 'name' and 'profile'")
        nodes.append(_checked_node(Node(**{k: (str(v) if v is not None else None) for k, v in entry.items()}),
                                   f"{path}: {where}"))
    names = [node.name for node in nodes]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise UserError(f"{path}: node name(s) listed twice: {', '.join(duplicates)}")
    return nodes


def save_inventory(cluster: Cluster) -> None:
    """Write DIR/inventory.yaml and regenerate DIR/tokend.json (a running endpoint re-reads it)."""
    entries = [{k: v for k, v in asdict(node).items() if v is not None} for node in cluster.nodes]
    _write_yaml(cluster.directory / "inventory.yaml", {"nodes": entries}, 0o644)
    write_server_config(cluster)


def add_node(cluster: Cluster, name: str, profile: str, role: str = "worker", mac: str | None = None,
             address: str | None = None) -> Node:
    """Add a node to the inventory (names are unique)."""
    if any(node.name == name for node in cluster.nodes):
        raise UserError(f"{cluster.directory / 'inventory.yaml'}: node {name!r} is already in the inventory")
    node = _checked_node(Node(name, profile, role, mac.lower() if mac else None, address), f"node {name!r}")
    if node.address and ipaddress.ip_address(node.address) not in ipaddress.ip_network(cluster.node_subnet):
        raise UserError(f"node {name!r}: address {node.address} is outside the cluster's node subnet "
                        f"{cluster.node_subnet}; use an address inside it")
    cluster.nodes.append(node)
    save_inventory(cluster)
    return node


def local_node_config(node_name: str, kubernetes_version: str, runtime: str = "containerd",
                      role: str = "worker") -> dict:
    """node.json for an image built without a cluster: the agent only does local setup, then marks itself done.

    Keys: node (Kubernetes node name), role (worker | control-plane), kubernetes_version ("1.31", the pinned minor),
    runtime (containerd | docker: picks kubeadm's CRI socket).
    """
    if runtime not in RUNTIMES:
        raise UserError(f"runtime must be one of {', '.join(RUNTIMES)}, not {runtime!r}")
    return {"node": node_name, "role": role, "kubernetes_version": _minor(kubernetes_version, "kubernetes_version"),
            "runtime": runtime}


def node_config(cluster_dir: Path, node_name: str, runtime: str = "containerd") -> dict:
    """node.json for `node_name`'s image (write it 0600 root:root at /etc/pi-image/node.json).

    The local keys of local_node_config(), plus for workers:
      endpoint             "HOST:PORT" of the token endpoint
      endpoint_fingerprint "sha256:<hex>" — the only certificate the agent will talk to
      credential           hex HMAC-SHA256(enrollment key, node name): the node's secret
      api_server           "HOST:6443" (the agent routes to it to find its node-ip if no subnet address)
      node_subnet          CIDR: the node-ip is this node's address inside it
    Control-plane nodes get local keys only: the first master runs `kubeadm init` itself.
    """
    cluster = load_cluster(cluster_dir)
    node = cluster.node(node_name)
    config = local_node_config(node.name, cluster.kubernetes_version, runtime, node.role)
    if node.role == "worker":
        config.update(endpoint=cluster.endpoint, endpoint_fingerprint=cluster.endpoint_fingerprint,
                      credential=cluster.credential(node.name), api_server=cluster.api_server,
                      node_subnet=cluster.node_subnet)
    return config


def server_config(cluster: Cluster) -> dict:
    """The token endpoint's tokend.json (see firstboot/settings.py); secrets are referenced, not copied."""
    return {
        "api_server": cluster.api_server, "node_subnet": cluster.node_subnet,
        "kubernetes_version": cluster.kubernetes_version, "listen": f"0.0.0.0:{_port(cluster.endpoint)}",
        "approval_mode": cluster.approval_mode, "nodes": [node.name for node in cluster.nodes],
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
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: not found; {fix}") from None
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


def _checked_node(node: Node, where: str) -> Node:
    if not protocol.NODE_NAME_RE.match(node.name):
        raise UserError(f"{where}: {node.name!r} is not a valid node name (lower-case letters, digits and '-', "
                        "at most 63 characters)")
    if node.role not in ROLES:
        raise UserError(f"{where}: role must be one of {', '.join(ROLES)}, not {node.role!r}")
    if node.mac and not _MAC_RE.match(node.mac.lower()):
        raise UserError(f"{where}: {node.mac!r} is not a MAC address (like dc:a6:32:01:02:03)")
    if node.address:
        try:
            ipaddress.ip_address(node.address)
        except ValueError:
            raise UserError(f"{where}: {node.address!r} is not an IP address") from None
    return node


def _host_port(value: str, option: str) -> str:
    try:
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
    except ValueError:
        raise UserError(f"{option}: {value!r} is not a Kubernetes minor version (like 1.31)") from None
    return f"{major}.{minor}"


def _subnet(value: str, option: str) -> str:
    try:
        return str(ipaddress.ip_network(value, strict=False))
    except ValueError:
        raise UserError(f"{option}: {value!r} is not a CIDR subnet (like 192.168.6.0/24)") from None
