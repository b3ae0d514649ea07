"""A control plane upgrades itself to the next minor in place: the real upgrade program (what pi-image-upgrade.service
runs) on a card that initialized its cluster at 1.31, against stand-ins for apt, kubeadm and kubectl that check the
upgrade's arguments and order as the real tools would."""

import json
import os
import re
import shutil
import signal
import stat
import subprocess

import pytest
from join_fakes.control_plane import MASTER
from join_fakes.harness import REPO, TOKEN_SHAPE, wait_for
from join_fakes.upgrade_lab import PIN_FILE, RECORD, SOURCE_LIST, UpgradeLab, kube_repo_files

from builder import cluster as clusters
from firstboot.protocol import UPGRADE_PHASES

UNIT = "pi-image-upgrade.service"


@pytest.fixture
def lab(tmp_path):
    return UpgradeLab(tmp_path)


def done(record):
    """The phases the record says are done, in the protocol's order (checked to be the order of their times)."""
    phases = [phase for phase in UPGRADE_PHASES if phase in record["phases"]]
    assert sorted(record["phases"]) == sorted(phases)
    times = [record["phases"][phase] for phase in phases]
    assert times == sorted(times), "each phase after the one before"
    return phases


def index(lines, prefix):
    return next(number for number, line in enumerate(lines) if line.startswith(prefix))


def test_apply_moves_the_repository_then_kubeadm_plans_applies_and_the_kubelet_restarts_drained(lab):
    lab.request("1.32", "apply")

    result = lab.run()

    assert result.returncode == 0, result.stderr
    record = lab.record()
    assert (record["state"], record["phase"], record["release"], record["error"], record["fix"]) == \
        ("done", "done", "v1.32.1", None, None)
    assert done(record) == list(UPGRADE_PHASES)
    assert stat.S_IMODE((lab.root / RECORD).stat().st_mode) == 0o600
    assert {lab.file(SOURCE_LIST), lab.file(PIN_FILE)} == set(kube_repo_files("1.32").values()), "the overlay's shape"
    assert "Pin: version 1.32.*" in lab.file(PIN_FILE)
    kubeconfig = str(lab.root / "etc/kubernetes/admin.conf")
    assert lab.sequence() == [
        "apt-mark unhold kubeadm", "dpkg --force-confold --configure -a", "apt-get update",
        "apt-get install -y -o Dpkg::Options::=--force-confold -o DPkg::Lock::Timeout=60 kubeadm",
        "apt-mark hold kubeadm", "kubeadm version -o short",
        "kubeadm upgrade plan v1.32.1", "kubeadm upgrade apply -y v1.32.1",
        "kubectl --kubeconfig {} drain {} --ignore-daemonsets --delete-emptydir-data --timeout=300s".format(
            kubeconfig, MASTER),
        "apt-mark unhold kubelet kubectl", "dpkg --force-confold --configure -a", "apt-get update",
        "apt-get install -y -o Dpkg::Options::=--force-confold -o DPkg::Lock::Timeout=60 kubelet kubectl",
        "apt-mark hold kubelet kubectl", "systemctl daemon-reload", "systemctl restart kubelet",
        "kubectl --kubeconfig {} uncordon {}".format(kubeconfig, MASTER)]
    cluster = lab.fake.cluster()
    assert cluster["control_plane"]["version"] == "v1.32.1"
    assert cluster["kubelet_versions"] == {MASTER: "v1.32.1"} and cluster["cordoned"] == []
    assert "kube-apiserver:v1.32.1" in lab.file("etc/kubernetes/manifests/kube-apiserver.yaml")
    log = lab.file("var/lib/pi-image/upgrade.log")
    assert "upgrading {} to Kubernetes 1.32 (apply)".format(MASTER) in log
    assert "{} runs Kubernetes v1.32.1 now".format(MASTER) in log


def test_a_card_without_kube_repo_moves_the_minor_in_its_own_source_line(tmp_path):
    lab = UpgradeLab(tmp_path, kube_repo=None)
    lab.request("1.32", "apply")

    result = lab.run()

    assert result.returncode == 0, result.stderr
    assert lab.file(SOURCE_LIST) == kube_repo_files("1.32")["etc/apt/sources.list.d/kubernetes.list"]


