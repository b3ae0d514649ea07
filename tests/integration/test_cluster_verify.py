"""An operator checks, once every card has joined, that the cluster holds the nodes the inventory says were built —
what the seed's author read off `kubectl get nodes -o wide` by hand.

The fake control plane's kubectl (join_fakes) answers `get nodes -o name` and `get node NAME -o json` with a Ready
condition only, so the Node objects here are built in the API's own JSON shape (conditions as the fake words them) and
`kubectl get nodes -o json` is a small stand-in on PATH that prints them and records its arguments.
"""

import json
import shlex

import pytest
from click.testing import CliRunner

from builder import cluster as clusters
from builder.cli import PiImageGroup
from builder.cluster.verify import verify, verify_command

INVENTORY = [  # name, profile, role, address
    ("pi-master1", "master-2g", "control-plane", "192.168.6.10"),
    ("pi-worker1", "worker-8g", "worker", "192.168.6.15"),
    ("jetson1", "jetson-gpu", "worker", None),  # DHCP
    ("x86-1", "x86-worker", "worker", "192.168.6.30/24"),
]
ARCH = {"pi-master1": "arm64", "pi-worker1": "arm64", "jetson1": "arm64", "x86-1": "amd64"}
CONDITIONS = {  # as join_fakes.fake_tool.node_object words them
    "Ready": ("True", "KubeletReady", "kubelet is posting ready status"),
    "NotReady": ("False", "KubeletNotReady", ("container runtime network not ready: NetworkReady=false "
                                              "reason:NetworkPluginNotReady message:Network plugin returns error: "
                                              "cni plugin not initialized")),
    "Unknown": ("Unknown", "NodeStatusUnknown", "Kubelet stopped posting node status."),
}


def node_object(name, ip, ready="Ready", kubelet="v1.31.4", arch=None, runtime="containerd://1.7.24"):
    """A Node as `kubectl get nodes -o json` lists it (the fields verify reads, and some it does not)."""
    status, reason, message = CONDITIONS[ready]
    arch = arch or ARCH.get(name, "arm64")
    return {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/arch": arch, "kubernetes.io/os": "linux",
                                              "kubernetes.io/hostname": name}},
        "status": {
            "addresses": [{"address": ip, "type": "InternalIP"}, {"address": name, "type": "Hostname"}],
            "conditions": [
                {"type": "MemoryPressure", "status": "False", "reason": "KubeletHasSufficientMemory"},
                {"type": "Ready", "status": status, "reason": reason, "message": message,
                 "lastHeartbeatTime": "2026-01-02T03:04:05Z", "lastTransitionTime": "2026-01-02T03:00:00Z"},
            ],
            "nodeInfo": {"architecture": arch, "bootID": "b", "containerRuntimeVersion": runtime,
                         "kernelVersion": "6.8.0-1017-raspi", "kubeProxyVersion": kubelet, "kubeletVersion": kubelet,
                         "machineID": "m", "operatingSystem": "linux", "osImage": "Ubuntu 24.04.1 LTS",
                         "systemUUID": "s"},
        },
    }


def healthy_nodes():
    """The API's nodes when every card joined as built."""
    return [node_object("pi-master1", "192.168.6.10"), node_object("pi-worker1", "192.168.6.15"),
            node_object("jetson1", "192.168.6.77", runtime="containerd://1.6.12"),
            node_object("x86-1", "192.168.6.30", runtime="containerd://2.2.1")]


def replaced(nodes, name, **changes):
    """`nodes` with `name`'s object rebuilt with `changes`."""
    ips = {n["metadata"]["name"]: n["status"]["addresses"][0]["address"] for n in nodes}
    return [node_object(name, changes.pop("ip", ips[name]), **changes) if n["metadata"]["name"] == name else n
            for n in nodes]


@pytest.fixture
def lab(tmp_path):
    """A cluster directory for 1.31 with a master, a Pi worker, a DHCP Jetson and an x86 worker."""
    cluster = clusters.init_cluster(tmp_path / "lab", "192.168.6.10:6443", "192.168.6.10:8443", "1.31",
                                    "192.168.6.0/24", gateway="192.168.6.1")
    for name, profile, role, address in INVENTORY:
        clusters.add_node(cluster, name, profile, None, role, address=address)
    return clusters.load_cluster(tmp_path / "lab")


