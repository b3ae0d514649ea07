"""The workstation sees every node's story: `pi-image status|approve` ask the master's token endpoint over pinned TLS
with the admin credential, from a copy of the cluster directory, while real agents and the real endpoint run."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from join_fakes.control_plane import MASTER, ControlPlaneLab
from join_fakes.harness import (
    FIRSTBOOT_PYTHON,
    REPO,
    TOKEN_SHAPE,
    FakeCluster,
    built_card,
    make_ca,
    make_root,
    run_agent,
    start_agent,
    wait_for,
)
from join_fakes.wrappers import FAKE_TOOL

from builder import cluster as clusters
from builder.cli import main as pi_image
from builder.cluster.status import fleet_status
from builder.errors import UserError
from firstboot import protocol
from firstboot.client import EndpointClient
from firstboot.endpoint.state import NodeStore
from firstboot.protocol import PHASES

ROW_KEYS = {"node", "role", "address", "arch", "os", "generation", "card_generation", "newest_card", "phase", "phases",
            "last_error", "fix", "updated", "source"}

# `kubectl get nodes -o json`, which the shared stand-in does not play: its fake cluster's nodes, each Ready (or not)
# since the moment it is asked, to the second as the API server says it; every other call goes on to the stand-in.
_KUBECTL = """#!/bin/sh
case " $* " in
  *" get nodes -o json "*) exec "{python}" -c '
import json, os, time
nodes = json.load(open(os.path.join(os.environ["FAKE_STATE"], "cluster.json")))["nodes"]
since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
print(json.dumps({{"items": [{{"metadata": {{"name": name}}, "status": {{"conditions": [{{"type": "Ready",
    "status": "True" if status == "Ready" else "False", "lastTransitionTime": since}}]}}}}
    for name, status in nodes.items()]}}))' ;;
esac
exec "{python}" "{fake}" kubectl "$@"
"""


def cli(*args):
    return CliRunner().invoke(pi_image, [str(arg) for arg in args])


def api_server_answers_nodes(fake: FakeCluster) -> None:
    (fake.bin / "kubectl").write_text(_KUBECTL.format(python=sys.executable, fake=FAKE_TOOL))


def workstation_copy(cluster_dir: Path, tmp_path: Path) -> Path:
    """The cluster directory as the operator's workstation holds it: settings, inventory, secrets; no state."""
    copy = tmp_path / "workstation" / cluster_dir.name
    shutil.copytree(cluster_dir, copy, ignore=shutil.ignore_patterns("state", "admin.conf", "tokend.stderr"))
    return copy


