"""A cluster from two flashed cards: a master and a worker are powered on together, and the cluster makes itself.

The worker comes up first and finds nobody at the token endpoint: it waits. The master, 20 s later, runs `kubeadm
init` on its cluster-subnet address, applies the pod network, and only then starts its own token endpoint (the real
pi-image-tokend.service, Python in the guest), which gives the worker its join token; the worker joins with it.
While the master still runs, the operator fetches the admin kubeconfig from it with `pi-image cluster kubeconfig`.

Both guests run at once under TCG, each on a QEMU network of its own: the master's endpoint port is forwarded from
the host's 127.0.0.1 (hostfwd), so the worker reaches it as 10.0.2.2:PORT, the endpoint named in its image, and the
host as 127.0.0.1:PORT. There is no control plane to bring up: the guests' kubeadm and kubectl hand their calls to
the fake API server on the host (fake_api.py), whose fake cluster plays the API server (its controlPlaneEndpoint is
10.0.2.2:<api port>). The tests are one story told in order: they share the guests (conftest.SHARED_GUEST_MODULES).
It boots the "preinstalled" base (conftest.base_images): the story is the cluster, not the packages.
"""

import json
import stat
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from apt_repo import kube_release
from lab import ClusterLab, pi_image
from qemu_guest import Guest
from ubuntu_layout import copy_root_dir, read_root_file, root_file_owner_mode

pytestmark = pytest.mark.system
MASTER, WORKER = "pi-master1", "pi-worker1"
BUILD = {"base": "preinstalled", "nodes": ((MASTER, "master-2g"), (WORKER, "worker-8g"))}
MASTER_LATE = 20  # seconds between the worker's power-on and the master's
RETRYING = "; retrying"  # the worker's agent found nobody at the endpoint
MASTER_MILESTONES = ("kubeadm init done", "token endpoint started", f"control plane {MASTER} is Ready",
                     "PITEST report")
WORKER_MILESTONES = (RETRYING, "joined the cluster")
INIT_ARGS = ["init", "--config", "/var/lib/pi-image/init-config.yaml", "--skip-token-print"]


@dataclass
class Story:
    lab: ClusterLab
    master: Guest
    worker: Guest
    kubeconfig: Path  # what `pi-image cluster kubeconfig` wrote on the host


@pytest.fixture(scope="module")
def story(cluster_lab, tmp_path_factory, story_figures):
    """Worker on, master on 20 s later (staying up until released), both watched until the worker is done and
    powered off and the master has reported; then the admin kubeconfig fetched from the running master, the
    master released and powered off."""
    lab = cluster_lab
    with lab.two_guests():
        started = time.monotonic()
        worker = lab.boot(WORKER)
        time.sleep(MASTER_LATE)
        port = lab.build.endpoint_port
        # a master-2g: kubeadm init's preflight (the stand-in's too) wants 1700 MB
        master = lab.boot(MASTER, hostfwd=(port,), memory_mib=2048, stay_while=lab.hold_url())
        lab.watch_master_and_worker(master, worker, MASTER_MILESTONES, WORKER_MILESTONES)
        kubeconfig = tmp_path_factory.mktemp("operator") / "admin.kubeconfig"
        pi_image("cluster", "kubeconfig", str(lab.cluster_dir), "--endpoint", f"127.0.0.1:{port}", "-o",
                 str(kubeconfig))
        lab.api.release()
        master.wait_powered_off(120)
    story_figures.append({"test": __name__, "guests": 2, "master_powered_on_after": MASTER_LATE,
                          "wall_seconds": round(time.monotonic() - started, 1)})
    return Story(lab, master, worker, kubeconfig)


def test_the_master_runs_kubeadm_init_once_on_its_subnet_address_at_the_pinned_version(story):
    lab = story.lab
    report = lab.guest_report(1, node=MASTER)

    assert report["reason"] == "done", story.master.serial[-3000:]
    assert json.loads(report["done"]) == {"node": MASTER, "initialized": True}
    [init] = lab.fake.inits()
    assert init["node"] == MASTER
    assert init["advertise_address"] == init["node_ip"] == "10.0.2.15", "the cluster subnet's address"
    assert len(report["routes"]) == 2, "both NICs have a default route: the subnet decides, not the route"
    assert any(" 10.0.3.15/24 " in line for line in report["addresses"]), report["addresses"]
    cluster = init["config"]["ClusterConfiguration"]
    assert cluster["kubernetesVersion"] == kube_release("1.31"), "the installed kubeadm's, of the pinned minor"
    assert cluster["controlPlaneEndpoint"] == f"10.0.2.2:{lab.build.api_port}"
    assert init["config"]["InitConfiguration"]["apiVersion"] == "kubeadm.k8s.io/v1beta4"
    assert init["skip_token_print"] and init["config_mode"] == "0600"
    kubeadm = lab.guest_calls("kubeadm", MASTER)
    assert [args for args in kubeadm if args[0] == "init"] == [INIT_ARGS]
    assert [args for args in kubeadm if args[0] in ("join", "reset")] == []
    [ran] = lab.guest_records("inits.jsonl", MASTER)
    assert ran["returncode"] == 0
    assert lab.guest_file("/var/lib/pi-image/control-plane.initialized", MASTER) is not None
    assert f"control plane {MASTER} is Ready" in story.master.serial


