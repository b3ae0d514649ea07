"""Several masters serve joins with one truth (issue 29): two token endpoints, each on a master of its own, share one
(stand-in) cluster, whose API holds the nodes' state, the per-node Leases and etcd.

Each endpoint is the real TokenEndpoint, in this process, on its own state directory (its card), with kubectl and
kubeadm the recording stand-ins (join_fakes/fake_tool.py, fake_objects.py) and a clock the test moves.
"""

import http.client
import json
import logging
import ssl
import tempfile
import threading
from pathlib import Path

import pytest
from join_fakes.harness import FakeCluster, make_ca, new_cluster

from builder import cluster as clusters
from firstboot import protocol
from firstboot.commands import CommandRunner
from firstboot.endpoint.controlplanes import CERTS_UPLOADED_AT
from firstboot.endpoint.kubestore import MIGRATED_MARKER, KubeStore
from firstboot.endpoint.objects import KubeObjects
from firstboot.endpoint.settings import ServerSettings
from firstboot.endpoint.state import NodeStore
from firstboot.endpoint.tokend import Limits, build_endpoint

MASTERS = ("pi-master1", "pi-master2", "pi-master3")
WORKER = "pi-worker1"
KEY = "0123456789abcdef" * 4
FACTS = {"arch": "aarch64", "os": "Ubuntu", "kubeadm_version": "v1.31.4", "macs": [], "node_ip": "192.168.6.15"}
START = 1.7e9  # the masters' clock (Unix time) when a test begins


class Clock:
    """The masters' time, moved by the test."""

    def __init__(self):
        self.now = START

    def __call__(self):
        return self.now


