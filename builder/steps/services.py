"""Target fixes from the seed: Kali's kubelet needs /run/systemd/resolve/resolv.conf, so enable systemd-resolved.

systemd-resolved is a package of its own since Debian 12, and a Kali image may lack it: then the build enables
nothing, and the first-boot agent points the kubelet's resolvConf at /etc/resolv.conf instead (firstboot/joinconfig.py),
so the build never fails for it.
"""

from __future__ import annotations

from ..systemd import enable_links, unit_file
from .context import BuildContext

STEP = "services"
NEEDED = {"kali-raspi": ["systemd-resolved.service"]}


def plan(ctx: BuildContext) -> None:
    """Enable (as `systemctl enable` would: WantedBy/Alias links) the units this target needs and has."""
    for unit in NEEDED.get(ctx.target.name, []):
        if unit_file(ctx.target.root, unit) is None:
            continue
        for link, target in enable_links(ctx.target.root, unit):
            ctx.symlink(STEP, link, target)
