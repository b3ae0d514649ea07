"""Swap off for good: mask the swap services a target ships and comment out swap lines in the fstab.

Each target lists its swap services (`Target.swap_services`): Jetson's zram comes from nvzramconfig.service,
Raspberry Pi OS's swapfile from dphys-swapfile.service; Ubuntu's Pi image has no swap. The kubelet's default
(failSwapOn) then matches the node, and the agent swaps off at first boot.
"""

from __future__ import annotations

from firstboot.localsetup import without_fstab_swap

from ...targets import TARGETS
from ..systemd import UNIT_DIR, unit_file, wants_links
from .context import BuildContext

STEP = "swap"
# Every target's, for readers that check an image of any target (inspect).
SWAP_SERVICES = tuple(dict.fromkeys(unit for target in TARGETS for unit in target.swap_services))
MASKED_COPIES = "/etc/pi-image/masked"


def plan(ctx: BuildContext) -> None:
    """Mask each swap service present in the image and drop its wants links; disable fstab swap entries."""
    root = ctx.view.tree("root")
    for unit in ctx.target.swap_services:
        path = unit_file(root, unit)
        links = wants_links(root, unit)
        if path is None and not links:
            continue
        for link in links:
            ctx.remove(STEP, link)
        unmasked = f"{UNIT_DIR}/{unit}"
        # L4T ships it in /etc: masking replaces the file, so a copy is kept to unmask it (a link needs none)
        there = ctx.view.file_meta("root", unmasked) if path == unmasked else None
        if there is not None:
            ctx.write(STEP, "root", f"{MASKED_COPIES}/{unit}", ctx.view.read_text("root", unmasked) or "", *there)
        ctx.symlink(STEP, f"{UNIT_DIR}/{unit}", "/dev/null")
    fstab = ctx.view.read_text("root", "/etc/fstab")
    if fstab is not None:
        ctx.edit(STEP, "root", "/etc/fstab", without_fstab_swap(fstab))
