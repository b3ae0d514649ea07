"""Things go wrong on the way — a late master, an expired token, a power cut, a restart — and nodes still join once."""

import os
import signal
import socket
import time

from click.testing import CliRunner
from join_fakes.harness import files_containing_tokens, run_agent, start_agent, wait_for

from builder.cli import main as pi_image
from firstboot.client import EndpointClient

FACTS = {"arch": "aarch64", "os": "Ubuntu", "kubeadm_version": "v1.31.4", "macs": [], "node_ip": "192.168.6.15"}


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_node_keeps_trying_while_the_master_is_down_then_joins(make_join_lab):
    world = make_join_lab()
    world.server.port = free_port()
    root = world.node_root()
    agent = start_agent(root, world.fake)
    log = root / "var/lib/pi-image/firstboot.log"
    wait_for(lambda: log.exists() and log.read_text().count("cannot reach 127.0.0.1") >= 3, timeout=10)

    world.server.start()
    _, stderr = agent.communicate(timeout=30)

    assert agent.returncode == 0, stderr
    assert "next attempt in" in stderr
    assert world.state()["state"] == "joined"


def test_token_that_expires_between_fetch_and_join_is_replaced_by_a_fresh_one(join_lab):
    # kubeadm join finds the first token gone: "could not find a JWS signature"
    join_lab.fake.knob("expire_before_join", 1)

    result = run_agent(join_lab.node_root(), join_lab.fake)

    assert result.returncode == 0, result.stderr
    assert "asking for a new one" in result.stderr
    assert len(join_lab.fake.created_tokens()) == 2
    assert len(join_lab.fake.joins()) == 1
    assert join_lab.fake.cluster()["tokens"] == {}
    assert join_lab.state()["state"] == "joined"


def test_power_cut_during_kubeadm_join_is_reset_and_redone_once(join_lab):
    root = join_lab.node_root()
    join_lab.fake.knob("join_sleep", 30)
    agent = start_agent(root, join_lab.fake)
    wait_for(lambda: join_lab.fake.calls("kubeadm", "join"), timeout=10)
    os.killpg(agent.pid, signal.SIGKILL)  # the whole session: agent and its kubeadm, like pulling the plug
    agent.wait()
    join_lab.fake.knob("join_sleep", 0)

    result = run_agent(root, join_lab.fake)

    assert result.returncode == 0, result.stderr
    assert "previous join was interrupted" in result.stderr
    assert join_lab.fake.calls("kubeadm", "reset")[0][:2] == ["reset", "-f"]
    assert files_containing_tokens(root) == [], "the join config the power cut left behind is gone"
    assert [join["node"] for join in join_lab.fake.joins()] == ["pi-worker1"]
    assert join_lab.fake.cluster()["tokens"] == {}, "the first token was deleted when the second was issued"
    assert join_lab.state()["state"] == "joined"


def test_power_cut_right_after_a_successful_join_is_recognised_on_restart(join_lab):
    root = join_lab.node_root()
    client = EndpointClient(join_lab.server.endpoint, join_lab.cluster.endpoint_fingerprint, "pi-worker1",
                            join_lab.credential())
    assert client.join(FACTS).payload["state"] == "token-issued"
    join_lab.fake.set_node("pi-worker1", "Ready")  # kubeadm join went through...
    (root / "var/lib/pi-image").mkdir(parents=True)
    (root / "var/lib/pi-image/join-started").write_text("")  # ...but the agent died before writing its marker
    time.sleep(1.1)  # the reboot outlasts the endpoint's one-second node list

    result = run_agent(root, join_lab.fake)

    assert result.returncode == 0, result.stderr
    assert join_lab.fake.calls("kubeadm", "join") == [] and join_lab.fake.calls("kubeadm", "reset") == []
    assert join_lab.state()["state"] == "joined"
    assert (root / "var/lib/pi-image/firstboot.done").exists()


def test_endpoint_restart_in_the_middle_of_a_fleet_keeps_its_state(make_join_lab):
    world = make_join_lab(nodes=("pi-worker1", "pi-worker2", "pi-worker3"))
    world.server.start()
    assert run_agent(world.node_root("pi-worker1"), world.fake).returncode == 0
    world.server.stop()
    late = start_agent(world.node_root("pi-worker2"), world.fake)
    wait_for(lambda: world.fake.calls("ip"), timeout=10)

    world.server.start()
    third = run_agent(world.node_root("pi-worker3"), world.fake)
    _, stderr = late.communicate(timeout=30)

    assert late.returncode == 0 and third.returncode == 0, stderr
    assert {name: world.state(name)["state"] for name in ("pi-worker1", "pi-worker2", "pi-worker3")} == \
        dict.fromkeys(("pi-worker1", "pi-worker2", "pi-worker3"), "joined")
    assert world.fake.cluster()["tokens"] == {}


