"""What kubeadm's preflight will refuse, checked on the node before it asks for a join token.

A token is a credential the master mints for one join: asking for one that kubeadm cannot use only loads the master
(the issue's node minted 79 in 9 minutes). These are the checks of kubeadm's preflight (cmd/kubeadm/app/preflight)
that local setup can get wrong: the CRI answers on its socket, bridged traffic goes through iptables, the node
forwards IPv4, swap is off.
"""

import os

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


def _read(path):
    try:
        with open(path) as handle:
            return handle.read().strip()
    except OSError:
        return None
