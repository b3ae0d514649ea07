"""Checks of the addresses a cluster is made of (HOST:PORT, subnets, node addresses); each returns the value
normalized, or raises a one-line UserError naming the option or file it came from."""

from __future__ import annotations

import ipaddress

from firstboot import protocol

from ..errors import UserError

DEFAULT_POD_SUBNET = "10.244.0.0/16"  # flannel's own default
DEFAULT_SERVICE_SUBNET = "10.96.0.0/12"  # kubeadm's own default


def address(value: str, option: str) -> str:
    try:
        return str(ipaddress.ip_address(str(value).strip()))
    except ValueError:
        raise UserError(f"{option}: {value!r} is not an IP address (like 192.168.6.1)") from None


def address_in(value: str, subnet: str, option: str) -> str:
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


def same_socket(a: str, b: str) -> bool:
    (host_a, port_a), (host_b, port_b) = protocol.split_host_port(a), protocol.split_host_port(b)
    return port_a == port_b and (host_a == host_b or "0.0.0.0" in (host_a, host_b))


def host_port(value: str, option: str) -> str:
    try:
        if any(c.isspace() for c in value.strip()):
            raise ValueError(value)
        port = protocol.split_host_port(value)[1]
    except ValueError:
        raise UserError(f"{option}: {value!r} is not HOST:PORT (like 192.168.6.10:6443)") from None
    if port == 0:
        raise UserError(f"{option}: {value!r} needs a real port, not 0")
    return value.strip()


def port(host_port: str) -> int:
    return protocol.split_host_port(host_port)[1]


def minor(value: str, option: str) -> str:
    try:
        major, minor = protocol.minor_version(value)
        if major != 1:
            raise ValueError(value)
    except ValueError:
        raise UserError(f"{option}: {value!r} is not a Kubernetes minor version (like 1.31)") from None
    return f"{major}.{minor}"


def subnet(value: str, option: str) -> str:
    try:
        return str(ipaddress.ip_network(value, strict=False))
    except ValueError:
        raise UserError(f"{option}: {value!r} is not a CIDR subnet (like 192.168.6.0/24)") from None


def pod_subnet(value: str, option: str) -> str:
    """The pods' network: an IPv4 CIDR (flannel's `Network` is IPv4), with room for a /24 per node."""
    network = ipaddress.ip_network(subnet(value, option))
    if network.version != 4 or network.prefixlen > 22:
        raise UserError(f"{option}: {value!r} must be an IPv4 network of /22 or larger (flannel gives each node a "
                        "/24 of it), like 10.244.0.0/16")
    return str(network)


def disjoint(subnets: dict[str, str], where: str) -> None:
    """Refuse two of `subnets` ({what: CIDR}) that overlap: pods, services and nodes each need their own range."""
    items = list(subnets.items())
    for index, (name_a, a) in enumerate(items):
        for name_b, b in items[index + 1:]:
            if ipaddress.ip_network(a).overlaps(ipaddress.ip_network(b)):
                raise UserError(f"{where}: {name_a} {a} overlaps {name_b} {b}; give each its own range "
                                "(the defaults are pod_subnet 10.244.0.0/16, service_subnet 10.96.0.0/12)")
