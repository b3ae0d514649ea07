"""Upgrading the cluster from Kubernetes 1.31 to 1.32: the master upgrades itself in place, a power cut in the middle.

A master and a worker built at 1.31 (the boot test's archive has stand-in kube packages of 1.30, 1.31 and 1.32) form
the cluster as in test_boot_control_plane. Then the operator runs `pi-image cluster upgrade DIR --to 1.32 --no-wait`
against the master's endpoint: the endpoint records the upgrade and starts the real pi-image-upgrade.service, which
moves the node's apt source and pin to 1.32, installs the 1.32 kubeadm with the real apt, and runs `kubeadm upgrade
plan` and `kubeadm upgrade apply`; the power is cut while apply runs (pitest.upgrade_sleep). At the next power-on
the unit (enabled: WantedBy=multi-user.target) resumes from the phase it recorded, drains the node, installs the
1.32 kubelet and kubectl, restarts the kubelet and uncordons. `pi-image cluster upgrade DIR --to 1.32` run again
waits for it and moves cluster.yaml to 1.32; the worker stays at 1.31 (a kubelet may trail by three minors).

The stand-ins: kubeadm and kubectl hand their calls to the fake API server (fake_api.py), whose kubeadm stand-in
checks `upgrade plan/apply` as kubeadm would (apply at most one minor up, never past the installed kubeadm).
"""

import json
import time

import pytest
import yaml
from apt_repo import kube_release
from lab import BOOT_TIMEOUT, pi_image

pytestmark = pytest.mark.system
MASTER, WORKER = "pi-master1", "pi-worker1"
BUILD = {"base": "preinstalled", "nodes": ((MASTER, "master-2g"), (WORKER, "worker-8g"))}
TO = "1.32"
UPGRADE_SLEEP = 60  # seconds `kubeadm upgrade apply` takes on the first power-on: the power is cut meanwhile
APPLY_STARTING = "PITEST kubeadm-upgrade apply starting"
UPGRADED = f"{MASTER} runs Kubernetes"


@pytest.fixture(scope="module")
def story(cluster_lab, story_figures):
    lab = cluster_lab
    port = lab.build.endpoint_port
    endpoint = ("--endpoint", f"127.0.0.1:{port}")
    times = {}
    with lab.two_guests():
        began = time.monotonic()
        worker = lab.boot(WORKER)
        master = lab.boot(MASTER, hostfwd=(port,), memory_mib=2048, stay_while=lab.hold_url(),
                          upgrade_sleep=UPGRADE_SLEEP)
        worker.wait_powered_off(BOOT_TIMEOUT, watch=("joined the cluster",))
        master.wait_for("PITEST report", BOOT_TIMEOUT)
        times["cluster_formed"] = round(time.monotonic() - began, 1)
        started = pi_image("cluster", "upgrade", str(lab.cluster_dir), "--to", TO, "--no-wait", *endpoint, "--json")
        times["upgrade_asked"] = round(time.monotonic() - began, 1)
        master.wait_for(APPLY_STARTING, BOOT_TIMEOUT)
        master.power_cut()
        times["power_cut_during_apply"] = round(time.monotonic() - began, 1)
        again = lab.boot(MASTER, hostfwd=(port,), memory_mib=2048, stay_while=lab.hold_url())
        again.wait_for(UPGRADED, BOOT_TIMEOUT)
        times["master_upgraded"] = round(time.monotonic() - began, 1)
        finished = pi_image("cluster", "upgrade", str(lab.cluster_dir), "--to", TO, *endpoint, "--json")
        status = pi_image("status", "--cluster", str(lab.cluster_dir), *endpoint, "--json")
        lab.api.release()
        again.wait_powered_off(120)
    story_figures.append({"test": __name__, "guests": 2, **times})
    return lab, json.loads(started.stdout), json.loads(finished.stdout), json.loads(status.stdout), again


def test_the_master_upgrades_itself_with_kubeadm_in_order_and_resumes_after_a_power_cut(story):
    lab, _, _, _, again = story
    kubeadm = [args for args in lab.guest_calls("kubeadm", MASTER) if args[:1] == ["upgrade"]]
    release = kube_release(TO)

    assert kubeadm[0] == ["upgrade", "plan", release], kubeadm
    applies = [args for args in kubeadm if args[1] == "apply"]
    assert len(applies) == 2 and all(release in args and "-y" in args for args in applies), \
        "cut in the middle, then done again at the next power-on"
    assert (lab.fake.state / "cluster_version").read_text().strip() == release, "the API server runs it"
    kubectl = [args for args in lab.guest_calls("kubectl", MASTER) if "drain" in args or "uncordon" in args]
    assert [("drain" in args) for args in kubectl][-2:] == [True, False], kubectl
    assert f"{UPGRADED} {release}" in again.serial


def test_the_masters_apt_source_and_pin_moved_to_the_new_minor_and_its_packages_with_them(story):
    lab = story[0]
    pin = lab.guest_file("/etc/apt/preferences.d/kubernetes", MASTER)
    source = lab.guest_file("/etc/apt/sources.list.d/kubernetes.list", MASTER)

    assert f"Pin: version {TO}.*" in pin, pin
    assert f"/kube/v{TO}/" in source, source
    status = lab.guest_file("/var/lib/dpkg/status", MASTER)
    for tool in ("kubeadm", "kubelet", "kubectl"):
        entry = status.split(f"Package: {tool}\n", 1)[1].split("\n\n", 1)[0]
        assert f"Version: {kube_release(TO)[1:]}-" in entry and "hold ok installed" in entry, (tool, entry)


def test_the_workstation_records_the_new_minor_and_the_worker_stays_within_the_skew_policy(story):
    lab, started, finished, status, _ = story

    assert started, "the push was accepted"
    assert finished
    settings = yaml.safe_load((lab.cluster_dir / "cluster.yaml").read_text())
    assert str(settings["kubernetes_version"]) == TO and "upgrade_to" not in settings
    assert {row["node"] for row in status} == {MASTER, WORKER}
    kubelet = lab.guest_file("/var/lib/dpkg/status", WORKER).split("Package: kubelet\n", 1)[1].split("\n\n")[0]
    assert f"Version: {kube_release('1.31')[1:]}-" in kubelet, "the worker keeps 1.31 until it is reflashed"
