"""A control plane of several (node.json's control_plane.vip): kube-vip's static pod manifest, generated at build
time (builder/plan/kube_vip.py) at firstboot.nodeconfig.KUBE_VIP_MANIFEST, 0644; the agent puts it in
/etc/kubernetes/manifests at init or after its join. Nothing for any other node."""

from __future__ import annotations

from firstboot import protocol
from firstboot.nodeconfig import KUBE_VIP_MANIFEST

from ..kube_vip import kube_vip_manifest
from .context import BuildContext

STEP = "kube-vip"


def plan(ctx: BuildContext) -> None:
    """The manifest for a control plane of several control planes."""
    settings = ctx.node_config.control_plane
    if settings is None or settings.vip is None or ctx.node_config.api_server is None:
        return
    api_port = protocol.split_host_port(ctx.node_config.api_server)[1]
    ctx.write(STEP, "root", f"/{KUBE_VIP_MANIFEST}", kube_vip_manifest(settings.vip, api_port), mode=0o644)