@pytest.fixture
def kubectl(tmp_path, monkeypatch):
    """A kubectl stand-in on PATH: prints nodes.json as a v1 List (or, with `fail` written, that on stderr and exit
    1) and appends its argv to calls."""
    bin_dir, state = tmp_path / "bin", tmp_path / "kubectl-state"
    bin_dir.mkdir()
    state.mkdir()
    script = bin_dir / "kubectl"
    script.write_text(f"""#!/bin/sh
echo "$*" >> {shlex.quote(str(state / 'calls'))}
if [ -f {shlex.quote(str(state / 'fail'))} ]; then cat {shlex.quote(str(state / 'fail'))} >&2; exit 1; fi
cat {shlex.quote(str(state / 'nodes.json'))}
""")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")

    class StandIn:
        def serve(self, nodes):
            self.prints(json.dumps({"apiVersion": "v1", "kind": "List", "items": nodes,
                                    "metadata": {"resourceVersion": ""}}))

        def prints(self, text):
            (state / "nodes.json").write_text(text)

        def fail(self, stderr):
            (state / "fail").write_text(stderr)

        def calls(self):
            return (state / "calls").read_text().splitlines()

    return StandIn()


def pi_image(*args):
    """`pi-image cluster verify ARGS` through the CLI's own error handling (the lead registers the command in the
    `cluster` group; until then a group of the same class holds it)."""
    group = PiImageGroup("pi-image")
    cluster = PiImageGroup("cluster")
    cluster.add_command(verify_command)
    group.add_command(cluster)
    return CliRunner().invoke(group, ["cluster", "verify", *[str(a) for a in args]])


def by_node(rows):
    return {row["node"]: row for row in rows}


def checks(row):
    return [problem["check"] for problem in row["problems"]]


# --- the comparison -------------------------------------------------------------------------------------------------

def test_every_node_joined_as_built_is_ok(lab):
    rows = verify(lab, healthy_nodes())

    assert [(row["node"], row["result"], row["problems"]) for row in rows] == [
        (name, "ok", []) for name, *_ in INVENTORY]
    assert by_node(rows)["x86-1"]["architecture"] == "amd64"


def test_a_node_on_its_wifi_address_is_the_two_nic_trap(lab):
    rows = by_node(verify(lab, replaced(healthy_nodes(), "pi-worker1", ip="192.168.0.23")))

    problem, = rows["pi-worker1"]["problems"]
    assert rows["pi-worker1"]["result"] == "mismatch" and problem["check"] == "internal-ip"
    assert "INTERNAL-IP 192.168.0.23, not its inventory address 192.168.6.15" in problem["message"]
    assert "--node-ip=192.168.6.15" in problem["fix"]
    assert "reflash it with a new card (`pi-image build --cluster " in problem["fix"]
    assert all(rows[name]["result"] == "ok" for name in ("pi-master1", "jetson1", "x86-1"))


def test_a_dhcp_node_must_register_an_address_in_the_node_subnet(lab):
    rows = by_node(verify(lab, replaced(healthy_nodes(), "jetson1", ip="192.168.0.40")))

    assert checks(rows["jetson1"]) == ["internal-ip"]
    assert "outside the node subnet 192.168.6.0/24" in rows["jetson1"]["problems"][0]["message"]


def test_not_ready_says_why_and_what_to_do(lab):
    nodes = replaced(replaced(healthy_nodes(), "pi-worker1", ready="NotReady"), "jetson1", ready="Unknown")
    rows = by_node(verify(lab, nodes))

    no_cni, = rows["pi-worker1"]["problems"]
    gone, = rows["jetson1"]["problems"]
    assert no_cni["message"].startswith("NotReady (KubeletNotReady: container runtime network not ready")
    assert "flannel" in no_cni["fix"]
    assert gone["message"] == "NotReady (NodeStatusUnknown: Kubelet stopped posting node status.)"
    assert "power it on" in gone["fix"] and "kubectl delete node jetson1" in gone["fix"]


def test_a_kubelet_outside_the_skew_policy_is_a_mismatch_one_inside_it_a_note(lab):
    nodes = replaced(replaced(healthy_nodes(), "pi-worker1", kubelet="v1.27.5"), "jetson1", kubelet="v1.32.0")
    rows = by_node(verify(lab, replaced(nodes, "x86-1", kubelet="v1.30.5")))

    behind, = rows["pi-worker1"]["problems"]
    ahead, = rows["jetson1"]["problems"]
    assert behind["check"] == "kubelet" and behind["message"].startswith(
        "kubelet v1.27.5 trails the API server's 1.31 by 4 minors")
    assert ahead["message"].startswith("kubelet v1.32.0 is newer than the API server's 1.31")
    assert rows["x86-1"]["result"] == "ok" and "trails the cluster's 1.31" in rows["x86-1"]["note"]


