"""Overlays: kernel networking files, the kube repo and pin (or, installed from the upstream release, the kubelet's
unit), the container runtime, the OS's, then the profile's and the user's."""

from __future__ import annotations

from typing import Any

from ..overlays import Overlay, render_overlay, resolve_overlays
from ..systemd import UNIT_DIR, install_links
from ..users import owner_ids
from . import regional
from .context import BuildContext

KUBE_REPO, KUBE_RELEASE = "kube-repo", "kube-release"  # how Kubernetes is installed: pkgs.k8s.io, or the release
KUBELET_UNIT = "kubelet.service"  # kube-release's unit, enabled as the kubelet package's install would
ENABLE_STEP = f"overlay:{KUBE_RELEASE}"


def overlays(ctx: BuildContext) -> list[Overlay]:
    """The core overlays, `runtime-<runtime>`, the target's own (its cloud-init seed, its Wi-Fi file), the
    profile's `overlays`, then `--overlay` dirs, in order."""
    core = ["k8s-kernel", KUBE_RELEASE if ctx.from_release else KUBE_REPO, "proxy", regional.LOCALE_GEN_OVERLAY]
    names = core + [f"runtime-{ctx.profile['runtime']}"] + list(ctx.target.os_overlays) + ctx.profile["overlays"]
    return resolve_overlays(names, ctx.overlays, ctx.replace_overlays)


def target_facts(ctx: BuildContext) -> dict[str, Any]:
    """What the OS overlays need to know about the target beyond the build's template context."""
    return {"admin_groups": list(ctx.target.admin_groups), "seed_sets_keyboard": ctx.target.seed_sets_keyboard,
            "netplan_regulatory_domain": ctx.target.netplan_regulatory_domain,
            "locale_gen": regional.builds_locale_at_first_boot(ctx)}


def plan(ctx: BuildContext) -> None:
    """Render every overlay (boot overlays only where there is a boot partition); a node installed from the release
    gets its kubelet enabled, as the kubelet package does."""
    users, groups = owner_ids(ctx.view)
    context = {**ctx.template_context(), **target_facts(ctx)}
    for overlay in overlays(ctx):
        if overlay.filesystem == "boot" and ctx.target.boot is None:
            continue  # e.g. a cloud-init seed on a target without a FAT boot partition
        if overlay.when and not context.get(overlay.when):
            continue
        render_overlay(overlay, context, ctx.plan, ctx.view, users, groups)
    if ctx.from_release:
        unit = f"{UNIT_DIR}/{KUBELET_UNIT}"
        for link, target in install_links(ctx.view.read_text("root", unit) or "", KUBELET_UNIT, unit):
            ctx.symlink(ENABLE_STEP, link, target)
