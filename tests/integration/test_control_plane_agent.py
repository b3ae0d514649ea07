"""A freshly flashed control-plane node initializes the cluster by itself: the real agent in a sandbox root, with
kubeadm/kubectl stand-ins that check its init configuration the way kubeadm and the kubelet would."""

import json
import os
import re
import signal
import stat

import pytest
import yaml
from join_fakes.control_plane import ADMIN_ID, MASTER, MASTER_IP, ROOT_ID, ControlPlaneLab
from join_fakes.harness import TOKEN_SHAPE, run_agent, start_agent, wait_for

# the spec names /run; kubeadm's own default (and the join path's) is /var/run, a symlink to /run on every target
CRI_SOCKETS = ("unix:///run/containerd/containerd.sock", "unix:///var/run/containerd/containerd.sock")
BOOTSTRAP_GROUP = "system:bootstrappers:kubeadm:default-node-token"


@pytest.fixture
def make_master(tmp_path):
    """Factory for control-plane labs with other settings (each in a directory of its own)."""
    labs = []

    def build(**settings):
        base = tmp_path / "lab{}".format(len(labs))
        base.mkdir()
        labs.append(ControlPlaneLab(base, **settings))
        return labs[-1]
    return build


@pytest.fixture
def master(make_master):
    return make_master()


def first_index(lines, prefix):
    return next(index for index, line in enumerate(lines) if line.startswith(prefix))


def test_init_configuration_uses_the_subnet_address_and_the_clusters_settings_field_by_field(make_master):
    lab = make_master(api_server=MASTER_IP + ":16443", pod_subnet="10.32.0.0/16", service_subnet="10.112.0.0/12")
    root = lab.node_root()

    result = run_agent(root, lab.fake)

    assert result.returncode == 0, result.stderr
    [init] = lab.fake.inits()
    assert init["node"] == MASTER and init["root"] == str(root)
    assert init["config_mode"] == "0600"
    first, cluster, kubelet = (init["config"][kind] for kind in
                               ("InitConfiguration", "ClusterConfiguration", "KubeletConfiguration"))
    assert first["apiVersion"] == cluster["apiVersion"] == "kubeadm.k8s.io/v1beta4"
    # 10.0.2.15 has the default route and comes first; the node subnet's address wins
    assert first["localAPIEndpoint"] == {"advertiseAddress": MASTER_IP, "bindPort": 16443}
    assert first["nodeRegistration"]["name"] == MASTER
    assert first["nodeRegistration"]["criSocket"] in CRI_SOCKETS
    assert first["nodeRegistration"]["kubeletExtraArgs"] == [{"name": "node-ip", "value": MASTER_IP}]
    [token] = first["bootstrapTokens"]
    assert re.fullmatch(r"[a-z0-9]{6}\.<secret>", token.pop("token"))  # the stand-in redacts the secret
    assert token == {"ttl": "15m0s", "usages": ["signing", "authentication"], "groups": [BOOTSTRAP_GROUP]}
    assert cluster["kubernetesVersion"] == "v1.31.4"
    assert cluster["controlPlaneEndpoint"] == MASTER_IP + ":16443"
    assert cluster["networking"] == {"podSubnet": "10.32.0.0/16", "serviceSubnet": "10.112.0.0/12",
                                     "dnsDomain": "cluster.local"}
    assert cluster["apiServer"]["certSANs"] == [MASTER_IP, MASTER]
    assert kubelet == {"apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
                       "cgroupDriver": "systemd"}
    config_file = root / "var/lib/pi-image/init-config.yaml"
    if config_file.exists():
        assert stat.S_IMODE(config_file.stat().st_mode) == 0o600
    assert "running kubeadm init (advertise address {}, Kubernetes v1.31.4)".format(MASTER_IP) in result.stderr
    assert json.loads((root / "var/lib/pi-image/firstboot.done").read_text()) == {"node": MASTER, "initialized": True}
    assert (root / "var/lib/pi-image/control-plane.initialized").exists()
    assert not (root / "var/lib/pi-image/init-started").exists()
    assert lab.fake.cluster()["nodes"] == {MASTER: "Ready"}
    assert lab.fake.calls("kubeadm", "join") == []


@pytest.mark.parametrize("version, kubeadm, api_version, node_ip_arg", [
    ("1.30", "v1.30.6", "kubeadm.k8s.io/v1beta3", {"node-ip": MASTER_IP}),
    ("1.33", "v1.33.2", "kubeadm.k8s.io/v1beta4", [{"name": "node-ip", "value": MASTER_IP}]),
])
def test_init_configuration_is_in_the_schema_of_the_installed_kubeadm(make_master, version, kubeadm, api_version,
                                                                       node_ip_arg):
    lab = make_master(version=version, kubeadm=kubeadm)

    result = run_agent(lab.node_root(), lab.fake)

    assert result.returncode == 0, result.stderr
    [init] = lab.fake.inits()
    config = init["config"]
    assert config["InitConfiguration"]["apiVersion"] == config["ClusterConfiguration"]["apiVersion"] == api_version
    assert config["InitConfiguration"]["nodeRegistration"]["kubeletExtraArgs"] == node_ip_arg
    assert config["ClusterConfiguration"]["kubernetesVersion"] == kubeadm