def test_node_with_another_kubeadm_minor_is_refused_with_both_versions_named(join_lab):
    join_lab.fake.knob("kubeadm_version", "v1.30.2")

    result = run_agent(join_lab.node_root(), join_lab.fake, "--max-attempts", "2")
    status = CliRunner().invoke(pi_image, ["status", "--cluster", str(join_lab.cluster.directory)])

    message = "this node has kubeadm v1.30.2 but the cluster runs Kubernetes 1.31"
    assert result.returncode == 1
    assert message in result.stderr
    assert message in status.output and "failed" in status.output
    assert join_lab.fake.created_tokens() == []
    assert "no kind ClusterConfiguration" not in result.stderr


def test_reflashed_node_replaces_its_stale_notready_namesake(join_lab):
    join_lab.fake.set_node("pi-worker1", "NotReady")

    result = run_agent(join_lab.node_root(), join_lab.fake)

    assert result.returncode == 0, result.stderr
    assert join_lab.fake.calls("kubectl", "--kubeconfig", str(join_lab.cluster.directory / "admin.conf"),
                          "delete", "node", "pi-worker1")
    assert join_lab.state()["state"] == "joined"


def test_a_rebuilt_image_rejoins_after_a_reflash_with_no_manual_step(join_lab):
    assert run_agent(join_lab.node_root(), join_lab.fake).returncode == 0
    rebuilt = join_lab.node_root()  # `pi-image build` of the node again: generation 2
    join_lab.fake.set_node("pi-worker1", "NotReady")  # the device was powered off to be reflashed
    time.sleep(1.1)  # the reflash outlasts the endpoint's one-second node list

    result = run_agent(rebuilt, join_lab.fake)

    assert result.returncode == 0, result.stderr
    assert join_lab.fake.calls("kubectl", "--kubeconfig", str(join_lab.cluster.directory / "admin.conf"),
                          "delete", "node", "pi-worker1")
    assert len(join_lab.fake.created_tokens()) == 2 and join_lab.fake.cluster()["tokens"] == {}
    assert (join_lab.state()["state"], join_lab.state()["joined_generation"]) == ("joined", 2)


def test_ready_namesake_is_only_replaced_after_approve_replace(join_lab):
    join_lab.fake.set_node("pi-worker1", "Ready")
    root = join_lab.node_root()

    refused = run_agent(root, join_lab.fake, "--max-attempts", "1")
    approval = CliRunner().invoke(pi_image, ["approve", "pi-worker1", "--replace", "--cluster",
                                             str(join_lab.cluster.directory)])
    joined = run_agent(root, join_lab.fake)

    assert refused.returncode == 1
    assert "pi-image approve pi-worker1 --replace" in refused.stderr
    assert approval.exit_code == 0, approval.output
    assert joined.returncode == 0, joined.stderr
    assert len(join_lab.fake.created_tokens()) == 1
    assert join_lab.state()["state"] == "joined" and join_lab.state()["replace_allowed"] == 0


def test_unknown_node_waits_as_pending_until_an_operator_approves_it(make_join_lab, tmp_path):
    from join_fakes.harness import make_root

    from builder.cluster import local_node_config

    world = make_join_lab(approval_mode=True)
    world.server.start()
    config = local_node_config("pi-stranger", "1.31").replace(
        endpoint=world.server.endpoint, endpoint_fingerprint=world.cluster.endpoint_fingerprint,
        credential=world.credential("pi-stranger"), api_server=world.cluster.api_server,
        node_subnet=world.cluster.node_subnet)
    agent = start_agent(make_root(tmp_path, config), world.fake)
    wait_for(lambda: (world.state("pi-stranger") or {}).get("state") == "pending")
    assert world.fake.created_tokens() == []

    approval = CliRunner().invoke(pi_image, ["approve", "pi-stranger", "--cluster", str(world.cluster.directory)])
    _, stderr = agent.communicate(timeout=30)

    assert approval.exit_code == 0, approval.output
    assert agent.returncode == 0, stderr
    assert "waiting for an operator" in stderr
    assert world.state("pi-stranger")["state"] == "joined"


def test_disabled_memory_cgroup_stops_the_agent_with_a_clear_message(join_lab):
    root = join_lab.node_root()
    (root / "sys/fs/cgroup/cgroup.controllers").write_text("cpuset cpu io pids\n")

    result = run_agent(root, join_lab.fake)

    assert result.returncode == 1
    assert "cgroup_enable=memory cgroup_memory=1 did not take effect" in result.stderr
    assert "cmdline flags" in join_lab.state()["last_error"] or "did not take effect" in join_lab.state()["last_error"]
    assert join_lab.fake.calls("kubeadm", "join") == []
    assert not (root / "var/lib/pi-image/firstboot.done").exists()
