"""Kernel command line: the cgroup flags Kubernetes needs (the seed's `sed` on cmdline.txt, done idempotently)."""

from __future__ import annotations

from .context import BuildContext

STEP = "kernel"


def plan(ctx: BuildContext) -> None:
    """Append the profile's `cgroup_flags` where the target's boot loader reads the command line."""
    fs, path = ctx.target.cmdline_location
    text = ctx.view.read_text(fs, path) or ""
    ctx.write(STEP, fs, path, ctx.target.with_kernel_args(text, ctx.profile["cgroup_flags"]))
