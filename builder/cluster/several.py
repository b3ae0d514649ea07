"""Several control planes (issue 29): when a cluster has them, and what each of its nodes then needs.

A cluster has several control planes when its inventory holds more than one and its API server is a virtual IP
inside the node subnet (`api_server_vip: true`, as `pi-image cluster init --vip` writes it): kube-vip, in ARP mode on
every control plane, holds that address (builder/plan/kube_vip.py), kubeadm's controlPlaneEndpoint is it, and the
first control plane of the inventory initializes while the others join as control planes with the certificate key
the token endpoint gives them. A cluster with one control plane is built exactly as before, whatever its API server.

The rules, one place each:

    CONTROL_PLANE_COUNTS   1, 3 or 5 control planes when a control-plane card is built (and `cluster verify`): etcd
                           needs a majority of its members, so an even count tolerates no more failures than the odd
                           count below it, and more than five only slow its writes
    vip_problem()          the virtual IP lies inside the node subnet, is neither the gateway nor a node's address
                           (at `cluster init --vip`, and wherever the inventory has more than one control plane)
    check_control_planes() several control planes need that virtual IP, and a fixed address each (the others'
                           fallback endpoints and etcd's peer URLs name it)
    fallback_endpoints()   every other control plane's ADDRESS:ENDPOINT_PORT, in inventory order: where a node (and
                           the workstation) asks when the cluster's endpoint does not answer

Every control plane runs the token endpoint on the cluster endpoint's port (tokend.json's `listen` is
0.0.0.0:PORT), so that port is the one fact `endpoint_port()` reads.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import TYPE_CHECKING

from firstboot import protocol

from ..config import addresses
from ..errors import UserError

if TYPE_CHECKING:  # the package imports this module: its classes only for the type checker
    from . import Cluster, Node

CONTROL_PLANE_COUNTS = (1, 3, 5)
DEFAULT_API_PORT = 6443  # kubeadm's own: `cluster init --vip` makes the API server VIP:6443
DEFAULT_ENDPOINT_PORT = 8443  # ... and the token endpoint VIP:8443 unless --endpoint says otherwise


def control_planes(cluster: Cluster) -> list[Node]:
    """The inventory's control planes, in inventory order (the first one may initialize the cluster)."""
    return [node for node in cluster.nodes if node.role == "control-plane"]


def virtual_ip(cluster: Cluster) -> str | None:
    """The API server's host where kube-vip can hold it: api_server_vip and an IP address inside the node subnet;
    else None (a control plane's own address, a DNS name, or a load balancer outside the subnet)."""
    if not cluster.api_server_vip:
        return None
    try:
        host = ipaddress.ip_address(protocol.split_host_port(cluster.api_server)[0])
    except ValueError:
        return None
    return str(host) if host in ipaddress.ip_network(cluster.node_subnet) else None


def several_control_planes(cluster: Cluster) -> bool:
    """True for a cluster of several control planes (see the module docstring)."""
    return len(control_planes(cluster)) > 1 and virtual_ip(cluster) is not None


def endpoint_port(cluster: Cluster) -> int:
    """The port every control plane's token endpoint listens on: the cluster endpoint's."""
    return addresses.port(cluster.endpoint)


def fallback_endpoints(cluster: Cluster, name: str | None = None) -> list[str]:
    """Every control plane's ADDRESS:PORT but `name`'s, in inventory order, for a cluster of several control planes
    (none otherwise): node.json's fallback_endpoints, and where the workstation asks after the cluster's endpoint."""
    if not several_control_planes(cluster):
        return []
    port = endpoint_port(cluster)
    return [f"{_host(node)}:{port}" for node in control_planes(cluster) if node.name != name and node.address]


def may_initialize(cluster: Cluster, node: Node) -> bool:
    """True for the inventory's first control plane: the one that runs `kubeadm init` when no other answers."""
    masters = control_planes(cluster)
    return bool(masters) and masters[0].name == node.name


