"""The operator asks a control plane's token endpoint to upgrade it (POST /v1/admin/upgrade): the real endpoint,
serving from the card's copy of the cluster directory, decides by Kubernetes' version-skew policy, records, starts
the upgrade unit and shows the upgrade in its status; the real upgrade program then does it against the stand-ins."""

import json
import logging
import re
import stat

import pytest
from join_fakes.control_plane import MASTER
from join_fakes.harness import TOKEN_SHAPE
from join_fakes.upgrade_lab import RECORD, UpgradeLab

from builder import cluster as clusters

START = ["start", "--no-block", "pi-image-upgrade.service"]


@pytest.fixture
def lab(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    world = UpgradeLab(tmp_path)
    world.start_endpoint()
    yield world
    world.stop()


def audit_lines(caplog):
    return [record.getMessage() for record in caplog.records if record.name == "pi-image.audit"]


def status(lab):
    answer = lab.admin().admin_status()
    assert answer.status == 200, answer.payload
    return answer.payload


def test_apply_is_recorded_the_unit_started_and_the_status_follows_the_upgrade_to_its_end(lab, caplog):
    code, answer = lab.ask("1.32", "apply")
    during = status(lab)

    assert (code, answer) == (202, {"state": "started", "node": MASTER, "from": "v1.31.4", "to": "1.32"})
    assert lab.fake.calls("systemctl", *START) == [START]
    record = lab.record()
    assert (record["node"], record["to"], record["mode"], record["from"], record["state"], record["phase"]) == \
        (MASTER, "1.32", "apply", "v1.31.4", "running", "requested")
    assert stat.S_IMODE((lab.root / RECORD).stat().st_mode) == 0o600
    assert any("decision=admin-upgrade node={}".format(MASTER) in line and "to 1.32 (apply) from v1.31.4" in line
               for line in audit_lines(caplog))
    assert during["cluster_version"] == "v1.31.4" and during["upgrade"]["state"] == "running"
    assert [(row["name"], row["kubelet_version"]) for row in during["nodes"]] == [(MASTER, "v1.31.4")]

    assert lab.run().returncode == 0  # what the unit runs
    lab.stop()
    lab.start_endpoint()
    after = status(lab)
    again = lab.ask("1.32", "apply")

    assert after["cluster_version"] == "v1.32.1"
    assert (after["upgrade"]["state"], after["upgrade"]["phase"], after["upgrade"]["release"]) == \
        ("done", "done", "v1.32.1")
    assert [(row["name"], row["kubelet_version"]) for row in after["nodes"]] == [(MASTER, "v1.32.1")]
    assert again == (200, {"state": "done", "node": MASTER, "from": "v1.31.4", "to": "1.32"})
    assert len(lab.fake.calls("systemctl", *START)) == 1


@pytest.mark.parametrize("to, words", [
    ("1.33", "the cluster runs v1.31.4: 1.33 is 2 minors ahead and Kubernetes upgrades one minor at a time: upgrade "
             "to 1.32 first"),
    ("1.30", "the cluster runs v1.31.4: Kubernetes cannot be downgraded to 1.30; keep 1.31"),
    ("1.31", "the cluster already runs v1.31.4 (Kubernetes 1.31): nothing to upgrade"),
    ("1.32.1", "unknown Kubernetes version '1.32.1': give a minor such as 1.32"),
    ("latest", "unknown Kubernetes version 'latest': give a minor such as 1.32"),
])
def test_apply_of_anything_but_the_next_minor_is_refused_and_audited(lab, caplog, to, words):
    code, answer = lab.ask(to, "apply")

    assert (code, answer) == (409, {"error": words})
    assert not (lab.root / RECORD).exists() and not lab.fake.calls("systemctl", *START)
    assert any(line.startswith("decision=refused-admin-upgrade") and words in line for line in audit_lines(caplog))


def test_an_upgrade_while_one_is_running_is_refused(lab, caplog):
    first = lab.ask("1.32", "apply")
    second = lab.ask("1.32", "apply")

    assert first[0] == 202
    assert second == (409, {"error": "an upgrade of {} to 1.32 is running (phase requested): wait for it to end "
                                     "(`pi-image status`)".format(MASTER)})
    assert len(lab.fake.calls("systemctl", *START)) == 1
    assert any("refused-admin-upgrade" in line and "is running" in line for line in audit_lines(caplog))


def test_node_mode_before_the_first_control_plane_is_upgraded_is_refused(lab, caplog):
    code, answer = lab.ask("1.32", "node")

    assert code == 409
    assert answer["error"] == ("the API server runs v1.31.4, not 1.32 yet: upgrade the first control plane first "
                               "(`pi-image cluster upgrade DIR --to 1.32`)")
    assert not (lab.root / RECORD).exists()
    assert any("refused-admin-upgrade" in line and "first control plane first" in line for line in audit_lines(caplog))


def test_node_mode_once_the_api_server_runs_the_minor_starts_the_upgrade(lab):
    lab.fake.knob("cluster_version", "v1.32.1")

    code, answer = lab.ask("1.32", "node")

    assert (code, answer) == (202, {"state": "started", "node": MASTER, "from": "v1.31.4", "to": "1.32"})
    assert lab.run().returncode == 0 and lab.record()["state"] == "done"


def test_a_failed_upgrade_asked_again_resumes_where_it_failed(lab):
    lab.fake.knob("drain_blocked", "web-0")
    assert lab.ask("1.32", "apply")[0] == 202
    assert lab.run().returncode == 1
    failed = status(lab)["upgrade"]
    lab.fake.knob("drain_blocked", "")

    code, answer = lab.ask("1.32", "apply")  # the API server runs 1.32 already: the same upgrade, resumed

    assert (failed["state"], failed["phase"]) == ("failed", "drain") and "PodDisruptionBudget" in failed["fix"]
    assert (code, answer["state"], answer["from"]) == (202, "started", "v1.31.4")
    assert lab.record()["error"] is None and "apply" in lab.record()["phases"]
    assert lab.run().returncode == 0 and lab.record()["state"] == "done"
    assert len(lab.fake.calls("kubeadm", "upgrade", "apply")) == 1


def test_a_cluster_version_kubectl_cannot_tell_is_503(lab):
    lab.fake.knob("cluster_version", "")

    code, answer = lab.ask("1.32", "apply")

    assert code == 503 and "the cluster could not be reached" in answer["error"]
    assert not (lab.root / RECORD).exists()


def test_the_status_shows_the_upgrade_without_a_secret(lab):
    lab.ask("1.32", "apply")
    lab.run()
    cluster_dir = lab.control_plane.cluster.directory
    secrets = [(cluster_dir / "secrets" / "enrollment.key").read_text().strip(),
               clusters.load_cluster(cluster_dir).admin_credential()]

    answer = status(lab)
    text = json.dumps(answer)

    assert set(answer["upgrade"]) == {"node", "to", "mode", "from", "release", "state", "phase", "phases", "error",
                                      "fix", "requested_at", "updated_at"}
    assert not TOKEN_SHAPE.search(text.encode()) and not [secret for secret in secrets if secret in text]
    assert not re.search(r"[0-9a-f]{32}", text)