def test_a_recorded_release_is_checked_to_the_patch(lab):
    clusters.record_release(lab.directory, "1.31.4")
    cluster = clusters.load_cluster(lab.directory)

    assert all(row["result"] == "ok" for row in verify(cluster, healthy_nodes()))
    rows = by_node(verify(cluster, replaced(healthy_nodes(), "x86-1", kubelet="v1.31.2")))
    assert rows["x86-1"]["problems"][0]["message"] == "kubelet v1.31.2, not the cluster's v1.31.4"
    assert f"`pi-image seed-iso --cluster {lab.directory} --node x86-1`" in rows["x86-1"]["problems"][0]["fix"]


def test_architecture_and_runtime_are_the_profiles(lab):
    nodes = replaced(replaced(healthy_nodes(), "x86-1", arch="arm64"), "pi-worker1", runtime="docker://24.0.7")
    rows = by_node(verify(lab, nodes))

    assert checks(rows["x86-1"]) == ["architecture"]
    assert rows["x86-1"]["problems"][0]["message"] == "architecture arm64, not amd64 (profile x86-worker)"
    assert checks(rows["pi-worker1"]) == ["runtime"]
    assert rows["pi-worker1"]["problems"][0]["message"] == \
        "container runtime docker://24.0.7, not containerd (profile worker-8g)"


def test_missing_and_extra_nodes_are_listed(lab):
    stale = node_object("pi-worker1-old", "192.168.6.15", ready="Unknown")
    foreign = node_object("nuc", "192.168.6.99", arch="amd64")
    nodes = [n for n in healthy_nodes() if n["metadata"]["name"] != "jetson1"] + [stale, foreign]
    rows = verify(lab, nodes)

    assert [(row["node"], row["result"]) for row in rows] == [
        ("pi-master1", "ok"), ("pi-worker1", "ok"), ("jetson1", "missing"), ("x86-1", "ok"),
        ("nuc", "extra"), ("pi-worker1-old", "extra")]
    missing, stale_row, foreign_row = rows[2], rows[5], rows[4]
    assert missing["problems"][0]["message"] == "not in the cluster"
    assert "pi-image status" in missing["problems"][0]["fix"]
    assert f"`pi-image build --cluster {lab.directory} --node jetson1`" in missing["problems"][0]["fix"]
    assert stale_row["role"] is None and stale_row["ready"] == "Unknown"
    assert stale_row["problems"][0]["fix"] == "a stale namesake or a removed node: `kubectl delete node pi-worker1-old`"
    assert "pi-image cluster add-node" in foreign_row["problems"][0]["fix"]


def test_a_node_that_reported_nothing_yet_is_a_mismatch_not_a_crash(lab):
    bare = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "pi-worker1"}, "status": {}}
    rows = by_node(verify(lab, [bare if n["metadata"]["name"] == "pi-worker1" else n for n in healthy_nodes()]))

    assert checks(rows["pi-worker1"]) == ["ready", "internal-ip", "kubelet", "architecture", "os", "runtime"]
    assert rows["pi-worker1"]["problems"][0]["message"] == "no Ready condition yet"


# --- the command ----------------------------------------------------------------------------------------------------

def test_verify_all_good_exits_0_with_one_line_per_node(lab, kubectl):
    (lab.directory / "kubeconfig").write_text("apiVersion: v1\n")
    kubectl.serve(healthy_nodes())
    result = pi_image(lab.directory)

    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert [line.split()[:2] for line in lines[:4]] == [[name, "OK"] for name, *_ in INVENTORY]
    assert lines[1].split() == ["pi-worker1", "OK", "192.168.6.15", "v1.31.4", "linux/arm64", "containerd://1.7.24"]
    assert lines[4] == "4 of 4 inventory node(s) as built; 0 mismatched, 0 not in the cluster, 0 not in the inventory"
    assert kubectl.calls() == [f"--kubeconfig {lab.directory / 'kubeconfig'} --request-timeout 20s get nodes -o json"]


