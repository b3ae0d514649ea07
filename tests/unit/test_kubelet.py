"""The kubelet sized to the board: GKE's published reservations, worked examples from its documentation."""

import pytest

from builder.plan import kubelet

MIB = 1024


@pytest.mark.parametrize("memory_gib, reserved_mib", [(0.5, 255), (1, 256), (2, 512), (4, 1024), (8, 1843),
                                                      (16, 2662), (128, 9544)])
def test_memory_reservation_follows_gkes_formula(memory_gib, reserved_mib):
    assert kubelet.kube_reserved_memory_mib(round(memory_gib * MIB)) == reserved_mib


@pytest.mark.parametrize("cpus, millis", [(1, 60), (2, 70), (4, 80), (8, 90)])
def test_cpu_reservation_follows_gkes_formula(cpus, millis):
    assert kubelet.kube_reserved_cpu_millis(cpus) == millis


def test_a_2gb_master_and_an_8gb_worker_get_different_documented_values():
    master, worker = kubelet.kubelet_settings(2, 4), kubelet.kubelet_settings(8, 4)

    assert master == {"kubeReserved": {"cpu": "80m", "memory": "512Mi"},
                      "systemReserved": {"cpu": "50m", "memory": "102Mi"},
                      "evictionHard": {"memory.available": "100Mi", "nodefs.available": "10%",
                                       "nodefs.inodesFree": "5%", "imagefs.available": "15%",
                                       "imagefs.inodesFree": "5%"},
                      "maxPods": 32}
    assert worker["kubeReserved"] == {"cpu": "80m", "memory": "1843Mi"}
    assert worker["systemReserved"]["memory"] == "410Mi" and worker["maxPods"] == 110


def test_unknown_memory_keeps_the_kubelets_defaults_and_max_pods_can_be_set():
    assert kubelet.kubelet_settings(None, 4) == {}
    assert kubelet.kubelet_settings(None, 4, 50) == {"maxPods": 50}
    assert kubelet.kubelet_settings(4, 4, 20)["maxPods"] == 20
