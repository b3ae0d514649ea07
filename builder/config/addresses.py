"""Checks of the addresses a cluster is made of (HOST:PORT, subnets, node addresses, the Kubernetes minor).

The checks are in values' style (builder/config/values.py): each returns None when the value is fine, else the
reason it is not, written to follow "OPTION: " in a one-line error. Spaces around an address, a HOST:PORT or a
version are not counted against it (a cluster's settings are typed on a command line or by hand): the normalized
value drops them.

The raising forms (`address`, `address_in`, `host_port`, `minor`, `subnet`, `pod_subnet`, `disjoint`) are the
callers' side in one place: check, raise a UserError naming the option or file the value came from, return the
value normalized.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

from firstboot import protocol

from ..errors import UserError
from .values import Check

DEFAULT_POD_SUBNET = "10.244.0.0/16"  # flannel's own default
DEFAULT_SERVICE_SUBNET = "10.96.0.0/12"  # kubeadm's own default


# --- checks: None, or what is wrong -------------------------------------------------------------------------------

def ip_address(value: object) -> str | None:
    """An IPv4 or IPv6 address."""
    try:
        ipaddress.ip_address(str(value).strip())
    except ValueError:
        return f"{value!r} is not an IP address (like 192.168.6.1)"
    return None


def address_inside(subnet: str) -> Check:
    """A check of a node's address: A.B.C.D or A.B.C.D/NN inside `subnet` (a prefix, if given, must be the
    subnet's), neither the subnet's network nor its broadcast address."""
    def check(value: object) -> str | None:
        try:
            interface = ipaddress.ip_interface(str(value).strip())
        except ValueError:
            return f"{value!r} is not an IP address (like 192.168.6.15 or 192.168.6.15/24)"
        network = ipaddress.ip_network(subnet)
        if interface.ip not in network:
            return f"{interface.ip} is outside the cluster's node subnet {subnet}; use an address inside it"
        if "/" in str(value) and interface.network.prefixlen != network.prefixlen:
            return (f"{value} has prefix /{interface.network.prefixlen} but the node subnet is {subnet}: write "
                    f"{interface.ip}/{network.prefixlen} or just {interface.ip}")
        if interface.ip in (network.network_address, network.broadcast_address) and network.prefixlen < 31:
            return f"{interface.ip} is the subnet's own network or broadcast address"
        return None
    return check


def socket_address(value: object) -> str | None:
    """HOST:PORT with a real port (not 0)."""
    try:
        if any(c.isspace() for c in str(value).strip()):
            raise ValueError(value)
        port = protocol.split_host_port(str(value))[1]
    except ValueError:
        return f"{value!r} is not HOST:PORT (like 192.168.6.10:6443)"
    if port == 0:
        return f"{value!r} needs a real port, not 0"
    return None


def kubernetes_minor(value: object) -> str | None:
    """A Kubernetes minor version: 1.N."""
    try:
        major, _ = protocol.minor_version(str(value))
        if major != 1:
            raise ValueError(value)
    except ValueError:
        return f"{value!r} is not a Kubernetes minor version (like 1.31)"
    return None


def cidr(value: object) -> str | None:
    """A subnet in CIDR notation (host bits may be set: 192.168.6.1/24 is 192.168.6.0/24)."""
    try:
        ipaddress.ip_network(str(value), strict=False)
    except ValueError:
        return f"{value!r} is not a CIDR subnet (like 192.168.6.0/24)"
    return None


def pod_cidr(value: object) -> str | None:
    """The pods' network: an IPv4 CIDR (flannel's `Network` is IPv4), with room for a /24 per node."""
    problem = cidr(value)
    if problem:
        return problem
    network = ipaddress.ip_network(str(value), strict=False)
    if network.version != 4 or network.prefixlen > 22:
        return (f"{value!r} must be an IPv4 network of /22 or larger (flannel gives each node a /24 of it), "
                "like 10.244.0.0/16")
    return None


def overlap(subnets: dict[str, str]) -> str | None:
    """Two of `subnets` ({what: CIDR}) that overlap: pods, services and nodes each need their own range."""
    items = list(subnets.items())
    for index, (name_a, a) in enumerate(items):
        for name_b, b in items[index + 1:]:
            if ipaddress.ip_network(a).overlaps(ipaddress.ip_network(b)):
                return (f"{name_a} {a} overlaps {name_b} {b}; give each its own range "
                        "(the defaults are pod_subnet 10.244.0.0/16, service_subnet 10.96.0.0/12)")
    return None


# --- the raising forms: the value normalized, or a UserError naming `option` --------------------------------------

def checked(check: Check, value: object, option: str, normalize: Callable[[str], str] = str.strip) -> str:
    """`value` normalized if `check` finds nothing wrong with it, else a UserError "OPTION: what is wrong"."""
    problem = check(value)
    if problem:
        raise UserError(f"{option}: {problem}")
    return normalize(str(value))


def address(value: str, option: str) -> str:
    return checked(ip_address, value, option, lambda v: str(ipaddress.ip_address(v.strip())))


def address_in(value: str, subnet: str, option: str) -> str:
    return checked(address_inside(subnet), value, option)


def host_port(value: str, option: str) -> str:
    return checked(socket_address, value, option)


def minor(value: str, option: str) -> str:
    return checked(kubernetes_minor, value, option, lambda v: "{}.{}".format(*protocol.minor_version(v)))


def subnet(value: str, option: str) -> str:
    return checked(cidr, value, option, _network)


def pod_subnet(value: str, option: str) -> str:
    return checked(pod_cidr, value, option, _network)


def disjoint(subnets: dict[str, str], where: str) -> None:
    problem = overlap(subnets)
    if problem:
        raise UserError(f"{where}: {problem}")


def _network(value: str) -> str:
    return str(ipaddress.ip_network(value, strict=False))


# --- what a cluster's addresses say ------------------------------------------------------------------------------

def same_socket(a: str, b: str) -> bool:
    (host_a, port_a), (host_b, port_b) = protocol.split_host_port(a), protocol.split_host_port(b)
    return port_a == port_b and (host_a == host_b or "0.0.0.0" in (host_a, host_b))


def port(host_port: str) -> int:
    return protocol.split_host_port(host_port)[1]
