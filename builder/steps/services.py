"""Target fixes from the seed: Kali's kubelet needs /run/systemd/resolve/resolv.conf, so enable systemd-resolved."""

from __future__ import annotations

from ..systemd import enable_links
from .context import BuildContext

STEP = "services"
NEEDED = {"kali-raspi": ["systemd-resolved.service"]}


def plan(ctx: BuildContext) -> None:
    """Enable (as `systemctl enable` would: WantedBy/Alias links) the units this target needs."""
    for unit in NEEDED.get(ctx.target.name, []):
        for link, target in enable_links(ctx.target.root, unit):
            ctx.symlink(STEP, link, target)
