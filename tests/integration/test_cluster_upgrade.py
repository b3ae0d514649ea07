"""An operator moves a running cluster from Kubernetes 1.31 to 1.32 from the workstation: `pi-image cluster upgrade`
checks the skew policy before anything changes, pushes the upgrade to the first control plane (the next one when it
cannot be reached), then to each other control plane in turn, follows every phase, and records the new version in
cluster.yaml once the control plane runs it; `pi-image status` shows the versions and the phase, `cluster verify`
fails on a node outside the skew policy, and new cards carry the repository template an upgrade moves.

The masters' endpoints are the stand-in of upgrade_stand_in.py (the protocol of /work/upgrade-contract.md).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from join_fakes.control_plane import MASTER
from join_fakes.upgrade_lab import UpgradeLab
from readback import KUBE_KEY, filesystems, succeeded
from upgrade_stand_in import StandInCluster, StandInMaster

from builder import cluster as clusters
from builder.cli import main as pi_image
from builder.cluster import upgrade as upgrades
from builder.cluster.verify import verify

VIP = "192.168.6.10"
MASTERS = {"pi-master1": "192.168.6.11", "pi-master2": "192.168.6.12", "pi-master3": "192.168.6.13"}


def cli(*args):
    return CliRunner().invoke(pi_image, [str(arg) for arg in args])


def one_line(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1 and "Traceback" not in result.output, result.output
    assert lines[0].startswith("pi-image: error: ")
    return lines[0]


def settings(directory: Path) -> dict:
    return yaml.safe_load((directory / "cluster.yaml").read_text())


@pytest.fixture(autouse=True)
def quick(monkeypatch):
    monkeypatch.setattr(upgrades, "POLL_SECONDS", 0)


@pytest.fixture
def lab(tmp_path) -> Path:
    """One master (built) and a worker (built) at 1.31, whose cards recorded the patch 1.31.4."""
    cluster = clusters.init_cluster(tmp_path / "lab", "192.168.6.11:6443", "192.168.6.11:8443", "1.31",
                                    "192.168.6.0/24", gateway="192.168.6.1")
    clusters.add_node(cluster, "pi-master1", "master-2g", None, "control-plane", address="192.168.6.11")
    clusters.add_node(cluster, "pi-worker1", "worker-8g", None, "worker", address="192.168.6.15")
    for name in ("pi-master1", "pi-worker1"):
        clusters.record_generation(cluster.directory, name, 1)
    clusters.record_release(cluster.directory, "1.31.4")
    return cluster.directory


@pytest.fixture
def one_master(lab, monkeypatch) -> StandInCluster:
    return StandInCluster({"192.168.6.11:8443": StandInMaster("pi-master1")},
                          workers={"pi-worker1": "v1.31.4"}).install(monkeypatch)


@pytest.fixture
def several(tmp_path, monkeypatch) -> tuple[Path, StandInCluster]:
    """Three control planes behind a virtual IP and a worker, all built."""
    cluster = clusters.init_cluster(tmp_path / "ha", None, None, "1.31", "192.168.6.0/24", gateway="192.168.6.1",
                                    vip=VIP)
    for name, address in MASTERS.items():
        clusters.add_node(cluster, name, "master-2g", None, "control-plane", address=address)
    clusters.add_node(cluster, "pi-worker1", "worker-8g", None, "worker")
    for name in [*MASTERS, "pi-worker1"]:
        clusters.record_generation(cluster.directory, name, 1)
    masters = {name: StandInMaster(name) for name in MASTERS}
    world = StandInCluster({f"{address}:8443": masters[name] for name, address in MASTERS.items()},
                           workers={"pi-worker1": "v1.31.4"})
    world.masters[f"{VIP}:8443"] = masters["pi-master1"]
    return cluster.directory, world.install(monkeypatch)


# --- the story ------------------------------------------------------------------------------------------------------

def test_upgrade_moves_the_master_in_place_shows_each_phase_and_records_the_new_version(lab, one_master):
    result = cli("cluster", "upgrade", lab, "--to", "1.32")

    assert result.exit_code == 0, result.output
    assert one_master.pushes == [("192.168.6.11:8443", {"to": "1.32", "mode": "apply"})]
    out = result.stdout
    assert f"upgrading {lab} from Kubernetes 1.31 to 1.32:" in out
    assert "pi-master1 (control-plane, kubelet v1.31.4): upgraded in place to 1.32 (kubeadm upgrade apply" in out
    assert ("pi-worker1 (worker, kubelet v1.31.4): stays at 1.31 (a kubelet may trail the API server by three "
            f"minors); to move it, reflash it once the control plane runs 1.32: `pi-image build --cluster {lab} "
            "--node pi-worker1`") in out
    shown = [line.split(", ")[1].split(" (")[0] for line in out.splitlines() if "upgrade to 1.32, " in line]
    assert shown == ["repository", "kubeadm", "plan", "apply", "drain", "kubelet", "uncordon", "done"]
    assert "pi-master1: runs 1.32 (v1.32.1)" in out
    assert f"{lab / 'cluster.yaml'} now says kubernetes_version 1.32" in out
    assert out.splitlines()[-1] == (f"next: reflash the workers to move them to 1.32 (`pi-image build --cluster {lab} "
                                    f"--node NAME`: pi-worker1), then `pi-image cluster verify {lab}`")
    written = settings(lab)
    assert written["kubernetes_version"] == "1.32"
    assert "upgrade_to" not in written and "kubernetes_release" not in written


def test_no_wait_records_upgrade_to_and_status_finishes_it_when_the_master_runs_the_new_minor(lab, one_master):
    started = cli("cluster", "upgrade", lab, "--to", "1.32", "--no-wait")

    assert started.exit_code == 0, started.output
    assert "pi-master1: upgrade to 1.32 started (apply, its endpoint 192.168.6.11:8443)" in started.stdout
    assert started.stdout.splitlines()[-1].startswith(f"next: pi-image status --cluster {lab} --watch")
    assert (settings(lab)["kubernetes_version"], settings(lab)["upgrade_to"]) == ("1.31", "1.32")

    during = cli("status", "--cluster", lab)
    assert during.exit_code == 0, during.output
    assert "Kubernetes 1.31 (cluster.yaml), API server v1.31.4, upgrading to 1.32" in during.stdout
    assert "upgrade of pi-master1 to 1.32 (apply): running, phase repository, release v1.32.1" in during.stdout
    header = next(line for line in during.stdout.splitlines() if line.startswith("NODE"))
    assert header.split() == ["NODE", "ROLE", "PHASE", "ADDRESS", "ARCH", "OS", "CARD", "KUBELET", "UPDATED"]
    assert settings(lab)["upgrade_to"] == "1.32", "not done yet"

    for _ in range(8):
        after = cli("status", "--cluster", lab, "--json")
    rows = {row["node"]: row for row in json.loads(after.stdout)}
    assert (rows["pi-master1"]["kubelet_version"], rows["pi-worker1"]["kubelet_version"]) == ("v1.32.1", "v1.31.4")
    assert settings(lab)["kubernetes_version"] == "1.32" and "upgrade_to" not in settings(lab)
    shown = cli("status", "--cluster", lab)
    assert "Kubernetes 1.32 (cluster.yaml), API server v1.32.1" in shown.stdout
    assert "upgrade of pi-master1 to 1.32 (apply): done, phase done" in shown.stdout


def test_json_is_one_document_of_what_was_done(lab, one_master):
    result = cli("cluster", "upgrade", lab, "--to", "1.32", "--json")

    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert (document["from"], document["to"], document["state"]) == ("1.31", "1.32", "done")
    [master] = document["control_planes"]
    assert (master["node"], master["mode"], master["state"], master["release"]) == ("pi-master1", "apply", "done",
                                                                                    "v1.32.1")
    assert list(master["phases"])[-1] == "done"
    assert [row["node"] for row in document["nodes"]] == ["pi-master1", "pi-worker1"]


def test_several_control_planes_get_apply_then_node_in_turn(several):
    directory, world = several
    result = cli("cluster", "upgrade", directory, "--to", "1.32")

    assert result.exit_code == 0, result.output
    assert world.pushes == [("192.168.6.11:8443", {"to": "1.32", "mode": "apply"}),
                            ("192.168.6.12:8443", {"to": "1.32", "mode": "node"}),
                            ("192.168.6.13:8443", {"to": "1.32", "mode": "node"})]
    assert [line.split(":")[0] for line in result.stdout.splitlines() if ": runs 1.32" in line] == list(MASTERS)
    assert "pi-master2 (control-plane, kubelet v1.31.4): upgraded in place to 1.32 after pi-master1" in result.stdout
    assert settings(directory)["kubernetes_version"] == "1.32"


def test_apply_fails_over_to_the_next_control_plane_when_the_first_cannot_be_reached(several):
    directory, world = several
    world.masters["192.168.6.11:8443"].up = False
    world.masters[f"{VIP}:8443"] = world.masters["192.168.6.12:8443"]  # kube-vip moved
    result = cli("cluster", "upgrade", directory, "--to", "1.32", "--no-wait")

    assert result.exit_code == 0, result.output
    assert world.pushes == [("192.168.6.12:8443", {"to": "1.32", "mode": "apply"})]
    assert "pi-master2: upgrade to 1.32 started (apply, its endpoint 192.168.6.12:8443)" in result.stdout


def test_a_failed_phase_is_one_line_with_its_fix_and_the_same_command_resumes(lab, one_master):
    pdb = ("drain of pi-master1 refused: Cannot evict pod as it would violate the pod's disruption budget",
           "relax the PodDisruptionBudget or scale the workload, then run `pi-image cluster upgrade` again")
    one_master.masters["192.168.6.11:8443"].fail_at = ("drain", *pdb)
    failed = cli("cluster", "upgrade", lab, "--to", "1.32")

    line = one_line(failed)
    assert "pi-master1: the upgrade to 1.32 failed in phase drain: drain of pi-master1 refused" in line
    assert "relax the PodDisruptionBudget" in line and f"`pi-image cluster upgrade {lab}` again (it resumes)" in line
    assert settings(lab)["upgrade_to"] == "1.32" and settings(lab)["kubernetes_version"] == "1.31"

    one_master.masters["192.168.6.11:8443"].fail_at = None
    resumed = cli("cluster", "upgrade", lab)
    assert resumed.exit_code == 0, resumed.output
    assert resumed.stdout.startswith(f"resuming the upgrade {lab} from Kubernetes 1.31 to 1.32:")
    assert settings(lab)["kubernetes_version"] == "1.32"


# --- refused in one line, nothing changed ----------------------------------------------------------------------------

@pytest.mark.parametrize("to,words", [
    ("1.30", "older than the cluster's 1.31: Kubernetes cannot be downgraded"),
    ("1.31", "the cluster runs 1.31 already: nothing to upgrade (the next minor is 1.32)"),
    ("1.33", "1.31 to 1.33 skips a minor: the control plane moves one minor at a time"),
    ("1.99", "Kubernetes 1.99 is not a minor pi-image knows (1.28 to 1.35"),
    ("latest", "'latest' is not a Kubernetes minor version"),
])
def test_a_step_the_skew_policy_does_not_allow_is_refused(lab, one_master, to, words):
    before = (lab / "cluster.yaml").read_bytes()
    line = one_line(cli("cluster", "upgrade", lab, "--to", to))

    assert f"--to {to}" in line and words in line
    assert (lab / "cluster.yaml").read_bytes() == before and one_master.pushes == []


def test_a_node_that_would_trail_by_four_minors_is_refused_naming_it(lab, one_master):
    one_master.workers["pi-worker1"] = "v1.28.9"
    line = one_line(cli("cluster", "upgrade", lab, "--to", "1.32"))

    assert "node pi-worker1: under Kubernetes 1.32, kubelet v1.28.9 trails the API server's 1.32 by 4 minors" in line
    assert f"`pi-image build --cluster {lab} --node pi-worker1`" in line and one_master.pushes == []


def test_an_unreachable_master_is_refused_naming_every_endpoint_tried(several):
    directory, world = several
    for master in world.masters.values():
        master.up = False
    line = one_line(cli("cluster", "upgrade", directory, "--to", "1.32"))

    assert all(f"{address}:8443 (Connection refused)" in line for address in MASTERS.values())
    assert "upgrade_to" not in settings(directory)


def test_another_upgrade_recorded_or_running_is_refused(lab, one_master):
    clusters.record_upgrade(lab, "1.32")
    recorded = one_line(cli("cluster", "upgrade", lab, "--to", "1.33"))
    assert "the upgrade to 1.32 recorded in" in recorded and f"`pi-image cluster upgrade {lab}`" in recorded

    (lab / "cluster.yaml").write_text((lab / "cluster.yaml").read_text().replace("upgrade_to: '1.32'\n", ""))
    one_master.masters["192.168.6.11:8443"].record = {"node": "pi-master1", "to": "1.33", "state": "running",
                                                      "phase": "kubeadm", "mode": "apply", "phases": {}}
    running = one_line(cli("cluster", "upgrade", lab, "--to", "1.32"))
    assert "an upgrade to 1.33 is running on pi-master1 (phase plan" in running and "--watch" in running


def test_the_endpoints_own_refusal_is_its_line(lab, one_master):
    one_master.refusal = "kubectl cannot tell the cluster's version: check the API server"
    line = one_line(cli("cluster", "upgrade", lab, "--to", "1.32"))

    assert "refused: kubectl cannot tell the cluster's version" in line and "upgrade_to" not in settings(lab)


def test_an_offline_or_release_path_cluster_is_not_yet(lab, one_master, tmp_path):
    (lab / "cluster.yaml").write_text((lab / "cluster.yaml").read_text() + "offline: true\n")
    assert "not yet:" in one_line(cli("cluster", "upgrade", lab, "--to", "1.32"))

    (lab / "cluster.yaml").write_text((lab / "cluster.yaml").read_text().replace("offline: true\n", ""))
    (tmp_path / "rel.yaml").write_text("extends: worker-8g\nkube_install: release\n")
    clusters.add_node(clusters.load_cluster(lab), "pi-worker2", str(tmp_path / "rel.yaml"), None, "worker")
    line = one_line(cli("cluster", "upgrade", lab, "--to", "1.32"))
    assert "not yet: node pi-worker2" in line and "kube_install: release" in line and one_master.pushes == []


def test_cluster_set_kubernetes_version_points_at_cluster_upgrade(lab):
    line = one_line(cli("cluster", "set", lab, "kubernetes_version=1.32"))
    assert f"`pi-image cluster upgrade {lab} --to 1.NN`" in line
    assert "cannot be set" in one_line(cli("cluster", "set", lab, "upgrade_to=1.32"))


def test_help_has_examples():
    result = cli("cluster", "upgrade", "--help")
    assert "pi-image cluster upgrade lab --to 1.32" in result.output and "--no-wait" in result.output


def test_against_the_real_endpoint_and_upgrade_program_the_master_moves_and_cluster_yaml_follows(tmp_path):
    world = UpgradeLab(tmp_path)
    world.start_endpoint()
    try:
        directory = world.control_plane.cluster.directory
        address = f"127.0.0.1:{world.endpoint.server_address[1]}"
        started = cli("cluster", "upgrade", directory, "--to", "1.32", "--no-wait", "--endpoint", address)
        assert started.exit_code == 0, started.output
        assert f"{MASTER}: upgrade to 1.32 started (apply, its endpoint {address})" in started.stdout
        assert world.record()["state"] == "running" and settings(directory)["upgrade_to"] == "1.32"

        assert world.run().returncode == 0  # what pi-image-upgrade.service runs
        finished = cli("cluster", "upgrade", directory, "--endpoint", address)
        assert finished.exit_code == 0, finished.output
        assert f"{MASTER}: runs 1.32" in finished.stdout
        assert settings(directory)["kubernetes_version"] == "1.32" and "upgrade_to" not in settings(directory)
    finally:
        world.stop()


# --- verify, and the cards built meanwhile ---------------------------------------------------------------------------

def node_object(name, kubelet, ip):
    return {"metadata": {"name": name}, "status": {
        "conditions": [{"type": "Ready", "status": "True"}], "addresses": [{"type": "InternalIP", "address": ip}],
        "nodeInfo": {"kubeletVersion": kubelet, "architecture": "arm64", "operatingSystem": "linux",
                     "containerRuntimeVersion": "containerd://2.2.1"}}}


def test_verify_accepts_an_upgraded_master_and_a_trailing_worker_and_fails_outside_the_policy(lab):
    clusters.record_upgrade(lab, "1.32")
    cluster = clusters.load_cluster(lab)
    rows = {row["node"]: row for row in verify(cluster, [node_object("pi-master1", "v1.32.1", "192.168.6.11"),
                                                         node_object("pi-worker1", "v1.31.4", "192.168.6.15")])}
    assert [rows[name]["result"] for name in rows] == ["ok", "ok"]
    assert "upgraded to 1.32 already" in rows["pi-master1"]["note"] and rows["pi-worker1"]["note"] is None

    clusters.finish_upgrade(lab, "1.32")
    rows = {row["node"]: row for row in verify(clusters.load_cluster(lab), [
        node_object("pi-master1", "v1.33.0", "192.168.6.11"), node_object("pi-worker1", "v1.31.4", "192.168.6.15")])}
    assert rows["pi-master1"]["result"] == "mismatch"
    message = rows["pi-master1"]["problems"][0]["message"]
    assert message.startswith("kubelet v1.33.0 is newer than the API server's 1.32")
    assert rows["pi-worker1"]["result"] == "ok" and "trails the cluster's 1.32" in rows["pi-worker1"]["note"]


def test_a_card_built_during_an_upgrade_is_of_the_old_minor_says_why_and_carries_the_repository_template(
        cli_process, lab, base, tmp_path):
    clusters.record_upgrade(lab, "1.32")
    image = tmp_path / "w.img"
    built = succeeded(cli_process("build", "--cluster", lab, "--node", "pi-worker1", "--base", base, "-o", image,
                                  "--kube-key", KUBE_KEY))

    assert "is upgrading to Kubernetes 1.32: this card is made at 1.31" in built.stderr
    node = json.loads(filesystems(image)["root"].text("/etc/pi-image/node.json"))
    assert node["kubernetes_version"] == "1.31"
    assert node["kube_repo"] == "https://pkgs.k8s.io/core:/stable:/v{version}/deb/"


@pytest.fixture
def cli_process(cli):
    """The real CLI as a process (the integration conftest's `cli`)."""
    return cli
