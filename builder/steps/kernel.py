"""Kernel command line: the cgroup flags Kubernetes needs, and the Wi-Fi regulatory domain (idempotently)."""

from __future__ import annotations

from . import wifi
from .context import BuildContext

STEP = "kernel"


def plan(ctx: BuildContext) -> None:
    """Append the profile's `cgroup_flags` (and its Wi-Fi country) where the target's boot loader reads them;
    nothing where the target's kernel needs none (x86 Ubuntu boots cgroup v2 with the memory controller on)."""
    location = ctx.target.cmdline_location
    if location is None:
        return
    fs, path = location
    text = ctx.view.read_text(fs, path) or ""
    args = ctx.profile["cgroup_flags"] + wifi.kernel_args(ctx.profile)
    ctx.write(STEP, fs, path, ctx.target.with_kernel_args(text, args))
