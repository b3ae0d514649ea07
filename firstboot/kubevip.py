"""kube-vip's static Pod on a control plane of several: it holds the API server's virtual address (ARP mode).

The build puts its manifest on every such card (nodeconfig.KUBE_VIP_MANIFEST), mounting /etc/kubernetes/admin.conf
(hostPath) as kube-vip's kubeconfig. The agent copies it into /etc/kubernetes/manifests: on the first control plane
before `kubeadm init` (init waits for the API server at the virtual address, which kube-vip brings up), on the others
after `kubeadm join` (join's preflight wants that directory empty).

From Kubernetes 1.29 kubeadm's admin.conf is bound to cluster-admin through RBAC, which does not exist yet while
init waits: kube-vip cannot take its leader-election lease, the address never comes up and init times out. So during
init kube-vip mounts super-admin.conf (which only init writes, only on the first control plane), and admin.conf
again once init is done (kube-vip issue #684).
"""

import os
import re

from .errors import SetupFailed
from .nodeconfig import write_private
from .protocol import minor_version

ADMIN_CONF = "/etc/kubernetes/admin.conf"
SUPER_ADMIN_CONF = "/etc/kubernetes/super-admin.conf"
STATIC_POD_DIR = "etc/kubernetes/manifests"  # below the root
STATIC_POD = "kube-vip.yaml"
# the hostPath of kube-vip's kubeconfig volume: `path: /etc/kubernetes/admin.conf` (quoted or not); never mountPath
_KUBECONFIG_HOST_PATH = re.compile(r"""^(\s*(?:-\s+)?path:\s*["']?)/etc/kubernetes/admin\.conf(?=["']?\s*$)""",
                                   re.MULTILINE)


def kubeconfig_during_init(kubernetes_version):
    """The kubeconfig kube-vip mounts while `kubeadm init` runs: super-admin.conf from 1.29, else admin.conf."""
    return SUPER_ADMIN_CONF if minor_version(kubernetes_version) >= (1, 29) else ADMIN_CONF


def install(root, manifest, kubeconfig=ADMIN_CONF):
    """Put the card's kube-vip `manifest` among the static Pods below `root`, mounting `kubeconfig`.

    Written whole (a temporary the kubelet ignores, as it ignores every dot file, then a rename), 0600 as kubeadm
    writes its own manifests. SetupFailed (no retry) when the card has no manifest or it mounts no admin.conf."""
    try:
        with open(manifest) as handle:
            text = handle.read()
    except OSError as err:
        raise SetupFailed("cannot read kube-vip's manifest {} ({}): without it this control plane cannot hold the "
                          "cluster's virtual address; rebuild the card".format(manifest, err.strerror or err),
                          retry=False) from None
    text, found = _KUBECONFIG_HOST_PATH.subn(lambda match: match.group(1) + kubeconfig, text)
    if not found:
        raise SetupFailed("kube-vip's manifest {} mounts no {} (a hostPath volume): rebuild the card".format(
            manifest, ADMIN_CONF), retry=False)
    directory = os.path.join(root, STATIC_POD_DIR)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    temporary = os.path.join(directory, "." + STATIC_POD)
    write_private(temporary, text)
    os.replace(temporary, os.path.join(directory, STATIC_POD))
