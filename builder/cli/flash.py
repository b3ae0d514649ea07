"""`pi-image flash`: an image onto a card, verified, a node stamped onto it. Parsing, asking and printing only:
builder.cards.flash does the work."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from ..cards.flash import FlashRequest
from ..cards.flash import flash as run_flash
from ..cluster import load_cluster
from ..cluster.status import push_inventory
from ..errors import UserError
from .options import cluster_directory, echo_lines
from .summary import flash_summary


@click.command("flash")
@click.argument("image", type=click.Path(path_type=Path, dir_okay=False))
@click.argument("device", type=click.Path(path_type=Path))
@click.option("--cluster", type=click.Path(path_type=Path, file_okay=False),
              help="The cluster the image was built with [default: $PI_IMAGE_CLUSTER, else ~/.config/pi-image/"
                   "cluster if it exists].")
@click.option("--node", help="Stamp this inventory node onto the card [default for a profile image: the next free "
              "node of its profile, added to the inventory].")
@click.option("--yes", "-y", is_flag=True, help="Do not ask before overwriting DEVICE.")
@click.option("--no-verify", is_flag=True, help="Skip reading the card back.")
@click.option("--force", is_flag=True, help="Write to a disk that does not look removable (never the system's own).")
@click.option("--json", "as_json", is_flag=True, help="Print what was done as JSON.")
def flash(image: Path, device: Path, cluster: Path | None, node: str | None, yes: bool, no_verify: bool,
          force: bool, as_json: bool) -> None:
    """Write IMAGE to DEVICE (an SD card or USB disk, or a file), verify it by reading it back, and stamp the node.

    Only the blocks the image's filesystems use are written (plus partition tables and anything pi-image cannot
    read); the partition table goes last, so an interrupted flash leaves a card that nothing mistakes for a node.
    Refused: a device with a mounted filesystem, the disk the running system lives on, a non-removable disk
    (unless --force), a device smaller than the image. Asks first, showing what is on the card, unless --yes.

    A profile image (`pi-image build --cluster DIR --profile P`) becomes a node only here: the card gets the next
    free node of that profile (or --node NAME) — hostname, address, a fresh credential — so one image serves a fleet
    and reflashing a card rebuilds its node.

    
    Examples:
      pi-image flash worker-8g.img /dev/sdb                       # the next worker-8g node of the default cluster
      pi-image flash worker-8g.img.zst /dev/mmcblk0 --node pi-worker3 --cluster ./homelab
      pi-image flash pi-master1.img /dev/sdb --yes --json
      pi-image flash worker-8g.img vm-disk.img --yes              # a file: for VMs and tests
    """
    confirm = None if yes else _confirm
    cluster_dir = cluster_directory(cluster, False)
    result = run_flash(FlashRequest(image, device, cluster_dir, node, not no_verify, force, confirm))
    # a node the flash added must be known to the master before the card asks it for a token
    pushed = push_inventory(load_cluster(cluster_dir)) if result.added_node and cluster_dir else None
    if as_json:
        ctx = result.stamped
        click.echo(json.dumps({
            "device": str(result.device.path), "image": str(image), "previous": result.previous,
            "node": ctx.node.name if ctx else (result.manifest or {}).get("node"),
            "generation": ctx.node_config.generation if ctx else None, "added_to_inventory": result.added_node,
            "written_bytes": result.written, "zeroed_bytes": result.zeroed, "verified_bytes": result.verified,
            "image_bytes": result.usage.size, "inventory": pushed,
            "seconds": round(result.seconds, 3)}, indent=2))
        return
    echo_lines(flash_summary(result) + ([pushed] if pushed else []))


def _confirm(question: str) -> bool:
    if not sys.stdin.isatty():
        raise UserError("DEVICE would be overwritten and there is no terminal to ask: pass --yes")
    click.echo(question, err=True)
    return click.prompt("Type yes to go on", default="", show_default=False, err=True).strip().lower() == "yes"
