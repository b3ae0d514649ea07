"""Build steps: each a small module with `plan(ctx)` that turns profile values into file operations.

The order below is the build's order. Steps only read (through `ctx.view`) and add ops to `ctx.plan`;
nothing here writes to an image. Plain file content lives in overlays/, not here.
"""

from __future__ import annotations

from . import (
    accounts,
    bundle,
    control_plane,
    firstboot,
    identity,
    kernel,
    kube_key,
    kube_vip,
    layers,
    regional,
    registry,
    services,
    swap,
    wifi,
)
from .context import BuildContext, NodeIdentity

STEPS = [kernel, layers, kube_key, registry, bundle, swap, services, identity, regional, wifi, accounts, firstboot,
         control_plane, kube_vip]

__all__ = ["BuildContext", "NodeIdentity", "STEPS", "make_plan"]


def make_plan(ctx: BuildContext) -> None:
    """Run every step's planner, in order, adding its ops to `ctx.plan`."""
    for step in STEPS:
        step.plan(ctx)
