"""Per-node identity: hostname, /etc/hosts, time zone, and (outside cloud-init targets) NetworkManager keyfiles.

Ubuntu's cloud-init gets the same facts from its seed (overlays/ubuntu-cloud-init) so it does not undo them at first boot.
"""

from __future__ import annotations

from ..errors import UserError
from .context import BuildContext

STEP = "identity"
NM_DIR = "/etc/NetworkManager/system-connections"


def plan(ctx: BuildContext) -> None:
    """Hostname, hosts, time zone; static address and Wi-Fi as NetworkManager keyfiles where NM is the stack."""
    name = ctx.node.name
    ctx.write(STEP, "root", "/etc/hostname", name + "\n")
    ctx.write(STEP, "root", "/etc/hosts", _hosts(ctx.view.read_text("root", "/etc/hosts") or "", name))
    tz = ctx.profile["timezone"]
    ctx.write(STEP, "root", "/etc/timezone", tz + "\n")
    ctx.symlink(STEP, "/etc/localtime", f"/usr/share/zoneinfo/{tz}")
    if ctx.target.network_stack != "networkmanager":
        return
    network = ctx.static_network()
    if network:
        ctx.write(STEP, "root", f"{NM_DIR}/pi-image-{network['interface']}.nmconnection",
                  _nm_ethernet(network), mode=0o600)
    wifi = ctx.profile["wifi"]
    if wifi:
        ctx.write(STEP, "root", f"{NM_DIR}/pi-image-wifi.nmconnection", _nm_wifi(wifi), mode=0o600)


def _hosts(text: str, name: str) -> str:
    """hosts(5) with exactly one `127.0.1.1 NAME` line (Debian's convention for the hostname)."""
    lines = [line for line in text.splitlines() if not line.startswith("127.0.1.1")]
    at = next((i + 1 for i, line in enumerate(lines) if line.startswith("127.0.0.1")), 0)
    lines.insert(at, f"127.0.1.1\t{name}")
    return "\n".join(lines) + "\n"


def _nm_ethernet(net: dict[str, object]) -> str:
    gateway = f",{net['gateway']}" if net["gateway"] else ""
    dns = "".join(f"{d};" for d in net["dns"])  # type: ignore[union-attr]
    return (f"[connection]\nid=pi-image-{net['interface']}\ntype=ethernet\ninterface-name={net['interface']}\n"
            f"autoconnect=true\n\n[ipv4]\nmethod=manual\naddress1={net['address']}{gateway}\n"
            + (f"dns={dns}\n" if dns else "") + "\n[ipv6]\nmethod=auto\n")


def _nm_wifi(wifi: dict[str, str]) -> str:
    if not wifi.get("ssid"):
        raise UserError("profile 'wifi' needs an 'ssid'")
    security = f"\n[wifi-security]\nkey-mgmt=wpa-psk\npsk={wifi['psk']}\n" if wifi.get("psk") else ""
    return (f"[connection]\nid=pi-image-wifi\ntype=wifi\nautoconnect=true\n\n[wifi]\nmode=infrastructure\n"
            f"ssid={wifi['ssid']}\n{security}\n[ipv4]\nmethod=auto\n\n[ipv6]\nmethod=auto\n")
