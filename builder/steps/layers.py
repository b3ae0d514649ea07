"""Overlays: kernel networking files, the kube repo and pin, the container runtime, then the profile's and user's."""

from __future__ import annotations

from ..overlays import find_overlay, render_overlay
from ..users import owner_ids
from .context import BuildContext

CORE = ["k8s-kernel", "kube-repo"]


def overlay_names(ctx: BuildContext) -> list[str]:
    """The core overlays, `runtime-<runtime>`, the profile's `overlays`, then `--overlay` dirs, in order."""
    return list(dict.fromkeys(CORE + [f"runtime-{ctx.profile['runtime']}"] + ctx.profile["overlays"] + ctx.overlays))


def plan(ctx: BuildContext) -> None:
    """Render every overlay of `overlay_names` (boot overlays only where there is a boot partition)."""
    users, groups = owner_ids(ctx.view)
    for name in overlay_names(ctx):
        overlay = find_overlay(name)
        if overlay.filesystem == "boot" and ctx.target.boot is None:
            continue  # e.g. a cloud-init seed on a target without a FAT boot partition
        render_overlay(overlay, ctx.template_context(), ctx.plan, ctx.view, users, groups)
