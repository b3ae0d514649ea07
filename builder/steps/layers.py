"""Overlays: kernel networking files, the kube repo and pin, the container runtime, then the profile's and user's."""

from __future__ import annotations

from ..overlays import Overlay, render_overlay, resolve_overlays
from ..users import owner_ids
from .context import BuildContext

CORE = ["k8s-kernel", "kube-repo", "proxy"]


def overlays(ctx: BuildContext) -> list[Overlay]:
    """The core overlays, `runtime-<runtime>`, the profile's `overlays`, then `--overlay` dirs, in order."""
    names = CORE + [f"runtime-{ctx.profile['runtime']}"] + ctx.profile["overlays"]
    return resolve_overlays(names, ctx.overlays, ctx.replace_overlays)


def plan(ctx: BuildContext) -> None:
    """Render every overlay (boot overlays only where there is a boot partition)."""
    users, groups = owner_ids(ctx.view)
    context = ctx.template_context()
    for overlay in overlays(ctx):
        if overlay.filesystem == "boot" and ctx.target.boot is None:
            continue  # e.g. a cloud-init seed on a target without a FAT boot partition
        if overlay.when and not context.get(overlay.when):
            continue
        render_overlay(overlay, context, ctx.plan, ctx.view, users, groups)
