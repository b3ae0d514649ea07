"""The first-boot agent: `firstboot/` copied verbatim, its unit enabled, and the node's config (0600 root)."""

from __future__ import annotations

import json
from pathlib import Path

import firstboot

from ..systemd import UNIT_DIR, install_links
from .context import BuildContext

STEP = "firstboot"
AGENT_DIR = "/usr/lib/pi-image/firstboot"
UNIT = "pi-image-firstboot.service"
NODE_CONFIG = "/etc/pi-image/node.json"
SOURCE = Path(firstboot.__file__).resolve().parent
# Modules of the package that never run on a node's own copy: the enroll program travels inside its script.
NOT_ON_NODES = ("enroll.py",)


def plan(ctx: BuildContext) -> None:
    """Install the agent package, its systemd unit (+ wants link), and node.json."""
    for source in sorted(path for path in SOURCE.glob("*.py") if path.name not in NOT_ON_NODES):
        ctx.write(STEP, "root", f"{AGENT_DIR}/{source.name}", source.read_bytes())
    unit_text = (SOURCE / "units" / UNIT).read_text()
    ctx.write(STEP, "root", f"{UNIT_DIR}/{UNIT}", unit_text)
    for link, target in install_links(unit_text, UNIT, f"{UNIT_DIR}/{UNIT}"):
        ctx.symlink(STEP, link, target)
    config = json.dumps(ctx.node_config.to_json(), indent=2, sort_keys=True) + "\n"
    ctx.write(STEP, "root", NODE_CONFIG, config, mode=0o600)
