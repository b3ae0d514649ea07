"""A control-plane node never runs `kubeadm join`: its first boot prepares it (the runtime started and checked) and
stops there, without asking the endpoint for anything; `kubeadm init` is the operator's step.

It boots the "preinstalled" base (conftest.base_images): the story is the role, not the packages.
"""

import json

import pytest

from lab import BOOT_TIMEOUT

pytestmark = pytest.mark.system
BUILD = {"base": "preinstalled", "profile": "master-2g", "node": "pi-master1"}


def test_a_control_plane_node_never_runs_kubeadm_join(system_lab):
    system_lab.endpoint.start()
    guest = system_lab.boot()

    guest.wait_powered_off(BOOT_TIMEOUT)

    report = system_lab.guest_report(1)
    assert report["reason"] == "done"
    assert json.loads(report["done"]) == {"joined": False, "node": "pi-master1"}
    assert [args for args in system_lab.guest_calls("kubeadm") if args[:1] == ["join"]] == []
    assert "this is a control-plane node: it never runs kubeadm join" in guest.serial
    assert report["runtime"]["is_active"] == "active", "its runtime is ready for kubeadm init"
    assert system_lab.audit_decisions() == [], "it never asked the endpoint for anything"
