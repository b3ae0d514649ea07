"""The checks of a cluster's addresses in values' style (None, or what is wrong, to follow "OPTION: "), and the
raising forms the cluster code calls, which name the option and return the value normalized (issue 27)."""

from __future__ import annotations

import pytest

from builder.config import addresses
from builder.errors import UserError


def test_each_check_returns_none_or_the_problem_without_the_option() -> None:
    assert addresses.ip_address(" 192.168.6.1 ") is None
    assert addresses.ip_address("1.2.3") == "'1.2.3' is not an IP address (like 192.168.6.1)"
    assert addresses.socket_address("192.168.6.10:6443") is None
    assert addresses.socket_address("h:0") == "'h:0' needs a real port, not 0"
    assert addresses.kubernetes_minor("v1.31.2") is None and addresses.kubernetes_minor("2.1") is not None
    assert addresses.cidr("192.168.6.5/24") is None and addresses.cidr("lan") is not None
    assert addresses.pod_cidr("10.0.0.0/23") is not None and addresses.pod_cidr("10.244.0.0/16") is None
    inside = addresses.address_inside("192.168.6.0/24")
    assert inside("192.168.6.15/24") is None
    assert inside("10.0.0.1") == ("10.0.0.1 is outside the cluster's node subnet 192.168.6.0/24; use an address "
                                  "inside it")
    assert inside("192.168.6.255") == "192.168.6.255 is the subnet's own network or broadcast address"
    assert addresses.overlap({"pods": "10.0.0.0/8", "nodes": "10.1.0.0/16"}).startswith("pods 10.0.0.0/8 overlaps")
    assert addresses.overlap({"pods": "10.0.0.0/8", "nodes": "192.168.6.0/24"}) is None


def test_the_raising_forms_name_the_option_and_normalize() -> None:
    assert addresses.address(" fe80::0001 ", "--dns") == "fe80::1"
    assert addresses.minor("v1.31.4", "--kubernetes-version") == "1.31"
    assert addresses.subnet("192.168.6.5/24", "--node-subnet") == "192.168.6.0/24"
    assert addresses.host_port(" 192.168.6.10:6443 ", "--api-server") == "192.168.6.10:6443"
    assert addresses.address_in(" 192.168.6.15 ", "192.168.6.0/24", "--gateway") == "192.168.6.15"
    with pytest.raises(UserError, match=r"^--pod-subnet: '10.0.0.0/23' must be an IPv4 network of /22 or larger"):
        addresses.pod_subnet("10.0.0.0/23", "--pod-subnet")
    with pytest.raises(UserError, match=r"^cluster.yaml: node_subnet 10.0.0.0/8 overlaps pod_subnet"):
        addresses.disjoint({"node_subnet": "10.0.0.0/8", "pod_subnet": "10.244.0.0/16"}, "cluster.yaml")