def one_line(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1 and "Traceback" not in result.output, result.output
    return lines[0]


@pytest.fixture
def joined(join_lab, tmp_path):
    """pi-worker1 joined by the real agent; the API server says it is Ready; (lab, workstation's directory)."""
    api_server_answers_nodes(join_lab.fake)
    root = join_lab.node_root()
    result = run_agent(root, join_lab.fake)
    assert result.returncode == 0, result.stderr
    return join_lab, workstation_copy(join_lab.cluster.directory, tmp_path)


def test_status_from_the_workstation_shows_the_story_a_real_agent_told_the_master(joined):
    world, workstation = joined

    table = cli("status", "--cluster", workstation, "--endpoint", world.server.endpoint)
    listed = cli("status", "--cluster", workstation, "--endpoint", world.server.endpoint, "--json")

    assert table.exit_code == 0 and listed.exit_code == 0, table.output + listed.output
    [row] = json.loads(listed.stdout)
    assert ROW_KEYS <= set(row)
    assert (row["node"], row["role"], row["phase"], row["source"]) == ("pi-worker1", "worker", "ready", "master")
    assert (row["address"], row["arch"], row["os"]) == ("192.168.6.15", os.uname().machine, "Ubuntu 22.04.4 LTS")
    assert (row["generation"], row["card_generation"], row["newest_card"]) == (1, 1, True)
    assert list(row["phases"]) == ["booted", "local-setup", "runtime-installed", "token-issued", "joined", "ready"]
    ordered = [row["phases"][phase] for phase in PHASES if phase in row["phases"] and phase != "ready"]
    assert ordered == sorted(ordered), "each phase after the one before, on the master's clock"
    since = row["phases"]["ready"]
    assert since == int(since) and 0 <= since - int(row["phases"]["joined"]) < 30, "the API server's Ready time"
    assert row["installed_from"] == "network" and row["last_error"] is None and row["fix"] is None
    assert table.stdout.startswith(f"from the master {world.server.endpoint}, at ")
    assert re.search(r"pi-worker1\s+worker\s+ready\s+192\.168\.6\.15\s+\S+\s+Ubuntu 22\.04\.4 LTS\s+1 newest",
                     table.stdout), table.stdout
    assert re.search(r"booted \d\d:\d\d:\d\d, local-setup \d+s, runtime-installed \d+s \(network\), token-issued "
                     r"\d+s, joined \d+s, ready ", table.stdout), table.stdout
    assert stat_mode(workstation / "state" / "last-status.json") == 0o600


def stat_mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_the_admin_status_answer_holds_no_secret(joined):
    world, workstation = joined
    cluster = clusters.load_cluster(workstation)
    key = (workstation / "secrets" / "enrollment.key").read_text().strip()
    [token] = world.fake.created_tokens()

    answer = EndpointClient(world.server.endpoint, cluster.endpoint_fingerprint, protocol.ADMIN_NAME,
                            cluster.admin_credential()).admin_status()
    as_a_node = EndpointClient(world.server.endpoint, cluster.endpoint_fingerprint, "pi-worker1",
                               world.credential()).admin_status()
    text = json.dumps(answer.payload)

    assert answer.status == 200 and [node["name"] for node in answer.payload["nodes"]] == ["pi-worker1"]
    assert as_a_node.status == 401 and "nodes" not in as_a_node.payload
    for secret in (key, world.credential(), cluster.admin_credential(), token["token_id"], world.ca_hash):
        assert secret not in text
    assert not TOKEN_SHAPE.search(text.encode()) and "sha256" not in text and not re.search(r"[0-9a-f]{32}", text)
    assert not {"token_id", "token_issued_at", "credential", "ca_cert_hashes"} & set(answer.payload["nodes"][0])


def test_fleet_status_gives_the_rows_and_one_line_when_the_master_is_away(joined):
    world, workstation = joined

    rows, fine = fleet_status(workstation, world.server.endpoint)
    world.server.stop()
    kept, away = fleet_status(workstation, world.server.endpoint)
    with pytest.raises(UserError) as never:
        fleet_status(workstation, "127.0.0.1:9")

    assert [(row["node"], row["phase"]) for row in rows] == [("pi-worker1", "ready")] and fine is None
    assert [(row["node"], row["phase"], row["source"]) for row in kept] == [("pi-worker1", "ready", "cache")]
    assert "\n" not in away and f"the master {world.server.endpoint} cannot be reached" in away
    assert "showing what it said" in away
    assert "\n" not in str(never.value) and "never answered here" in str(never.value)


def test_an_unreachable_master_is_one_line_and_the_rows_it_last_gave(joined):
    world, workstation = joined
    assert cli("status", "--cluster", workstation, "--endpoint", world.server.endpoint).exit_code == 0
    world.server.stop()

    table = cli("status", "--cluster", workstation, "--endpoint", world.server.endpoint)
    listed = cli("status", "--cluster", workstation, "--endpoint", world.server.endpoint, "--json")
    never = cli("status", "--cluster", workstation, "--endpoint", "127.0.0.1:9")

    line = one_line(table)
    assert f"the master {world.server.endpoint} cannot be reached" in line and "showing what it said" in line
    assert "try again later" not in line.lower()
    assert "pi-worker1" in table.stdout and "ready" in table.stdout and "joined" in table.stdout
    assert [(row["node"], row["phase"], row["source"]) for row in json.loads(listed.stdout)] == \
        [("pi-worker1", "ready", "cache")]
    assert "never answered here" in one_line(never)


def test_a_master_with_another_certificate_says_the_card_and_the_directory_disagree(joined, tmp_path):
    world, _ = joined
    other = clusters.init_cluster(tmp_path / "other", "192.168.6.10:6443", "127.0.0.1:8443", "1.31", "192.168.6.0/24")
    clusters.add_node(other, "pi-worker1", "worker-8g", None, "worker")
    built_card(other.directory, "pi-worker1")

    result = cli("status", "--cluster", other.directory, "--endpoint", world.server.endpoint)

    line = one_line(result)
    assert "the card and the directory disagree" in line and other.endpoint_fingerprint in line
    assert "try again later" not in line.lower()


def test_a_stale_admin_credential_is_one_clear_line(joined):
    world, workstation = joined
    (workstation / "secrets" / "enrollment.key").write_text("ab" * 32 + "\n")

    result = cli("approve", "pi-worker1", "--cluster", workstation, "--endpoint", world.server.endpoint)

    line = one_line(result)
    assert "refused the admin credential" in line and "enrollment.key" in line
    assert world.state()["approved"] == 0


def test_approve_over_the_network_lets_a_pending_node_join(make_join_lab, tmp_path):
    world = make_join_lab(approval_mode=True)
    world.server.start()
    config = clusters.local_node_config("pi-stranger", "1.31").replace(
        endpoint=world.server.endpoint, endpoint_fingerprint=world.cluster.endpoint_fingerprint,
        credential=world.credential("pi-stranger"), api_server=world.cluster.api_server,
        node_subnet=world.cluster.node_subnet)
    agent = start_agent(make_root(tmp_path, config), world.fake)
    workstation = workstation_copy(world.cluster.directory, tmp_path)
    wait_for(lambda: (world.state("pi-stranger") or {}).get("state") == "pending")
    pending = json.loads(cli("status", "--cluster", workstation, "--endpoint", world.server.endpoint, "--json").stdout)

    typo = cli("approve", "pi-strangr", "--cluster", workstation, "--endpoint", world.server.endpoint)
    approval = cli("approve", "pi-stranger", "--cluster", workstation, "--endpoint", world.server.endpoint)
    _, stderr = agent.communicate(timeout=30)

    assert {row["node"]: row["phase"] for row in pending}["pi-stranger"] == "pending"
    assert "nothing to approve" in one_line(typo) and world.state("pi-strangr") is None
    assert approval.exit_code == 0, approval.output
    assert approval.stdout.startswith(f"approved pi-stranger on the master {world.server.endpoint}")
    assert agent.returncode == 0, stderr
    assert world.state("pi-stranger")["state"] == "joined"
    assert not (workstation / "state" / "tokend.db").exists(), "nothing was approved on the workstation"


def test_approve_replace_over_the_network_records_the_consent_on_the_master(joined):
    world, workstation = joined

    result = cli("approve", "pi-worker1", "--replace", "--cluster", workstation, "--endpoint", world.server.endpoint)

    assert result.exit_code == 0, result.output
    assert "may replace its Ready namesake once" in result.stdout
    assert world.state()["replace_allowed"] == 1


def test_a_failed_node_shows_its_error_and_the_fix(join_lab, tmp_path):
    root = join_lab.node_root()
    (root / "sys/fs/cgroup/cgroup.controllers").write_text("cpuset cpu io pids\n")
    run_agent(root, join_lab.fake)
    workstation = workstation_copy(join_lab.cluster.directory, tmp_path)

    [row], _ = fleet_status(workstation, join_lab.server.endpoint)
    table = cli("status", "--cluster", workstation, "--endpoint", join_lab.server.endpoint).stdout

    assert row["last_error"].endswith("cgroup_enable=memory cgroup_memory=1 did not take effect")
    assert row["fix"].startswith("check that cmdline.txt")
    assert row["phase"] == "booted", "no further: the memory cgroup is checked before the packages"
    assert "runtime-installed" not in row["phases"]
    assert f"    error: {row['last_error']}" in table and f"    fix: {row['fix']}" in table
    assert "booted, failed" in table


def test_status_reads_the_local_state_where_the_endpoint_serves_and_says_so(join_lab):
    run_agent(join_lab.node_root(), join_lab.fake)

    here = cli("status", "--cluster", join_lab.cluster.directory)

    assert here.exit_code == 0, here.output
    assert here.stdout.startswith(f"local state in {join_lab.cluster.directory / 'state'} (its token endpoint serves "
                                  "from there on this machine), at ")
    assert "joined" in here.stdout


def test_status_uses_the_default_cluster(joined, monkeypatch):
    world, workstation = joined
    monkeypatch.setenv("PI_IMAGE_CLUSTER", str(workstation))

    result = cli("status", "--endpoint", world.server.endpoint, "--json")

    assert result.exit_code == 0, result.output
    assert [row["node"] for row in json.loads(result.stdout)] == ["pi-worker1"]


def test_status_watch_redraws_until_interrupted(joined):
    world, workstation = joined
    watch = subprocess.Popen([sys.executable, "-m", "builder", "status", "--cluster", str(workstation), "--endpoint",
                              world.server.endpoint, "--watch"], cwd=str(REPO), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, universal_newlines=True,
                             # Ctrl-C reaches it even when the tests run as a background job (SIGINT ignored)
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        wait_for(lambda: (workstation / "state" / "last-status.json").exists(), timeout=20)
        first = (workstation / "state" / "last-status.json").stat().st_mtime_ns
        wait_for(lambda: (workstation / "state" / "last-status.json").stat().st_mtime_ns != first, timeout=20)
    finally:
        watch.send_signal(signal.SIGINT)
        out, err = watch.communicate(timeout=20)

    assert watch.returncode == 0, err
    assert out.count("from the master") >= 2, "redrawn"
    assert "\x1b[" not in out, "no screen clearing when stdout is no terminal"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class MasterCard:
    """A cluster whose master's card was built, and its token endpoint as the master's unit runs it (from the card's
    copy of the cluster directory) on the address cluster.yaml names."""

    def __init__(self, base: Path):
        port = free_port()
        self.cluster = clusters.init_cluster(base / "lab", "192.168.6.10:6443", f"127.0.0.1:{port}", "1.31",
                                             "192.168.6.0/24")
        clusters.add_node(self.cluster, "pi-master1", "master-2g", None, "control-plane", address="192.168.6.10")
        clusters.add_node(self.cluster, "pi-worker1", "worker-8g", None, "worker")
        built_card(self.cluster.directory, "pi-master1")
        card = base / "etc-pi-image-cluster"
        for relative, data, mode in clusters.master_files(clusters.load_cluster(self.cluster.directory)):
            (card / relative).parent.mkdir(parents=True, exist_ok=True)
            (card / relative).write_bytes(data)
            (card / relative).chmod(mode)
        self.card = card
        fake = FakeCluster(base)
        make_ca(base / "ca.crt")
        self.process = subprocess.Popen(
            [FIRSTBOOT_PYTHON, "-m", "firstboot.endpoint", "--config", str(card / "tokend.json"), "--listen",
             f"127.0.0.1:{port}", "--ca-cert", str(base / "ca.crt"), "--kubeconfig", str(base / "admin.conf")],
            cwd=str(REPO), env=fake.env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert "listening on" in self.process.stdout.readline().decode()
        self.address = f"127.0.0.1:{port}"

    def inventory(self) -> dict:
        return json.loads((self.card / "state" / "inventory.json").read_text())["nodes"]

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


@pytest.fixture
def master(tmp_path):
    card = MasterCard(tmp_path)
    yield card
    card.stop()


def test_add_and_remove_node_push_the_inventory_to_the_master_or_say_what_to_run(master):
    directory = master.cluster.directory

    added = cli("cluster", "add-node", directory, "pi-worker9", "--profile", "worker-8g")
    pushed = master.inventory()
    master.stop()
    removed = cli("cluster", "remove-node", directory, "pi-worker9")

    assert added.exit_code == 0, added.output
    assert f"pushed the inventory to the master at {master.address}: it knows 3 node(s)" in added.stdout
    assert pushed == {"pi-master1": 1, "pi-worker1": 0, "pi-worker9": 0}
    assert removed.exit_code == 0, removed.output
    assert f"the master at {master.address} cannot be reached now" in removed.stdout
    assert f"run `pi-image cluster sync {directory}` once it is up" in removed.stdout


def test_status_says_when_the_masters_inventory_is_older_than_the_directorys(master):
    directory = master.cluster.directory
    clusters.add_node(clusters.load_cluster(directory), "pi-worker2", "worker-8g", None, "worker")

    result = cli("status", "--cluster", directory)

    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"from the master {master.address}")
    assert "pi-worker2 missing or older there" in result.stdout and "pi-image cluster sync" in result.stdout


def test_a_control_plane_keeps_its_own_story_in_its_endpoints_state(tmp_path):
    master = ControlPlaneLab(tmp_path)
    root = master.node_root()

    result = run_agent(root, master.fake)

    assert result.returncode == 0, result.stderr
    row = master.state(root)
    assert set(row["phases"]) == {"booted", "local-setup", "runtime-installed", "initialized", "joined"}
    assert row["phases"]["booted"] <= row["phases"]["initialized"] <= row["phases"]["joined"]
    assert (row["state"], row["card_generation"], row["installed_from"]) == ("joined", 1, "network")
    assert row["facts"]["os"] == "Ubuntu 22.04.4 LTS" and MASTER == row["name"]


def test_a_state_file_of_an_older_endpoint_gains_the_new_columns_and_keeps_its_rows(tmp_path):
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    old = sqlite3.connect(str(state_dir / "tokend.db"))
    old.execute("CREATE TABLE nodes (name TEXT PRIMARY KEY, state TEXT NOT NULL, approved INTEGER NOT NULL DEFAULT 0,"
                " replace_allowed INTEGER NOT NULL DEFAULT 0, token_id TEXT, token_issued_at REAL, address TEXT,"
                " facts TEXT, last_report TEXT, last_error TEXT, updated_at REAL NOT NULL)")
    old.execute("INSERT INTO nodes (name, state, approved, address, facts, updated_at) VALUES "
                "('pi-worker1', 'joined', 1, '192.168.6.15', '{\"arch\": \"aarch64\"}', 1733000000)")
    old.commit()
    old.close()

    first, second = NodeStore(str(state_dir)), NodeStore(str(state_dir))  # two openers at once: one adds them
    first.update("pi-worker1", phases={"booted": 1733000001.0}, fix="reflash it", card_generation=2)
    row = second.get("pi-worker1")
    first.close()
    second.close()

    columns = {r[1] for r in sqlite3.connect(str(state_dir / "tokend.db")).execute("PRAGMA table_info(nodes)")}
    assert {"generation", "joined_generation", "phases", "fix", "card_generation", "installed_from"} <= columns
    assert (row["state"], row["address"], row["facts"]) == ("joined", "192.168.6.15", {"arch": "aarch64"})
    assert (row["phases"], row["fix"], row["card_generation"]) == ({"booted": 1733000001.0}, "reflash it", 2)


def test_an_older_inventory_pushed_last_never_takes_a_card_back(master):
    cluster = master.cluster
    client = EndpointClient(master.address, cluster.endpoint_fingerprint, protocol.ADMIN_NAME,
                            cluster.admin_credential())

    newer = client.admin_sync_inventory({"pi-master1": 1, "pi-worker1": 3, "pi-worker2": 1})
    older = client.admin_sync_inventory({"pi-master1": 1, "pi-worker1": 2, "pi-worker3": 1})

    assert newer.status == older.status == 200
    assert master.inventory() == {"pi-master1": 1, "pi-worker1": 3, "pi-worker3": 1}, \
        "the higher generation stays; the push decides which nodes are listed"


def test_the_inventory_is_read_and_pushed_under_its_lock(master, monkeypatch):
    import fcntl

    from builder.cluster import status as fleet

    held, real = [], fleet.admin_request

    def while_pushing(*args, **kwargs):
        with open(master.cluster.directory / ".inventory.lock") as other:
            try:
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
                held.append(False)
            except BlockingIOError:
                held.append(True)
        return real(*args, **kwargs)

    monkeypatch.setattr(fleet, "admin_request", while_pushing)
    line = fleet.push_inventory(clusters.load_cluster(master.cluster.directory))

    assert held == [True], "no change of the directory can come between the read and the push"
    assert line.startswith(f"pushed the inventory to the master at {master.address}")


def test_a_large_fleet_fits_in_one_status_answer(master):
    store = NodeStore(str(master.card / "state"))
    for index in range(400):
        store.update(f"pi-worker{index + 100}", state="failed", last_error="x" * 1500, facts={"os": "y" * 200})
    store.close()

    rows, away = fleet_status(master.cluster.directory)

    assert away is None and len(rows) >= 400, "an answer well above 256 KiB"
    assert {row["source"] for row in rows} == {"master"}


def test_a_master_that_predates_status_over_the_network_says_to_reflash_it(joined, monkeypatch):
    world, workstation = joined
    fresh = cli("status", "--cluster", workstation, "--endpoint", world.server.endpoint)
    monkeypatch.setattr(protocol, "ADMIN_STATUS_PATH", "/v1/admin/status-of-a-newer-pi-image")  # a 404 there

    older = cli("status", "--cluster", workstation, "--endpoint", world.server.endpoint)
    (workstation / "state" / "last-status.json").unlink()
    never = cli("status", "--cluster", workstation, "--endpoint", world.server.endpoint)

    assert fresh.exit_code == 0, fresh.output
    advice = ("the master's card predates `pi-image status` over the network: rebuild and reflash it (or run "
              "`pi-image status --local` on it)")
    line = one_line(older)
    assert advice in line and "showing what it said" in line and "not found" not in line
    assert "pi-worker1" in older.stdout and "ready" in older.stdout
    assert one_line(never).endswith(advice) and never.stdout == ""
