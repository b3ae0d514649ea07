"""Step 2 of first boot: which of this node's addresses the kubelet should announce (its node-ip).

On a two-NIC node the kubelet otherwise picks whichever address comes first, and the node shows the wrong
INTERNAL-IP. The address inside the cluster's node subnet wins; otherwise the one the kernel would use to reach the
API server.
"""

import ipaddress
import os


def interface_addresses(commands):
    """[(interface, ip_interface)] parsed from `ip -o addr show` (one line per address, stable for decades)."""
    result = commands.run(["ip", "-o", "addr", "show"])
    found = []
    for line in result.stdout.splitlines() if result.ok else []:
        fields = line.split()
        for family in ("inet", "inet6"):
            if family in fields and fields.index(family) + 1 < len(fields):
                try:
                    found.append((fields[1].rstrip(":"), ipaddress.ip_interface(fields[fields.index(family) + 1])))
                except ValueError:
                    pass
    return found


def route_source(commands, destination):
    """The source address the kernel picks for `destination` (`ip route get`), or None."""
    result = commands.run(["ip", "-o", "route", "get", destination])
    fields = result.stdout.split() if result.ok else []
    if "src" in fields and fields.index("src") + 1 < len(fields):
        return fields[fields.index("src") + 1]
    return None


def choose_node_ip(commands, node_subnet, api_server_host):
    """The node-ip to give the kubelet, or None if the network is not up yet."""
    if node_subnet:
        subnet = ipaddress.ip_network(node_subnet, strict=False)
        for _interface, address in interface_addresses(commands):
            if address.ip in subnet and not address.ip.is_loopback:
                return str(address.ip)
    if api_server_host:
        try:
            destination = str(ipaddress.ip_address(api_server_host))
        except ValueError:
            destination = None  # a name: let the kernel's routing speak for the default route instead
        source = route_source(commands, destination or "1.1.1.1")
        if source:
            return source
    return None


def mac_addresses(root):
    """MAC addresses of the physical-looking interfaces under <root>/sys/class/net."""
    base = os.path.join(root, "sys/class/net")
    macs = []
    for interface in sorted(os.listdir(base)) if os.path.isdir(base) else []:
        try:
            with open(os.path.join(base, interface, "address")) as handle:
                mac = handle.read().strip().lower()
        except OSError:
            continue
        if interface != "lo" and mac and mac != "00:00:00:00:00:00":
            macs.append(mac)
    return macs