def vip_problem(vip: str, subnet: str, gateway: str | None, nodes: Sequence[Node]) -> str | None:
    """What is wrong with `vip` as the cluster's virtual IP, or None: it must be an address inside `subnet` (not its
    network or broadcast address), not the gateway, and no node's address."""
    problem = addresses.address_inside(subnet)(vip)
    if problem:
        return problem
    if "/" in vip:
        return f"{vip} must be a bare address (like {vip.split('/')[0]})"
    if gateway and ipaddress.ip_address(vip) == ipaddress.ip_address(gateway):
        return f"{vip} is the subnet's gateway; kube-vip must hold an address nothing else answers for"
    for node in nodes:
        if node.address and _host(node) == str(ipaddress.ip_address(vip)):
            return f"{vip} is the address of node {node.name!r}; kube-vip must hold an address of its own"
    return None


def check_vip(vip: str, subnet: str, gateway: str | None, nodes: Sequence[Node], where: str, fix: str) -> None:
    """vip_problem() as a UserError: `where` (the option or file), what is wrong, and `fix`."""
    problem = vip_problem(vip, subnet, gateway, nodes)
    if problem:
        raise UserError(f"{where}: virtual IP {problem}; {fix}")


def check_control_planes(cluster: Cluster, where: str, count: bool = False) -> None:
    """Where the inventory has more than one control plane: the API server is a virtual IP inside the node subnet
    (vip_problem() finds nothing wrong with it) and each control plane has a fixed address; with `count` (a
    control-plane card is built, `cluster verify`), also 1, 3 or 5 of them. One UserError line naming `where`, the
    file to change and the fix."""
    masters = control_planes(cluster)
    inventory = cluster.directory / "inventory.yaml"
    names = ", ".join(node.name for node in masters)
    if count and len(masters) not in CONTROL_PLANE_COUNTS:
        why = ("more than 5 only slow etcd's writes" if len(masters) > max(CONTROL_PLANE_COUNTS) else
               f"etcd needs a majority of its members, so {len(masters)} survive no more failures than "
               f"{len(masters) - 1}")
        raise UserError(f"{where}: {inventory} has {len(masters)} control planes ({names}), and {why}: have 1, 3 or "
                        f"5 (`pi-image cluster add-node {cluster.directory} NAME --profile PROFILE --address A.B.C.D` "
                        f"or `pi-image cluster remove-node {cluster.directory} NAME`)")
    if len(masters) < 2:
        return
    settings = cluster.directory / "cluster.yaml"
    vip = virtual_ip(cluster)
    if vip is None:
        raise UserError(f"{where}: {inventory} has {len(masters)} control planes ({names}), which need a virtual IP "
                        f"inside the node subnet {cluster.node_subnet} as the API server (kube-vip holds it), but "
                        f"{settings} has api_server {cluster.api_server}"
                        + ("" if cluster.api_server_vip else " without api_server_vip") + ": `pi-image cluster set "
                        f"{cluster.directory} api_server=A.B.C.D:{DEFAULT_API_PORT} api_server_vip=true` before any "
                        "card is built, or keep one control plane")
    check_vip(vip, cluster.node_subnet, cluster.gateway, cluster.nodes, where,
              f"keep it free (another address for that node or gateway), or pick another virtual IP while no card "
              f"is built (`pi-image cluster set {cluster.directory} api_server=A.B.C.D:{DEFAULT_API_PORT}`, the "
              f"api_server of {settings})")
    for node in masters:
        if not node.address:
            raise UserError(f"{where}: control plane {node.name!r} has no fixed address, but each of several control "
                            "planes needs one (the others' fallback endpoints and etcd's peer URLs name it): give it "
                            f"one (`cluster add-node ... --address A.B.C.D`, or `address: A.B.C.D` in {inventory})")


def _host(node: Node) -> str:
    """A node's fixed address without its prefix length."""
    assert node.address is not None
    return node.address.split("/")[0]
