"""`pi-image flash`: what the CLI calls. Check everything, ask, then write the image with the writer engine, stamping
the node onto the card through the engine's hook.

    image, device --checks (builder.cards.devices), the node to stamp (builder.cards.stamp)--> the question -->
    write and verify (builder.cards.writer) --hook before the partition table--> stamp the node --> table last

Every bad input is refused before the card is touched; the node a flash picks joins the inventory only after the
user said yes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from firstboot.protocol import NODE_NAME_RE

from ..build.recipes import Recipe
from ..errors import UserError
from ..image import DiskImage
from ..image.inputs import raw_image
from ..image.usage import UsageMap, usage_map
from ..plan.steps import BuildContext
from .devices import Device, check_target, open_target
from .stamp import StampRequest, image_manifest, plan_stamp, stamp_recipe
from .writer import WriteOptions, write_card


@dataclass
class FlashRequest:
    """What the user asked for (the CLI's arguments)."""

    image: Path
    device: Path
    cluster: Path | None = None  # where the image's recipe and the node's inventory entry are
    node: str | None = None  # default: the next free node of the image's profile (for a profile image)
    verify: bool = True
    force: bool = False  # a disk that does not look removable
    confirm: Callable[[str], bool] | None = None  # asked before anything is written; None: --yes


@dataclass
class FlashResult:
    """What a flash did."""

    image: Path
    device: Device
    previous: str  # what the card held before
    usage: UsageMap
    written: int = 0  # bytes of the image put on the card (written, or zeroed where they are all zeros)
    zeroed: int = 0  # of those, all-zero chunks made zero without writing them
    verified: int = 0
    seconds: float = 0.0
    stamped: BuildContext | None = None
    added_node: bool = False  # the stamped node was added to the inventory by this flash
    manifest: dict[str, Any] | None = None  # the image's build record (the card's, once stamped)


def flash(request: FlashRequest) -> FlashResult:
    """Write request.image to request.device (see the module docstring); raise UserError before touching the card
    for every bad input."""
    raw = raw_image(request.image)
    image = DiskImage(raw)
    manifest = image_manifest(image)
    device = open_target(request.device)
    check_target(device, image.size, force=request.force, image=raw)
    stamping = StampRequest(request.image, request.cluster, request.node)
    recipe = stamp_recipe(stamping, manifest)
    previous = card_contents(device)
    usage = usage_map(raw, (image.table, image.partitions))
    if request.confirm is not None and not request.confirm(_question(request, device, previous, recipe)):
        raise UserError("nothing was written")
    # may add the node: after the question (a recipe comes only from a manifest)
    stamp = plan_stamp(stamping, raw, manifest, recipe) if recipe and manifest is not None else None
    result = FlashResult(request.image, device, previous, usage, manifest=stamp.manifest if stamp else manifest)
    started = time.monotonic()
    stats = write_card(raw, usage, device, WriteOptions(verify=request.verify),
                       stamp.before_table if stamp else None)
    result.seconds = time.monotonic() - started
    result.written, result.zeroed, result.verified = stats.written, stats.zeroed, stats.verified
    if stamp is not None:
        result.stamped, result.added_node = stamp.ctx, stamp.added
    return result


def card_contents(device: Device) -> str:
    """What is on the card now, in a few words: a pi-image node, partitions and labels, or nothing readable."""
    if device.kind == "file" and device.size == 0:
        return "nothing (a new file)"
    try:
        card = DiskImage(device.path)
    except UserError:
        return "no partition table pi-image can read"
    except OSError as err:
        return f"unreadable ({err.strerror})"
    manifest = image_manifest(card)
    if manifest and _printable(manifest.get("node")) and not manifest.get("stamp_at_flash"):
        cluster = f" of cluster {manifest['cluster']}" if _printable(manifest.get("cluster")) else ""
        return f"pi-image node {manifest['node']}{cluster}"
    parts = ", ".join(f"{p.label or p.name or p.number} ({p.fs or 'unknown'})" for p in card.partitions)
    return f"{len(card.partitions)} partition{'s' if len(card.partitions) != 1 else ''}: {parts}"


def _printable(value: object) -> bool:
    """True for a name read from a card that is safe to show (a node or cluster name, nothing else)."""
    return isinstance(value, str) and NODE_NAME_RE.match(value) is not None


def _question(request: FlashRequest, device: Device, previous: str, recipe: Recipe | None) -> str:
    node = "" if recipe is None else f", as node {request.node}" if request.node else \
        f", as the next free {recipe.profile} node"
    return (f"Write {request.image}{node} to {device.describe()}?\n"
            f"  It holds {previous} now: everything on it is replaced.")