def test_verify_exits_1_and_says_what_is_wrong_per_node(lab, kubectl, tmp_path):
    nodes = replaced(replaced(healthy_nodes(), "pi-worker1", ip="192.168.0.23"), "x86-1", kubelet="v1.27.5")
    kubectl.serve([n for n in nodes if n["metadata"]["name"] != "jetson1"]
                  + [node_object("pi-worker1-old", "192.168.6.15", ready="NotReady")])
    config = tmp_path / "admin.conf"
    config.write_text("apiVersion: v1\n")
    result = pi_image(lab.directory, "--kubeconfig", config)

    assert result.exit_code == 1
    lines = {line.split()[0]: line for line in result.output.splitlines()[:-1]}
    assert lines["pi-master1"].split()[1] == "OK"
    assert lines["pi-worker1"].split()[1] == "MISMATCH" and "INTERNAL-IP 192.168.0.23" in lines["pi-worker1"]
    assert lines["x86-1"].split()[1] == "MISMATCH" and "kubelet v1.27.5 trails the API server's 1.31" in lines["x86-1"]
    assert lines["jetson1"].split()[1] == "MISSING"
    assert lines["pi-worker1-old"].split()[1] == "EXTRA"
    assert "kubectl delete node pi-worker1-old" in lines["pi-worker1-old"]
    assert result.output.splitlines()[-1] == \
        "1 of 4 inventory node(s) as built; 2 mismatched, 1 not in the cluster, 1 not in the inventory"
    assert kubectl.calls()[0].startswith(f"--kubeconfig {config} ")


def test_verify_json_is_the_rows_and_keeps_the_exit_status(lab, kubectl):
    (lab.directory / "kubeconfig").write_text("apiVersion: v1\n")
    kubectl.serve(replaced(healthy_nodes(), "pi-worker1", ready="NotReady"))
    result = pi_image(lab.directory, "--json")

    assert result.exit_code == 1
    rows = by_node(json.loads(result.output))
    assert rows["pi-worker1"]["result"] == "mismatch" and rows["pi-worker1"]["ready"] == "False"
    assert rows["pi-master1"] == {
        "node": "pi-master1", "role": "control-plane", "result": "ok", "ready": "True",
        "internal_ip": "192.168.6.10", "kubelet_version": "v1.31.4", "architecture": "arm64",
        "operating_system": "linux", "container_runtime": "containerd://1.7.24", "os_image": "Ubuntu 24.04.1 LTS",
        "problems": [], "note": None}


def one_line_error(result):
    lines = result.output.strip().splitlines()
    return result.exit_code == 1 and len(lines) == 1 and lines[0].startswith("pi-image: error: ")


def test_kubectl_failing_is_one_line_with_the_fix(lab, kubectl):
    (lab.directory / "kubeconfig").write_text("apiVersion: v1\n")
    kubectl.fail("The connection to the server 192.168.6.10:6443 was refused"
                 " - did you specify the right host or port?\n")
    result = pi_image(lab.directory)

    assert one_line_error(result), result.output
    assert "192.168.6.10:6443 was refused" in result.output and "is the master up?" in result.output
    assert f"pi-image cluster kubeconfig {lab.directory} -o {lab.directory / 'kubeconfig'}" in result.output


def test_kubectl_printing_no_node_list_is_one_line(lab, kubectl):
    (lab.directory / "kubeconfig").write_text("apiVersion: v1\n")
    kubectl.prints("<html>proxy</html>")
    result = pi_image(lab.directory)

    assert one_line_error(result), result.output
    assert "printed no node list ('<html>proxy</html>')" in result.output


def test_no_kubeconfig_says_how_to_fetch_one(lab, kubectl, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    kubectl.serve(healthy_nodes())
    result = pi_image(lab.directory)

    assert one_line_error(result), result.output
    assert f"fetch it with `pi-image cluster kubeconfig {lab.directory}`" in result.output
    assert one_line_error(pi_image(lab.directory, "--kubeconfig", tmp_path / "nope.conf"))


def test_home_kubeconfig_is_the_fallback(lab, kubectl, tmp_path, monkeypatch):
    home = tmp_path / "home"
    (home / ".kube").mkdir(parents=True)
    (home / ".kube" / "config").write_text("apiVersion: v1\n")
    monkeypatch.setenv("HOME", str(home))
    kubectl.serve(healthy_nodes())

    assert pi_image(lab.directory).exit_code == 0
    assert kubectl.calls()[0].startswith(f"--kubeconfig {home / '.kube' / 'config'} ")


def test_help_has_examples():
    result = CliRunner().invoke(verify_command, ["--help"])

    assert result.exit_code == 0 and "pi-image cluster verify lab --json" in result.output
