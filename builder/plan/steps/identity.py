"""Per-node identity: hostname, /etc/hosts, and the cluster interface's fixed address where NetworkManager is the
stack pi-image configures (a keyfile).

On netplan targets the address is in cloud-init's network-config (overlays/cloud-init-seed), which also carries the
hostname, so first boot does not undo them.
"""

from __future__ import annotations

from .context import BuildContext, StaticNetwork

STEP = "identity"
NM_DIR = "/etc/NetworkManager/system-connections"


def plan(ctx: BuildContext) -> None:
    """Hostname and hosts; the static address as a NetworkManager keyfile where NM is the stack."""
    name = ctx.node.name
    ctx.write(STEP, "root", "/etc/hostname", name + "\n")
    ctx.edit(STEP, "root", "/etc/hosts", _hosts(ctx.view.read_text("root", "/etc/hosts") or "", name))
    network = ctx.static_network()
    if network and ctx.target.network_stack == "networkmanager":
        ctx.write(STEP, "root", f"{NM_DIR}/pi-image-{network['interface']}.nmconnection",
                  _nm_ethernet(network), mode=0o600)


def _hosts(text: str, name: str) -> str:
    """hosts(5) with exactly one `127.0.1.1 NAME` line (Debian's convention for the hostname)."""
    lines = [line for line in text.splitlines() if not line.startswith("127.0.1.1")]
    at = next((i + 1 for i, line in enumerate(lines) if line.startswith("127.0.0.1")), 0)
    lines.insert(at, f"127.0.1.1\t{name}")
    return "\n".join(lines) + "\n"


def _nm_ethernet(net: StaticNetwork) -> str:
    gateway = f",{net['gateway']}" if net["gateway"] else ""
    dns = "".join(f"{d};" for d in net["dns"])
    return (f"[connection]\nid=pi-image-{net['interface']}\ntype=ethernet\ninterface-name={net['interface']}\n"
            f"autoconnect=true\n\n[ipv4]\nmethod=manual\naddress1={net['address']}{gateway}\n"
            + (f"dns={dns}\n" if dns else "") + "\n[ipv6]\nmethod=auto\n")