def test_init_token_is_never_printed_nor_logged_and_is_deleted_right_after_init(master):
    root = master.node_root()

    result = run_agent(root, master.fake)

    assert result.returncode == 0, result.stderr
    [init_call] = master.fake.calls("kubeadm", "init")
    assert init_call == ["init", "--config", str(root / "var/lib/pi-image/init-config.yaml"), "--skip-token-print"]
    [init] = master.fake.inits()
    assert init["skip_token_print"] is True
    token_id = init["config"]["InitConfiguration"]["bootstrapTokens"][0]["token"].split(".")[0]
    assert master.fake.deleted_tokens() == [token_id]
    assert master.fake.cluster()["tokens"] == {}, "nodes get their tokens from the endpoint, never the init's"
    sequence = master.sequence()
    deleted = first_index(sequence, "kubectl --kubeconfig {} -n kube-system delete secret bootstrap-token-{}".format(
        root / "etc/kubernetes/admin.conf", token_id))
    assert deleted == first_index(sequence, "kubeadm init") + 1, "the token is spent at once: " + str(sequence)
    assert not [line for line in sequence if TOKEN_SHAPE.search(line.encode())]
    log = (root / "var/lib/pi-image/firstboot.log").read_text()
    assert not TOKEN_SHAPE.search((result.stderr + result.stdout + log).encode())
    # the config file may stay (0600, its token deleted); no other file on the device holds a token
    holders = [path for path in root.rglob("*") if path.is_file() and TOKEN_SHAPE.search(path.read_bytes())]
    assert [str(path.relative_to(root)) for path in holders] in ([], ["var/lib/pi-image/init-config.yaml"])


def test_admin_kubeconfig_is_copied_to_root_and_the_admin_user_private_to_each(master):
    root = master.node_root()

    result = run_agent(root, master.fake)

    assert result.returncode == 0, result.stderr
    admin_conf = (root / "etc/kubernetes/admin.conf").read_bytes()
    assert yaml.safe_load(admin_conf)["clusters"][0]["cluster"]["server"] == "https://{}:6443".format(MASTER_IP)
    for home, owner in ((root / "root", ROOT_ID), (root / "home/ubuntu", ADMIN_ID)):
        config, directory = home / ".kube/config", home / ".kube"
        assert config.read_bytes() == admin_conf
        mode, uid, gid = stat.S_IMODE(config.stat().st_mode), config.stat().st_uid, config.stat().st_gid
        assert (mode, uid, gid) == (0o600, owner, owner)
        assert (stat.S_IMODE(directory.stat().st_mode), directory.stat().st_uid) == (0o700, owner)


def test_an_admin_user_the_image_does_not_have_gets_no_kubeconfig_and_the_node_still_comes_up(make_master):
    lab = make_master(admin_user="pi")
    root = lab.node_root()

    result = run_agent(root, lab.fake)

    assert result.returncode == 0, result.stderr
    assert (root / "root/.kube/config").read_bytes() == (root / "etc/kubernetes/admin.conf").read_bytes()
    assert not (root / "home/pi").exists()
    assert "no user pi" in result.stderr


def test_flannel_is_applied_after_init_then_the_token_endpoint_is_started_and_the_node_is_ready(master):
    root = master.node_root()

    result = run_agent(root, master.fake)

    assert result.returncode == 0, result.stderr
    kubeconfig = str(root / "etc/kubernetes/admin.conf")
    [apply] = master.fake.applies()
    assert apply["file"] == str(root / "usr/lib/pi-image/cni/kube-flannel.yml") and apply["kubeconfig"] == kubeconfig
    assert apply["flannel_network"] == "10.244.0.0/16"
    assert {"kind": "DaemonSet", "name": "kube-flannel-ds", "namespace": "kube-flannel", "group": "apps"} in \
        apply["objects"]
    sequence = master.sequence()
    init, applied, started, ready = (first_index(sequence, prefix) for prefix in (
        "kubeadm init", "kubectl --kubeconfig {} apply -f".format(kubeconfig),
        "systemctl start pi-image-tokend.service", "kubectl --kubeconfig {} get node {} -o json".format(
            kubeconfig, MASTER)))
    assert init < applied < started < ready, sequence
    for line in ("kubeadm init done", "token endpoint started", "control plane {} is Ready".format(MASTER)):
        assert line in result.stderr
    row = master.state(root)
    assert row["state"] == "joined" and "initialized" in row["last_report"] and not row["last_error"]