class Fleet:
    """A cluster of three control planes and a worker, the stand-ins, and the masters' endpoints started so far."""

    def __init__(self, base):
        self.base = base
        self.fake = FakeCluster(base)
        self.cluster = new_cluster(base, MASTERS + (WORKER,))
        clusters.write_server_config(self.cluster)
        self.ca_cert = base / "ca.crt"
        make_ca(self.ca_cert)
        self.key_file = base / "cluster" / "secrets" / "certificate.key"
        self.key_file.parent.mkdir(mode=0o700, exist_ok=True)
        self.key_file.write_text(KEY + "\n")
        self.clock = Clock()
        self.endpoints = []
        self.kubectl = CommandRunner(env=self.fake.env)
        self.set_cluster(initialized=True)  # the first master's `kubeadm init` made the cluster

    def settings(self, master):
        return ServerSettings(str(self.cluster.directory / "tokend.json"), {
            "listen": "127.0.0.1:0", "ca_cert_file": str(self.ca_cert), "kubeconfig": str(self.base / "admin.conf"),
            "control_planes": list(MASTERS), "certificate_key_file": str(self.key_file), "node_name": master})

    def state_dir(self, master):
        return str(self.base / ("card-" + master) / "state")

    def start(self, master):
        """`master`'s endpoint, serving on an ephemeral port of 127.0.0.1 until the test ends (the master's etcd
        member added when the cluster has none of that name)."""
        members = self.fake.cluster().get("etcd_members", [])
        if master not in [member["name"] for member in members]:
            index = MASTERS.index(master)
            self.set_cluster(etcd_members=members + [member(master, index)])
        endpoint = build_endpoint(self.settings(master), self.state_dir(master), Limits(),
                                  CommandRunner(env=self.fake.env), self.clock)
        threading.Thread(target=endpoint.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        self.endpoints.append(endpoint)
        return endpoint

    def stop(self):
        for endpoint in self.endpoints:
            endpoint.shutdown()
            endpoint.server_close()

    def store(self):
        """The state in the API, as any master reads it."""
        return KubeStore(KubeObjects(self.admin()))

    def admin(self):
        from firstboot.endpoint.kube import ClusterAdmin

        return ClusterAdmin(self.kubectl, str(self.base / "admin.conf"))

    def join(self, endpoint, node, control_plane=False):
        """(status, answer, headers) of `node`'s signed join request to `endpoint`."""
        settings = self.settings(MASTERS[0])
        credential = protocol.node_credential(settings.enrollment_key, node, settings.generation(node))
        body = dict(FACTS, node=node)
        if control_plane:
            body["control_plane"] = True
        return signed_post(endpoint, node, credential, json.dumps(body).encode())

    def calls_text(self):
        path = self.fake.state / "calls.jsonl"
        return path.read_text() if path.exists() else ""

    def set_cluster(self, **values):
        data = self.fake.cluster()
        data.update(values)
        (self.fake.state / "cluster.json").write_text(json.dumps(data))


def member(name, index):
    """An etcd member as the kubeadm stand-in records it."""
    return {"id": "{:016x}".format(0x8e9e05c52164694d + index), "name": name,
            "peer_urls": ["https://192.168.6.{}:2380".format(11 + index)]}


def signed_post(endpoint, node, credential, body):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    host, port = endpoint.server_address[:2]
    connection = http.client.HTTPSConnection(host, port, context=context, timeout=60)
    connection.request("GET", protocol.CHALLENGE_PATH)
    nonce = json.loads(connection.getresponse().read())["nonce"]
    connection.request("POST", protocol.JOIN_PATH, body=body, headers={
        protocol.HEADER_NODE: node, protocol.HEADER_NONCE: nonce,
        protocol.HEADER_SIGNATURE: protocol.sign(credential, "POST", protocol.JOIN_PATH, nonce, body)})
    response = connection.getresponse()
    answer = json.loads(response.read() or b"{}")
    connection.close()
    return response.status, answer, dict(response.getheaders())


@pytest.fixture
def fleet(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    world = Fleet(tmp_path)
    yield world
    world.stop()


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def audit_lines(caplog):
    return [record.getMessage() for record in caplog.records if record.name == "pi-image.audit"]


def test_two_masters_racing_for_one_node_issue_one_token(fleet):
    first, second = fleet.start("pi-master1"), fleet.start("pi-master2")
    fleet.fake.knob("kubectl_sleep", "0.1")  # each decision takes a while: the two overlap
    answers = []
    racers = [threading.Thread(target=lambda e=endpoint: answers.append(fleet.join(e, WORKER)))
              for endpoint in (first, second)]
    for racer in racers:
        racer.start()
    for racer in racers:
        racer.join(60)
    fleet.fake.knob("kubectl_sleep", "0")

    statuses = sorted(status for status, _, _ in answers)
    assert statuses == [200, 503], answers
    busy = [headers for status, _, headers in answers if status == 503][0]
    assert 1 <= int(busy["Retry-After"]) <= 5
    assert len(fleet.fake.created_tokens()) == 1
    row = fleet.store().get(WORKER)
    assert row["state"] == "token-issued" and row["token_id"] == fleet.fake.created_tokens()[0]["token_id"]
    lease = KubeObjects(fleet.admin()).get("lease", "pi-image-join-" + WORKER)
    assert "holderIdentity" not in lease["spec"], "released once decided"

    status, _, _ = fleet.join(second, WORKER)  # the other master, asked again, sees the same row
    assert status == 200 and len(fleet.fake.created_tokens()) == 2
    assert fleet.fake.deleted_tokens() == [row["token_id"]], "the first token retired: one live token per node"


def test_a_lease_whose_master_died_while_deciding_is_taken_over(fleet):
    endpoint = fleet.start("pi-master1")
    objects = KubeObjects(fleet.admin())
    objects.create({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": "pi-image-join-" + WORKER},
                    "spec": {"holderIdentity": "pi-master3", "leaseDurationSeconds": 60,
                             "renewTime": "2023-11-14T22:13:20.000000Z"}})  # START

    fleet.clock.now = START + 61  # the Lease ran out a second ago
    status, answer, _ = fleet.join(endpoint, WORKER)

    assert status == 200 and answer["token"]
    lease = objects.get("lease", "pi-image-join-" + WORKER)
    assert lease["spec"]["leaseTransitions"] == 1 and "holderIdentity" not in lease["spec"]


def test_a_lease_another_master_holds_makes_the_node_wait(fleet):
    endpoint = fleet.start("pi-master1")
    KubeObjects(fleet.admin()).create({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "pi-image-join-" + WORKER},
        "spec": {"holderIdentity": "pi-master3", "leaseDurationSeconds": 60,
                 "renewTime": "2023-11-14T22:13:20.000000Z"}})

    fleet.clock.now = START + 58  # renewed at START: 2 s left
    status, answer, headers = fleet.join(endpoint, WORKER)

    assert status == 503 and "pi-master3" in answer["error"] and headers["Retry-After"] == "2"
    assert fleet.fake.created_tokens() == []


def test_a_worker_asking_for_the_certificate_key_is_refused_and_audited(fleet, caplog):
    endpoint = fleet.start("pi-master1")

    status, answer, _ = fleet.join(endpoint, WORKER, control_plane=True)

    assert status == 403 and "certificate_key" not in answer and "token" not in answer
    assert any(line.startswith("decision=refused-certificate-key node={} ".format(WORKER))
               for line in audit_lines(caplog))
    assert fleet.fake.created_tokens() == [] and fleet.fake.calls("kubeadm") == []


def test_a_master_joining_gets_the_key_and_the_certificates_are_uploaded_again_after_two_hours(fleet, caplog):
    first = fleet.start("pi-master1")
    joined = fleet.join(first, "pi-master2", control_plane=True)
    second = fleet.start("pi-master2")  # it joined: its endpoint serves too
    fleet.clock.now += 3600
    within = fleet.join(second, "pi-master3", control_plane=True)
    fleet.clock.now += 3600
    later = fleet.join(first, "pi-master3", control_plane=True)

    assert [answer[0] for answer in (joined, within, later)] == [200, 200, 200]
    assert all(answer[1]["certificate_key"] == KEY and answer[1]["token"] for answer in (joined, within, later))
    uploads = fleet.fake.calls("kubeadm", "init", "phase", "upload-certs")
    assert len(uploads) == 2, "age unknown at first, fresh an hour later, stale after two"
    configs = [Path(call[call.index("--config") + 1]) for call in uploads]
    assert all(path.parent == Path(tempfile.gettempdir()) for path in configs), "the unit's private /tmp"
    assert not any(path.exists() for path in configs), "the config holding the key is gone"
    assert [upload["config_mode"] for upload in read_jsonl(fleet.fake.state / "uploads.jsonl")] == ["0600"] * 2
    assert fleet.store().shared_value(CERTS_UPLOADED_AT) == START + 7200
    logged = "\n".join(record.getMessage() for record in caplog.records)
    audit = audit_lines(caplog)
    assert sum("decision=token-issued node=pi-master3" in line for line in audit) == 2
    assert KEY not in fleet.calls_text() and KEY not in logged
    assert KEY not in json.dumps(KubeObjects(fleet.admin()).list("configmaps", "pi-image/state=node"))


def test_a_master_without_the_key_file_says_which_file(fleet):
    endpoint = fleet.start("pi-master1")
    fleet.key_file.unlink()

    status, answer, _ = fleet.join(endpoint, "pi-master2", control_plane=True)

    assert status == 503 and str(fleet.key_file) in answer["error"]
    assert fleet.fake.created_tokens() == []


def test_a_reflashed_master_loses_its_stale_node_and_etcd_member(fleet, caplog):
    members = [member(name, index) for index, name in enumerate(MASTERS)]
    fleet.set_cluster(nodes={"pi-master1": "Ready", "pi-master2": "NotReady", "pi-master3": "Ready"},
                      etcd_members=members)
    endpoint = fleet.start("pi-master1")

    status, answer, _ = fleet.join(endpoint, "pi-master2", control_plane=True)

    assert status == 200 and answer["certificate_key"] == KEY
    cluster = fleet.fake.cluster()
    assert "pi-master2" not in cluster["nodes"]
    assert [member["name"] for member in cluster["etcd_members"]] == ["pi-master1", "pi-master3"]
    removal = [call for call in fleet.fake.calls("kubectl") if "remove" in call]
    assert len(removal) == 1 and removal[0][removal[0].index("exec") + 1] == "etcd-pi-master1"
    assert removal[0][-1] == "8e9e05c52164694e"
    assert any(line.startswith("decision=removed-etcd-member node=pi-master2") for line in audit_lines(caplog))


def test_the_first_masters_local_rows_move_into_the_api_once(fleet):
    local = NodeStore(fleet.state_dir("pi-master1"))
    local.update("pi-master1", state="joined", phases={"booted": 100.0, "joined": 200.0}, last_report="joined")
    local.close()

    fleet.start("pi-master1")
    moved = fleet.store().get("pi-master1")
    local = NodeStore(fleet.state_dir("pi-master1"))
    local.update("pi-master1", last_report="changed on the card later")
    local.close()
    fleet.start("pi-master1")  # the endpoint restarted

    assert moved["state"] == "joined" and moved["phases"] == {"booted": 100.0, "joined": 200.0}
    assert fleet.store().get("pi-master1")["last_report"] == "joined", "moved once, not again"
    assert (fleet.base / "card-pi-master1" / "state" / MIGRATED_MARKER).exists()


def test_two_masters_writing_one_row_at_once_lose_nothing(fleet):
    stores = [fleet.store(), fleet.store()]

    def write(store, column):
        for index in range(4):
            store.update(WORKER, **{column: "{} {}".format(column, index)})

    writers = [threading.Thread(target=write, args=(store, column))
               for store, column in zip(stores, ("last_report", "last_error"), strict=True)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(60)

    row = fleet.store().get(WORKER)
    assert (row["last_report"], row["last_error"]) == ("last_report 3", "last_error 3")
