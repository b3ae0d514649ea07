"""Units a node needs that its OS ships disabled (each target lists its own, `Target.enabled_units`):

- Kali: the kubelet needs /run/systemd/resolve/resolv.conf, so systemd-resolved. It is a package of its own since
  Debian 12 and a Kali image may lack it: then nothing is enabled, and the first-boot agent points the kubelet's
  resolvConf at /etc/resolv.conf instead (firstboot/joinconfig.py), so the build never fails for it.
- Raspberry Pi OS customized through cloud-init: sshd (no `ssh` file convention to rely on).
"""

from __future__ import annotations

from ..systemd import enable_links, unit_file
from .context import BuildContext

STEP = "services"


def plan(ctx: BuildContext) -> None:
    """Enable (as `systemctl enable` would: WantedBy/Alias links) the units this target needs and has, in the
    image as planned so far: a unit an overlay adds counts."""
    for unit in ctx.target.enabled_units:
        if unit_file(ctx.view.tree("root"), unit) is None:
            continue
        for link, target in enable_links(ctx.view, unit):
            ctx.symlink(STEP, link, target)