def test_reboot_after_a_successful_init_never_inits_again(master):
    root = master.node_root()
    assert run_agent(root, master.fake).returncode == 0
    calls = len(master.fake.calls())

    again = run_agent(root, master.fake)

    assert again.returncode == 0 and "already done" in again.stderr
    assert len(master.fake.calls()) == calls
    (root / "var/lib/pi-image/firstboot.done").unlink()  # a power cut after init, before the agent marked done

    resumed = run_agent(root, master.fake)

    assert resumed.returncode == 0, resumed.stderr
    assert len(master.fake.calls("kubeadm", "init")) == 1 and master.fake.calls("kubeadm", "reset") == []
    assert master.fake.cluster()["initialized"] and master.fake.cluster()["nodes"] == {MASTER: "Ready"}
    assert (root / "var/lib/pi-image/firstboot.done").exists()


def test_failed_init_is_reset_and_the_second_init_succeeds(master):
    master.fake.knob("init_fail", 1)
    root = master.node_root()

    result = run_agent(root, master.fake)

    assert result.returncode == 0, result.stderr
    kubeadm = [args for args in master.fake.calls("kubeadm") if args[0] in ("init", "reset")]
    assert [args[0] for args in kubeadm] == ["init", "reset", "init"]
    [init] = master.fake.inits()
    socket = init["config"]["InitConfiguration"]["nodeRegistration"]["criSocket"]
    assert kubeadm[1] == ["reset", "-f", "--cri-socket", socket], "the runtime the init used"
    assert "couldn't initialize a Kubernetes cluster" in result.stderr
    assert master.state(root)["state"] == "joined"


def test_agent_gives_up_after_three_failed_inits_and_the_status_shows_why(master):
    master.fake.knob("init_fail", 5)
    root = master.node_root()

    result = run_agent(root, master.fake)

    assert result.returncode == 1
    assert [args[0] for args in master.fake.calls("kubeadm") if args[0] in ("init", "reset")] == \
        ["init", "reset"] * 3
    assert (master.fake.state / "init_fail").read_text() == "2"
    row = master.state(root)
    assert row["state"] == "failed"
    assert "couldn't initialize a Kubernetes cluster" in row["last_error"], "status shows kubeadm's error"
    [give_up] = [line for line in result.stderr.splitlines() if "giving up" in line]
    assert "kubeadm reset -f" in give_up and "reflash" in give_up
    assert master.fake.calls("systemctl", "start", "pi-image-tokend.service") == [] and master.fake.applies() == []
    assert not (root / "root/.kube").exists()
    for marker in ("control-plane.initialized", "firstboot.done"):
        assert not (root / "var/lib/pi-image" / marker).exists()


def test_power_cut_during_kubeadm_init_is_reset_before_the_next_init(master):
    root = master.node_root()
    master.fake.knob("init_sleep", 30)
    agent = start_agent(root, master.fake)
    wait_for(lambda: master.fake.calls("kubeadm", "init"), timeout=15)
    os.killpg(agent.pid, signal.SIGKILL)  # agent and kubeadm at once, like pulling the plug
    agent.wait()
    master.fake.knob("init_sleep", 0)
    assert (root / "var/lib/pi-image/init-started").exists()
    calls_before = len(master.fake.calls("kubeadm"))

    result = run_agent(root, master.fake)

    assert result.returncode == 0, result.stderr
    after = [args[0] for args in master.fake.calls("kubeadm")[calls_before:] if args[0] in ("init", "reset")]
    assert after == ["reset", "init"], "reset first: a second init over the first one's files fails kubeadm's preflight"
    assert "did not finish" in result.stderr
    assert [init["node"] for init in master.fake.inits()] == [MASTER]
    assert master.fake.cluster()["nodes"] == {MASTER: "Ready"}


def test_a_reboot_after_giving_up_gets_three_more_inits(master):
    master.fake.knob("init_fail", 4)
    root = master.node_root()
    boot_id = root / "proc/sys/kernel/random/boot_id"
    boot_id.parent.mkdir(parents=True)
    boot_id.write_text("5f1e0c55-0000-4000-8000-000000000001\n")
    assert run_agent(root, master.fake).returncode == 1
    boot_id.write_text("5f1e0c55-0000-4000-8000-000000000002\n")  # the operator powered the board off and on

    result = run_agent(root, master.fake)

    assert result.returncode == 0, result.stderr
    assert len(master.fake.calls("kubeadm", "init")) == 5
    assert master.state(root)["state"] == "joined"


def test_pod_network_apply_is_retried_while_the_api_server_refuses(master):
    master.fake.knob("apply_fail", 1)
    root = master.node_root()

    result = run_agent(root, master.fake, timeout=60)

    assert result.returncode == 0, result.stderr
    assert len(master.fake.calls("kubectl", "--kubeconfig", str(root / "etc/kubernetes/admin.conf"), "apply")) == 2
    assert "was refused" in result.stderr
    assert master.fake.cluster()["nodes"] == {MASTER: "Ready"}
    assert master.fake.calls("systemctl", "start", "pi-image-tokend.service") == [["start", "pi-image-tokend.service"]]
