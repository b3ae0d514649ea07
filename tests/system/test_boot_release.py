"""The release path (`kube_install: release`): a node whose distribution has no package of the cluster's exact
Kubernetes (the seed's Arch laptop) gets kubeadm, kubelet and kubectl of that exact patch from the upstream release
location, each checked against the SHA-256 its card carries, and the kubelet unit and kubeadm drop-in as
kubernetes/release ships them.

The downloads are stand-ins at dl.k8s.io's real paths and names, served by the test archive on 127.0.0.1
(apt_repo.release_tree: the recording stand-in with its release inside, crictl and the CNI plugins as small scripts,
each with the .sha256 its publisher puts beside it); the unit, the drop-in, systemd, apt installing the runtime and the
kubelet's dependencies from the signed archive, and containerd are real. Three builds from the stock base (no runtime,
no kube packages): the network path, a release location whose kubeadm was changed after its .sha256 was published,
and `--offline`, whose card carries the binaries in its bundle and whose guest reaches nothing but the cluster.
"""

import hashlib
import json

import guest_timeline
import pytest
from lab import BOOT_TIMEOUT, NODE

pytestmark = pytest.mark.system
BINARIES = ("kubeadm", "kubelet", "kubectl", "crictl")


def served(archive, path: str) -> str:
    """The SHA-256 of a file the test archive serves."""
    return hashlib.sha256((archive.root / path.lstrip("/")).read_bytes()).hexdigest()


def archive_requests(archive, before: int) -> list[str]:
    lines = archive.log.read_text().splitlines() if archive.log.exists() else []
    return lines[before:]


def archive_lines(archive) -> int:
    return len(archive.log.read_text().splitlines()) if archive.log.exists() else 0


def test_a_worker_installs_the_exact_release_binaries_and_joins(lab_of, archive):
    lab = lab_of(release="release")
    before = archive_lines(archive)
    lab.endpoint.start()
    guest = lab.boot()
    guest.wait_powered_off(BOOT_TIMEOUT, watch=("joined the cluster",))
    report = lab.guest_report(1)

    assert report["reason"] == "done", guest.serial[-3000:]
    [join] = lab.fake.joins()
    assert join["node"] == NODE and join["config"]["apiVersion"] == "kubeadm.k8s.io/v1beta4"
    assert lab.fake.cluster()["nodes"] == {NODE: "Ready"}
    node_json = json.loads(lab.guest_file("/etc/pi-image/node.json"))
    assert node_json["kube_install"] == "release" and node_json["kubernetes_release"] == "1.31.4"
    files = report["release_files"]
    for tool in ("kubeadm", "kubelet", "kubectl"):
        assert files[f"/usr/local/bin/{tool}"] == served(archive, f"release/v1.31.4/bin/linux/amd64/{tool}"), tool
        assert files[f"/usr/local/bin/{tool}"] == node_json["release"]["sha256"][tool]
    assert "/usr/local/bin/crictl" in files
    assert {"/opt/cni/bin/bridge", "/opt/cni/bin/host-local", "/opt/cni/bin/loopback"} <= set(files)
    unit = report["kubelet_unit"]
    assert unit["FragmentPath"] == "/etc/systemd/system/kubelet.service", unit
    assert "/etc/systemd/system/kubelet.service.d/10-kubeadm.conf" in unit["DropInPaths"], unit
    assert unit["UnitFileState"] == "enabled"
    drop_in = lab.guest_file("/etc/systemd/system/kubelet.service.d/10-kubeadm.conf")
    assert "ExecStart=/usr/local/bin/kubelet $KUBELET_KUBECONFIG_ARGS" in drop_in
    packages = {line.split()[0]: line.split()[1:] for line in report["packages"]}
    assert packages["containerd"][-1] == "ii" and "kubeadm" not in packages, report["packages"]
    assert report["runtime"]["is_active"] == "active"
    requests = archive_requests(archive, before)
    assert any("GET /release/v1.31.4/bin/linux/amd64/kubeadm " in line for line in requests), requests[:20]
    assert not any("/kube/" in line for line in requests), "the release path never asks the kube repository"
    assert [args[0] for args in lab.guest_calls("kubeadm")] == ["version", "join"]


def test_a_binary_that_is_not_what_its_sha256_says_is_refused(lab_of):
    lab = lab_of(release="release-tampered")
    lab.endpoint.start()
    guest = lab.boot(stop_on="but the card expects")
    guest.wait_powered_off(BOOT_TIMEOUT)
    report = lab.guest_report(1)

    assert report["reason"] == "stop-on", guest.serial[-3000:]
    log = lab.guest_file("/var/lib/pi-image/firstboot.log")
    line = next(line for line in log.splitlines() if "but the card expects" in line)
    assert "/release-tampered/v1.31.4/bin/linux/amd64/kubeadm has SHA-256" in line, line
    assert "rebuild the card" in line, line
    assert "/usr/local/bin/kubeadm" not in report["release_files"], "a refused binary is never put in place"
    assert lab.fake.joins() == [] and lab.tokens_issued() == []


def test_an_offline_release_card_joins_with_nothing_but_the_cluster_reachable(lab_of, archive, story_figures):
    lab = lab_of(release="release", offline=True)
    before = archive_lines(archive)
    lab.endpoint.start()
    guest = lab.boot(only_ports=(lab.build.api_port, lab.build.endpoint_port))
    guest.wait_powered_off(BOOT_TIMEOUT, watch=("joined the cluster",))
    report = lab.guest_report(1)
    story_figures.append({"test": "offline release worker",
                          "qemu_start_to_joined": guest.seen.get("joined the cluster"),
                          "timeline": guest_timeline.keep(lab, NODE, lab.base / "timeline")})

    assert report["reason"] == "done", guest.serial[-3000:]
    assert lab.fake.cluster()["nodes"] == {NODE: "Ready"}
    files = report["release_files"]
    assert files["/usr/local/bin/kubeadm"] == served(archive, "release/v1.31.4/bin/linux/amd64/kubeadm")
    log = lab.guest_file("/var/lib/pi-image/firstboot.log")
    assert "from the card's bundle (no network)" in log
    assert archive_requests(archive, before) == [], "an isolated guest asked the archive for something"
