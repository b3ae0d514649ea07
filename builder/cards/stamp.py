"""Stamping a node onto a card at flash time: which node a cluster image becomes, and the edits that make it so.

    image's manifest --recipe (builder.build.recipes)--> the node (--node, or the next free one of the profile) -->
    the node's build, planned against the image itself --> applied on the written card (the writer's hook, before
    the card's partition table exists) --> fsck --> the node's generation recorded in the inventory

A profile image (`stamp_at_flash` in its manifest) gets a node's identity; a node's own image is written as it is.
The edits go through the same edit layer builds use, so the card holds the files a per-node build of that node has.
Nothing here copies blocks: the writer engine (builder.cards.writer) calls `Stamp.before_table` with the open card.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..build import MANIFEST_PATH, apply_checked, build_manifest, manifest_op, prepare, request_from_recipe
from ..build.recipes import Recipe, load_recipe, same_base
from ..cluster import Cluster, Node, check_writable, load_cluster, next_free_node, record_generation, same_profile
from ..errors import UserError
from ..image import DiskImage
from ..plan.steps import BuildContext
from ..targets import detect
from .writer import OpenCard

MAX_MANIFEST = 4 << 20


@dataclass(frozen=True)
class StampRequest:
    """Which node a flash stamps (the user's IMAGE, --cluster and --node)."""

    image: Path  # as the user named it: messages use it
    cluster: Path | None = None  # where the image's recipe and the node's inventory entry are
    node: str | None = None  # default: the next free node of the image's profile (for a profile image)


@dataclass
class Stamp:
    """A node to stamp onto the card: its build plan, the card's manifest, and whether the flash added the node to
    the inventory."""

    ctx: BuildContext
    manifest: dict[str, Any]
    cluster: Cluster
    added: bool

    def before_table(self, card: OpenCard) -> None:
        """The writer's hook: apply the node's plan on the card with the same edit layer builds use (the table read
        from the image: the card's is not written yet), fsck every filesystem it changed, sync, and record the
        node's generation (the card is this node's newest from now on; if another flash of it won, this raises and
        no table is written)."""
        disk = DiskImage(card.path, writable=True, fake_time=self.ctx.epoch, partitions_from=card.image)
        apply_checked(disk, self.ctx.plan.ops + [manifest_op(self.manifest)])
        card.sync()  # the stamp is on the card before the inventory counts it
        assert self.ctx.node_config.generation is not None  # plan_stamp builds an inventory node: its next generation
        record_generation(self.cluster.directory, self.ctx.node.name, self.ctx.node_config.generation)


def image_manifest(image: DiskImage) -> dict[str, Any] | None:
    """The build record (/etc/pi-image/build.json) of a pi-image image, or None for any other image."""
    try:
        root = detect(image).root
    except UserError:
        return None  # not an OS pi-image knows: written as it is
    st = root.lstat(MANIFEST_PATH)
    if st is None or not st.is_file or st.size > MAX_MANIFEST:
        return None
    try:
        data = json.loads(root.read(MANIFEST_PATH))
    except (ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def stamp_recipe(request: StampRequest, manifest: dict[str, Any] | None) -> Recipe | None:
    """The recipe to stamp a node from, or None when the image (whose build record is `manifest`) is written as it
    is; UserError for what cannot be (all before anything is asked or written)."""
    manifest = manifest or {}
    recipe_id, profile_image = manifest.get("recipe"), bool(manifest.get("stamp_at_flash"))
    if recipe_id is None:
        if request.node:
            raise UserError(f"{request.image} was built without a cluster, so no node can be stamped onto it: build "
                            "it with `pi-image build --cluster DIR --profile PROFILE`")
        return None
    if request.cluster is None:
        if profile_image:
            raise UserError(f"{request.image} is a profile image of cluster {manifest.get('cluster')}: pass --cluster "
                            "DIR (or set PI_IMAGE_CLUSTER) so a node can be stamped onto the card")
        return None
    if not profile_image:
        if request.node in (None, manifest.get("node")):
            return None if request.node is None else load_recipe(request.cluster, recipe_id, request.image)
        raise UserError(f"{request.image} is node {manifest.get('node')}'s own image: its files name that node, so "
                        f"it cannot become {request.node}; flash the profile image (`pi-image build --cluster DIR "
                        "--profile PROFILE`), or that node's own")
    check_writable(request.cluster)
    return load_recipe(request.cluster, recipe_id, request.image)


def plan_stamp(request: StampRequest, raw: Path, manifest: dict[str, Any], recipe: Recipe) -> Stamp:
    """The node's plan against the raw image `raw` itself, whose build record is `manifest` (call it after the
    question: a node it picks joins the inventory)."""
    assert request.cluster is not None
    cluster = load_cluster(request.cluster)
    node, added = _choose_node(cluster, request, recipe)
    ctx = prepare(request_from_recipe(recipe, raw, request.cluster, node.name))
    stamped = build_manifest(ctx, recipe.base, manifest["recipe"])
    for key in ("pi_image_version", "target", "profile", "overlays"):
        if stamped[key] != manifest.get(key):
            raise UserError(f"the {key.replace('_', ' ')} {request.image} was built with has changed since (see "
                            f"its {MANIFEST_PATH}): rebuild the image, so that every card of it is the same")
    return Stamp(ctx, stamped, cluster, added)


def _choose_node(cluster: Cluster, request: StampRequest, recipe: Recipe) -> tuple[Node, bool]:
    """The inventory node the card becomes: --node, else the next free node of the image's profile and base (a node
    never built yet, else a new one added to the inventory)."""
    if request.node is None:
        return next_free_node(cluster, recipe.profile, _inventory_base(cluster, recipe))
    node = cluster.node(request.node)
    if not same_profile(node.profile, recipe.profile):
        raise UserError(f"node {node.name!r} has profile {node.profile} in {cluster.directory / 'inventory.yaml'} "
                        f"but {request.image} is a {recipe.profile} image: flash that node's profile image")
    if node.base and not same_base(node.base, recipe.base):
        raise UserError(f"node {node.name!r} is built from {node.base} ({cluster.directory / 'inventory.yaml'}) but "
                        f"{request.image} from {recipe.base.get('name') or recipe.base.get('path')}: flash an image "
                        "of that base")
    return node, False


def _inventory_base(cluster: Cluster, recipe: Recipe) -> str | None:
    """The image's base as the inventory spells it, for next_free_node (which compares the words): the base of the
    first never-built node of the image's profile whose base is the image's (by name, or a file by its content),
    else the image's catalog name or URL (None for a file)."""
    for node in cluster.nodes:
        if node.generation == 0 and same_profile(node.profile, recipe.profile) and node.base \
                and same_base(node.base, recipe.base):
            return node.base
    return recipe.base.get("name")