def test_the_token_endpoint_starts_only_once_kubeadm_init_has_succeeded(story):
    lab = story.lab
    report = lab.guest_report(1, node=MASTER)
    [ran] = lab.guest_records("inits.jsonl", MASTER)

    endpoint = report["endpoint_unit"]
    assert endpoint["ActiveState"] == "active", endpoint
    started = int(endpoint["ExecMainStartTimestampMonotonic"]) / 1e6
    assert started > ran["ended"], f"the endpoint started at {started:.1f} s, the init ended at {ran['ended']:.1f} s"
    journal = lab.guest_file("/var/lib/pi-image-test/boot-1.journal", MASTER)
    assert "ConditionPathExists=/var/lib/pi-image/control-plane.initialized" in journal, \
        "at boot, before the init, systemd skipped the endpoint's unit"
    seen = story.master.seen
    assert seen["kubeadm init done"] < seen["token endpoint started"] < seen[f"control plane {MASTER} is Ready"]
    [applied] = [call for call in lab.guest_records("calls.jsonl", MASTER) if "apply" in call["args"]]
    assert ran["ended"] < applied["uptime"] < started, "the pod network was applied before the endpoint started"


def test_the_worker_waits_for_the_master_then_joins_with_the_token_the_masters_endpoint_issued(story):
    lab, worker, master = story.lab, story.worker, story.master
    report = lab.guest_report(1, node=WORKER)

    assert report["reason"] == "done", worker.serial[-3000:]
    assert json.loads(report["done"]) == {"node": WORKER, "joined": True}
    assert worker.at(RETRYING) < master.at("token endpoint started") < worker.at("joined the cluster"), \
        "it asked while the master was not up yet, and joined once its endpoint was"
    assert "next attempt in" in worker.serial
    [join] = lab.fake.joins()
    assert join["node"] == WORKER and join["node_ip"] == "10.0.2.15"
    [created] = [token for token in lab.fake.created_tokens() if token["description"] == f"pi-image {WORKER}"]
    assert join["config"]["discovery"]["bootstrapToken"]["token"] == created["token_id"] + ".<secret>"
    assert join["config"]["discovery"]["bootstrapToken"]["apiServerEndpoint"] == f"10.0.2.2:{lab.build.api_port}"
    assert lab.decisions(WORKER) == ["token-issued", "report-joined"], "the master's endpoint issued it..."
    assert lab.tokens_issued() == [created["token_id"]], "...this very token"
    assert lab.fake.cluster()["nodes"] == {MASTER: "Ready", WORKER: "Ready"}
    assert lab.fake.cluster()["tokens"] == {}, "the init's token and the worker's are both gone"
    assert read_root_file(lab.images[WORKER], "/usr/lib/pi-image/firstboot/endpoint/tokend.py") is None, \
        "a worker's image carries no token endpoint"
    assert read_root_file(lab.images[WORKER], "/etc/pi-image/cluster/tokend.json") is None


def test_the_master_applies_flannel_on_the_clusters_pod_network(story):
    lab = story.lab

    [applied] = lab.fake.applies()
    assert applied["file"].endswith("/kube-flannel.yml")
    assert {"kind": "DaemonSet", "name": "kube-flannel-ds"}.items() <= next(
        o for o in applied["objects"] if o["kind"] == "DaemonSet").items()
    assert applied["flannel_network"] == "10.244.0.0/16"
    kubectl = lab.guest_calls("kubectl", MASTER)
    assert ["--kubeconfig", "/etc/kubernetes/admin.conf", "apply", "-f", "/usr/lib/pi-image/cni/kube-flannel.yml"] \
        in kubectl


def test_the_operator_fetches_the_admin_kubeconfig_from_the_running_master(story):
    lab = story.lab
    admin_conf = lab.api.init_files["etc/kubernetes/admin.conf"]["content"]

    assert stat.S_IMODE(story.kubeconfig.stat().st_mode) == 0o600
    assert story.kubeconfig.read_text() == admin_conf, "the admin.conf kubeadm init wrote on the master"
    assert lab.decisions("pi-image-admin") == ["admin-kubeconfig"]
    image = lab.images[MASTER]
    assert root_file_owner_mode(image, "/etc/kubernetes/admin.conf") == (0, 0o600)
    assert root_file_owner_mode(image, "/root/.kube/config") == (0, 0o600)
    assert read_root_file(image, "/root/.kube/config").decode() == admin_conf
    assert "PITEST stay over (released)" in story.master.serial, "it stayed up until the host was done with it"


def test_the_masters_own_status_shows_both_nodes_joined(story, tmp_path):
    cluster_dir = copy_root_dir(story.lab.images[MASTER], "/etc/pi-image/cluster", tmp_path)

    rows = json.loads(pi_image("status", "--local", "--cluster", str(cluster_dir), "--json").stdout)

    states = {row["node"]: (row["role"], row["state"], row["last_error"]) for row in rows}
    assert states == {MASTER: ("control-plane", "joined", None), WORKER: ("worker", "joined", None)}


def test_no_token_secret_is_left_on_a_console_or_in_a_log(story):
    lab = story.lab
    secrets = lab.api.tokens_seen
    assert len(secrets) >= 2, "the init's token and the worker's passed through the fake API server"
    places = {"worker console": story.worker.serial, "master console": story.master.serial}
    for node in (MASTER, WORKER):
        for path in ("/var/lib/pi-image/firstboot.log", "/var/lib/pi-image-test/boot-1.journal"):
            places[f"{node}:{path}"] = lab.guest_file(path, node)
    places["master audit log"] = lab.guest_file("/etc/pi-image/cluster/state/audit.log", MASTER)
    for place, text in places.items():
        assert text and not any(secret.split(".")[1] in text for secret in secrets), f"a token secret is in {place}"
    init_config = root_file_owner_mode(lab.images[MASTER], "/var/lib/pi-image/init-config.yaml")
    assert init_config in (None, (0, 0o600)), "the init configuration (its token spent) is root's alone"
