"""The kubelet sized to the board: what it reserves for the system and for Kubernetes' own daemons, when it evicts,
how many pods it takes. A KubeletConfiguration fragment that the first-boot agent hands to kubeadm as a patch
(`kubeletconfiguration+strategic.yaml`), for `kubeadm join` and `kubeadm init` alike.

    kubeReserved     GKE's published formula (memory: 255 MiB under 1 GiB, else 25% of the first 4 GiB, 20% of the
                     next 4, 10% of the next 8, 6% of the next 112, 2% above; CPU: 6% of the first core, 1% of the
                     second, 0.5% of cores 3-4, 0.25% of each core after that)
    systemReserved   the OS itself (systemd, journald, sshd, the network stack): 5% of memory, 100-500 MiB; 50m CPU
    evictionHard     the kubelet's own defaults, stated (a partial map would drop the others): memory.available 100Mi
                     (GKE adds 100 MiB for eviction), nodefs 10%, inodes 5%, imagefs 15%, imagefs inodes 5%
    maxPods          16 per GiB, at least 16, at most the kubelet's default 110 (a 2 GiB board runs ~30 pods, not 110)

A 2 GiB master (4 cores): kubeReserved 512Mi/80m, systemReserved 102Mi, maxPods 32; an 8 GiB worker: 1843Mi/80m,
410Mi, 110.
"""

from __future__ import annotations

from typing import Any

GIB = 1024  # MiB
_MEMORY_TIERS = ((4 * GIB, 0.25), (4 * GIB, 0.20), (8 * GIB, 0.10), (112 * GIB, 0.06))
EVICTION_HARD = {"memory.available": "100Mi", "nodefs.available": "10%", "nodefs.inodesFree": "5%",
                 "imagefs.available": "15%", "imagefs.inodesFree": "5%"}
DEFAULT_MAX_PODS = 110


def kube_reserved_memory_mib(memory_mib: int) -> int:
    """GKE's memory reservation for a machine with `memory_mib` of RAM."""
    if memory_mib < GIB:
        return 255
    reserved, left = 0.0, float(memory_mib)
    for size, share in _MEMORY_TIERS:
        part = min(left, size)
        reserved += part * share
        left -= part
    return round(reserved + left * 0.02)


def kube_reserved_cpu_millis(cpus: int) -> int:
    """GKE's CPU reservation for `cpus` cores, in millicores."""
    shares = [60.0, 10.0, 5.0, 5.0]
    return round(sum(shares[core] if core < len(shares) else 2.5 for core in range(cpus)))


def system_reserved_memory_mib(memory_mib: int) -> int:
    """What the OS itself keeps: 5% of memory, between 100 and 500 MiB."""
    return max(100, min(500, round(memory_mib * 0.05)))


def max_pods(memory_mib: int) -> int:
    """16 pods per GiB, between 16 and the kubelet's default 110."""
    return max(16, min(DEFAULT_MAX_PODS, memory_mib * 16 // GIB))


def kubelet_settings(memory_gb: float | None, cpus: int, pods: int | None = None) -> dict[str, Any]:
    """The KubeletConfiguration fields for a board with `memory_gb` GiB and `cpus` cores ({} when the memory is not
    known: the kubelet's defaults); `pods` overrides the computed maxPods."""
    if not memory_gb:
        return {"maxPods": pods} if pods else {}
    memory = round(memory_gb * GIB)
    return {
        "kubeReserved": {"cpu": f"{kube_reserved_cpu_millis(cpus)}m",
                         "memory": f"{kube_reserved_memory_mib(memory)}Mi"},
        "systemReserved": {"cpu": "50m", "memory": f"{system_reserved_memory_mib(memory)}Mi"},
        "evictionHard": dict(EVICTION_HARD),
        "maxPods": pods or max_pods(memory),
    }