def test_node_mode_runs_kubeadm_upgrade_node_without_a_plan_once_the_control_plane_runs_the_minor(lab):
    lab.fake.knob("cluster_version", "v1.32.1")  # the first control plane applied 1.32
    lab.request("1.32", "node")

    result = lab.run()

    assert result.returncode == 0, result.stderr
    record = lab.record()
    assert record["state"] == "done" and done(record) == [p for p in UPGRADE_PHASES if p != "plan"]
    sequence = lab.sequence()
    assert "kubeadm upgrade node" in sequence and not [line for line in sequence if "upgrade plan" in line]
    assert not [line for line in sequence if "upgrade apply" in line]
    assert index(sequence, "kubeadm upgrade node") < index(sequence, "kubectl") < \
        index(sequence, "systemctl restart kubelet")
    assert lab.fake.cluster()["kubelet_versions"] == {MASTER: "v1.32.1"}


def test_node_mode_before_the_control_plane_is_upgraded_fails_and_leaves_the_kubelet_alone(lab):
    lab.request("1.32", "node")

    result = lab.run()

    assert result.returncode == 1
    record = lab.record()
    assert (record["state"], record["phase"]) == ("failed", "apply")
    assert "the control plane must be upgraded first" in record["error"]
    assert "pi-image cluster upgrade" in record["fix"]
    sequence = lab.sequence()
    assert not [line for line in sequence if " drain " in line or "restart kubelet" in line]
    assert "kubelet_versions" not in lab.fake.cluster()


def test_a_power_cut_in_the_middle_resumes_from_the_recorded_phase(lab):
    lab.fake.knob("upgrade_sleep", 30)
    lab.request("1.32", "apply")
    process = lab.start()
    wait_for(lambda: lab.record()["phase"] == "apply" and lab.fake.calls("kubeadm", "upgrade", "apply"), timeout=30)

    os.killpg(process.pid, signal.SIGKILL)
    process.communicate(timeout=10)
    cut = lab.record()
    lab.fake.knob("upgrade_sleep", 0)
    resumed = lab.run()

    assert (cut["state"], cut["phase"], done(cut)) == ("running", "apply", ["requested", "repository", "kubeadm",
                                                                          "plan"])
    assert resumed.returncode == 0, resumed.stderr
    assert lab.record()["state"] == "done" and done(lab.record()) == list(UPGRADE_PHASES)
    assert len(lab.fake.calls("apt-get", "install")) == 2, "kubeadm once, the kubelet once: nothing done twice"
    assert len(lab.fake.calls("kubeadm", "upgrade", "plan")) == 1
    assert len(lab.fake.calls("kubeadm", "upgrade", "apply")) == 2, "the phase under way is done again"
    assert lab.fake.cluster()["control_plane"]["version"] == "v1.32.1"
    again = lab.run()
    assert again.returncode == 0 and "no upgrade to run (it is done)" in again.stderr


def test_a_drain_blocked_by_a_disruption_budget_names_the_node_and_the_fix_and_leaves_it_uncordoned(lab):
    lab.fake.knob("drain_blocked", "web-0")
    lab.request("1.32", "apply")

    result = lab.run()

    assert result.returncode == 1
    record = lab.record()
    assert (record["state"], record["phase"]) == ("failed", "drain")
    assert "cannot drain {}".format(MASTER) in record["error"] and "PodDisruptionBudget" in record["error"]
    assert record["fix"].startswith("relax the PodDisruptionBudget or scale the workload up, then run "
                                    "`pi-image cluster upgrade")
    assert "drain" not in record["phases"], "asked again, the upgrade drains again"
    assert lab.fake.cluster()["cordoned"] == []
    assert lab.sequence()[-1].startswith("kubectl --kubeconfig") and lab.sequence()[-1].endswith("uncordon " + MASTER)
    assert not lab.fake.calls("systemctl", "restart", "kubelet")
    assert "cannot drain {}".format(MASTER) in lab.file("var/lib/pi-image/upgrade.log")

    lab.fake.knob("drain_blocked", "")  # the budget relaxed; asked again, as the endpoint records it
    record.update(state="running", error=None, fix=None)
    (lab.root / RECORD).write_text(json.dumps(record))
    again = lab.run()

    assert again.returncode == 0, again.stderr
    assert lab.record()["state"] == "done"
    assert len(lab.fake.calls("kubeadm", "upgrade", "apply")) == 1, "the applied phases stay done"


