"""What kubeadm's preflight will refuse, checked on the node before it asks for a join token.

A token is a credential the master mints for one join: asking for one that kubeadm cannot use only loads the master
(the issue's node minted 79 in 9 minutes). These are the checks of kubeadm's preflight (cmd/kubeadm/app/preflight)
that local setup can get wrong: the CRI answers on its socket, bridged traffic goes through iptables, the node
forwards IPv4, swap is off. Then, that the kubeadm and kubelet installed are the cluster's Kubernetes
(version_skew): a node of another version would only fail later, less clearly.
"""

import logging
import os

from .protocol import minor_version

log = logging.getLogger("pi-image.agent")

KUBEADM_SYSCTLS = ("/proc/sys/net/bridge/bridge-nf-call-iptables", "/proc/sys/net/ipv4/ip_forward")


def problems(root, runtime_check):
    """What kubeadm's preflight would report as errors, one text each (empty when a join can succeed)."""
    found = []
    runtime = runtime_check.problem()
    if runtime:
        found.append(runtime)
    for path in KUBEADM_SYSCTLS:
        value = _read(os.path.join(root, path.lstrip("/")))
        if value != "1":
            found.append("{} is {} (kubeadm needs 1)".format(path, value if value is not None else "missing"))
    swaps = _read(os.path.join(root, "proc/swaps"))
    active = [line.split()[0] for line in (swaps or "").splitlines()[1:] if line.strip()]
    if active:
        found.append("swap is on ({}): the kubelet refuses to start with swap".format(", ".join(active)))
    return found


def version_skew(kubernetes_version, kubernetes_release, installed):
    """The failure text if an installed tool is not the cluster's Kubernetes, else None. `installed`: (tool, what it
    says: 'v1.31.4') pairs; compared exactly with `kubernetes_release` when node.json has one (the release path, an
    --offline card, a cluster that recorded its patch), else by minor with `kubernetes_version`. A tool that cannot
    tell its version is logged and left to kubeadm's own checks and the token endpoint's."""
    wanted = kubernetes_release or kubernetes_version
    for tool, version in installed:
        try:
            minor = minor_version(version)
        except ValueError:
            log.warning("%s cannot tell its version (it says %r): not compared with Kubernetes %s", tool, version,
                        wanted)
            continue
        if kubernetes_release:
            same = version.lstrip("v") == kubernetes_release
        else:
            same = minor == minor_version(kubernetes_version)
        if not same:
            return ("version skew: this node has {0} {1} but the cluster runs Kubernetes {2}: rebuild the image with "
                    "kube_install: release (it installs the cluster's exact release), or install {0} {2} on the node "
                    "(and no other {0} on PATH)".format(tool, version, wanted))
    return None


def _read(path):
    try:
        with open(path) as handle:
            return handle.read().strip()
    except OSError:
        return None
