"""A control-plane image: the token endpoint (its package, its unit, the cluster's settings and secrets), the unit
that upgrades the node's Kubernetes when the endpoint is asked to (firstboot/upgrade.py), and the pinned CNI
manifest, which the first-boot agent applies after `kubeadm init` (firstboot/controlplane.py).

Workers get none of it. The secrets are 0600 root in a 0700 directory, and the manifest lists them without hashes.
"""

from __future__ import annotations

from firstboot.nodeconfig import CLUSTER_DIR, CNI_MANIFEST, ENDPOINT_UNIT, UPGRADE_UNIT

from ..cni import flannel_manifest
from ..systemd import UNIT_DIR, install_links
from .context import BuildContext
from .firstboot import AGENT_DIR, SOURCE

STEP = "control-plane"


def plan(ctx: BuildContext) -> None:
    """Everything a cluster's control plane needs beyond a worker's image (nothing for other nodes)."""
    settings = ctx.node_config.control_plane
    if not ctx.cluster_files or settings is None:
        return
    for source in sorted((SOURCE / "endpoint").glob("*.py")):
        ctx.write(STEP, "root", f"{AGENT_DIR}/endpoint/{source.name}", source.read_bytes())
    for unit in (ENDPOINT_UNIT, UPGRADE_UNIT):
        unit_text = (SOURCE / "units" / unit).read_text()
        ctx.write(STEP, "root", f"{UNIT_DIR}/{unit}", unit_text)
        for link, target in install_links(unit_text, unit, f"{UNIT_DIR}/{unit}"):
            ctx.symlink(STEP, link, target)
    ctx.mkdir(STEP, f"/{CLUSTER_DIR}", mode=0o700)
    ctx.mkdir(STEP, f"/{CLUSTER_DIR}/secrets", mode=0o700)
    for name, content, mode in ctx.cluster_files:
        ctx.write(STEP, "root", f"/{CLUSTER_DIR}/{name}", content, mode=mode)
    ctx.write(STEP, "root", f"/{CNI_MANIFEST}", flannel_manifest(settings.pod_subnet))