def test_no_secret_reaches_the_record_or_the_log(lab):
    lab.request("1.32", "apply")
    result = lab.run()
    assert result.returncode == 0, result.stderr
    cluster_dir = lab.control_plane.cluster.directory
    secrets = [(cluster_dir / "secrets" / "enrollment.key").read_text().strip(),
               clusters.load_cluster(cluster_dir).admin_credential()]
    config = json.loads(lab.file("etc/pi-image/node.json"))
    secrets += [config[key] for key in ("credential",) if config.get(key)]

    for text in (lab.file(RECORD), lab.file("var/lib/pi-image/upgrade.log"), result.stderr):
        assert not TOKEN_SHAPE.search(text.encode())
        assert not [secret for secret in secrets if secret in text]
        assert not re.search(r"[0-9a-f]{32}", text)


def test_the_stand_in_kubeadm_refuses_a_version_newer_than_itself_or_two_minors_up(lab):
    def kubeadm(*args):
        return subprocess.run(["kubeadm"] + list(args), env=dict(lab.fake.env, FAKE_ROOT=str(lab.root)),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)

    older = kubeadm("upgrade", "apply", "-y", "v1.32.1")
    lab.fake.knob("kubeadm_version", "v1.33.2")
    two_minors = kubeadm("upgrade", "apply", "-y", "v1.33.2")
    plan = kubeadm("upgrade", "plan", "v1.34.0")
    unasked = kubeadm("upgrade", "apply", "v1.32.0")

    assert older.returncode == 1
    assert 'Specified version to upgrade to "v1.32.1" is higher than the kubeadm version "v1.31.4"' in older.stderr
    assert two_minors.returncode == 1 and "kubeadm can upgrade only 1 minor version at a time" in two_minors.stderr
    assert plan.returncode == 1 and "is higher than the kubeadm version" in plan.stderr
    assert unasked.returncode == 1 and "without -y" in unasked.stderr
    assert lab.fake.cluster()["control_plane"]["version"] == "v1.31.4"


def test_the_unit_is_a_oneshot_systemd_accepts_and_enables_for_every_boot(tmp_path):
    tree = tmp_path / "master"
    (tree / "etc/systemd/system").mkdir(parents=True)
    shutil.copy2(str(REPO / "firstboot/units" / UNIT), str(tree / "etc/systemd/system"))
    shutil.copytree(str(REPO / "firstboot"), str(tree / "usr/lib/pi-image/firstboot"),
                    ignore=shutil.ignore_patterns("__pycache__", "units"))
    enabled = subprocess.run(["systemctl", "--root={}".format(tree), "enable", UNIT], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, universal_newlines=True)
    verify = subprocess.run(["systemd-analyze", "verify", "--man=no", str(tree / "etc/systemd/system" / UNIT)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True,
                            env={"PATH": os.environ["PATH"], "HOME": "/", "SYSTEMD_UNIT_PATH": "{}:{}".format(
                                tree / "etc/systemd/system", "/usr/lib/systemd/system")})
    text = (REPO / "firstboot/units" / UNIT).read_text()

    assert enabled.returncode == 0, enabled.stdout
    assert (tree / "etc/systemd/system/multi-user.target.wants" / UNIT).is_symlink()
    assert verify.returncode == 0 and UNIT not in verify.stdout, verify.stdout
    for line in ("Type=oneshot", "ConditionPathExists=/var/lib/pi-image/upgrade.json",
                 "ExecStart=/usr/bin/python3 -m firstboot.upgrade --root /", "WantedBy=multi-user.target"):
        assert line in text.splitlines()
