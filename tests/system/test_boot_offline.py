"""A cluster behind a firewall: a master and a worker built with --offline boot on networks that reach the cluster
and nothing else, and the cluster still makes itself.

Both cards were built from the stock base (no runtime, no kube packages) with `pi-image build --offline`: apt on the
host resolved the exact closure against the image's dpkg status from the signed test archive, and skopeo fetched
the images of kubeadm 1.31.4 and flannel for linux/amd64 from a real registry (Debian's docker-registry) through
the build's registry_mirrors. The guests are isolated (QEMU restrict=on on both NICs: no archive, no registry, no
DNS, no NTP); each reaches only 10.0.2.2:<API port> (the fake API server) and 10.0.2.2:<endpoint port> (the master's
token endpoint, forwarded from the host). kubeadm's stand-in runs its preflight with pitest.require_images=1: every
image of its own `kubeadm config images list` (init) or that the kubelet starts at once (join), and the pod
network's, must be in containerd, asked through the CRI (ImageStatus) — an image missing there fails the preflight
naming it, as a pull with no registry would. The tests are one story told in order (conftest.SHARED_GUEST_MODULES).
"""

import time
from dataclasses import dataclass

import guest_timeline
import pytest
from apt_repo import KUBEADM_IMAGES, pod_network_images
from lab import ClusterLab
from qemu_guest import Guest

pytestmark = pytest.mark.system
MASTER, WORKER = "pi-master1", "pi-worker1"
BUILD = {"base": "stock", "offline": True, "nodes": ((MASTER, "master-2g"), (WORKER, "worker-8g"))}
MASTER_MILESTONES = ("kubeadm init done", "token endpoint started", "PITEST report")
WORKER_MILESTONES = ("joined the cluster",)
POD_NETWORK = pod_network_images()


@dataclass
class Story:
    lab: ClusterLab
    master: Guest
    worker: Guest
    archive_requests: list[str]  # what the test archive served while the guests ran


@pytest.fixture(scope="module")
def story(cluster_lab, archive, story_figures):
    """Both powered on together, isolated; watched until the worker is done and the master has reported."""
    lab = cluster_lab
    ports = (lab.build.api_port, lab.build.endpoint_port)
    served_before = archive.log.read_text().splitlines() if archive.log.exists() else []
    with lab.two_guests():
        started = time.monotonic()
        master = lab.boot(MASTER, hostfwd=(lab.build.endpoint_port,), memory_mib=2048, stay_while=lab.hold_url(),
                          only_ports=ports, require_images=1)
        worker = lab.boot(WORKER, only_ports=ports, require_images=1)
        lab.watch_master_and_worker(master, worker, MASTER_MILESTONES, WORKER_MILESTONES)
        lab.api.release()
        master.wait_powered_off(120)
    served = archive.log.read_text().splitlines()[len(served_before):] if archive.log.exists() else []
    story_figures.append({"test": __name__, "guests": 2, "offline": True,
                          "wall_seconds": round(time.monotonic() - started, 1),
                          "worker_qemu_start_to_joined": worker.seen.get("joined the cluster"),
                          "master_qemu_start_to_init_done": master.seen.get("kubeadm init done"),
                          "timeline": {node: guest_timeline.keep(lab, node, lab.base / "timeline")
                                       for node in (MASTER, WORKER)}})
    return Story(lab, master, worker, served)


def test_an_isolated_worker_joins_from_what_its_card_carries(story):
    lab = story.lab
    report = lab.guest_report(1, node=WORKER)

    assert report["reason"] == "done", story.worker.serial[-3000:]
    assert [join["node"] for join in lab.fake.joins()] == [WORKER]
    assert lab.fake.cluster()["nodes"].get(WORKER) == "Ready"
    log = lab.guest_file("/var/lib/pi-image/firstboot.log", WORKER)
    assert "from the card's bundle (no network)" in log
    assert "is not in containerd" not in log and "ImagePull" not in log


def test_the_bundles_packages_are_installed_by_the_real_apt_and_held(story):
    for node in (WORKER, MASTER):
        report = story.lab.guest_report(1, node=node)
        packages = {line.split()[0]: line.split()[1:] for line in report["packages"]}
        assert packages["containerd"][1] == "ii" and packages["runc"][1] == "ii", (node, report["packages"])
        assert packages["kubeadm"] == ["1.31.4-1.1", "hi"], (node, report["packages"])
        assert report["runtime"]["is_active"] == "active", node


def test_every_image_is_in_containerd_before_kubeadm_and_the_sandbox_is_kubeadms_pause(story):
    worker = story.lab.guest_report(1, node=WORKER)["runtime"]
    master = story.lab.guest_report(1, node=MASTER)["runtime"]
    kubeadm = KUBEADM_IMAGES["1.31.4"]

    missing_on_worker = {image for image in kubeadm if "/kube-proxy:" in image or "/pause:" in image} \
        .union(POD_NETWORK) - set(worker["images"])
    assert not missing_on_worker, f"the worker's bundle lacks {sorted(missing_on_worker)}"
    missing_on_master = set(kubeadm).union(POD_NETWORK) - set(master["images"])
    assert not missing_on_master, f"the master's bundle lacks {sorted(missing_on_master)}"
    assert any("registry.k8s.io/pause:3.10" in line for line in worker["sandbox_image"]), worker["sandbox_image"]


def test_the_master_initializes_and_serves_the_worker_without_any_registry(story):
    lab = story.lab
    report = lab.guest_report(1, node=MASTER)

    assert "kubeadm init done" in story.master.seen, story.master.serial[-3000:]
    assert "token endpoint started" in story.master.seen
    assert report["reason"] == "done"
    init = [args for args in lab.guest_calls("kubeadm", MASTER) if args[:1] == ["init"]]
    assert len(init) == 1


def test_no_guest_asked_the_package_archive_for_anything(story):
    assert story.archive_requests == [], story.archive_requests[:5]
