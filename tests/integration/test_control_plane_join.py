"""Three control planes (issue 29), the device side: the first master initializes with --upload-certs and kube-vip,
the others join as control planes with the key an endpoint gives them, nodes fail over to any master's endpoint, and
a kill or a reflash in the middle ends in the same cluster. The real agent in sandbox roots, the real endpoint, the
kubeadm/kubectl stand-ins (join_fakes/several_masters.py)."""

import json
import os
import re
import signal
import stat

import pytest
import yaml
from join_fakes.harness import run_agent, start_agent, wait_for
from join_fakes.several_masters import MASTERS, VIP, WORKER, SeveralMastersLab

STATE = "var/lib/pi-image"


@pytest.fixture
def lab(tmp_path):
    world = SeveralMastersLab(tmp_path)
    yield world
    world.stop()


def agent(lab, root, name, **options):
    """Run `name`'s agent on `root` to the end, as that machine."""
    lab.be(name)
    return run_agent(root, lab.fake, timeout=options.get("timeout", 90), address=None)


def kube_vip_kubeconfig(root):
    pod = yaml.safe_load((root / "etc/kubernetes/manifests/kube-vip.yaml").read_text())
    return [volume["hostPath"]["path"] for volume in pod["spec"]["volumes"]]


def no_key_anywhere(lab, *texts):
    """The certificate key is on no command line (calls.jsonl) and in no log or output given."""
    key = lab.certificate_key
    assert key not in (lab.fake.state / "calls.jsonl").read_text()
    for text in texts:
        assert key not in text


@pytest.fixture
def formed(lab):
    """pi-master1 initialized the cluster and serves joins."""
    root = lab.node_root("pi-master1")
    result = agent(lab, root, "pi-master1")
    assert result.returncode == 0, result.stderr
    lab.start_endpoint("pi-master1")
    return root, result


def test_the_first_master_finds_no_cluster_and_initializes_it_with_upload_certs_and_kube_vip(lab, formed):
    root, result = formed

    [init_call] = lab.fake.calls("kubeadm", "init")
    assert init_call == ["init", "--config", str(root / STATE / "init-config.yaml"), "--skip-token-print",
                         "--upload-certs", "--skip-certificate-key-print"]
    [init] = lab.fake.inits()
    assert init["config"]["InitConfiguration"]["certificateKey"] == "<redacted>"  # the stand-in checked it first
    assert init["config"]["ClusterConfiguration"]["controlPlaneEndpoint"] == VIP + ":6443"
    assert "no control plane answers, so there is no cluster yet" in result.stderr
    [asked] = [line for line in result.stderr.splitlines() if "no token endpoint answered" in line]
    assert [lab.ports[address] for address in (VIP + ":8443", MASTERS["pi-master2"] + ":8443",
                                               MASTERS["pi-master3"] + ":8443")] == \
        [int(port) for port in re.findall(r"cannot reach 127\.0\.0\.1:(\d+)", asked)], "the VIP's, then the others'"
    # kube-vip had super-admin.conf while init waited (the stand-in's init fails otherwise on 1.31), admin.conf now
    assert "kube-vip holds {} while init runs (with /etc/kubernetes/super-admin.conf)".format(VIP) in result.stderr
    assert kube_vip_kubeconfig(root) == ["/etc/kubernetes/admin.conf"]
    cluster = lab.fake.cluster()
    assert lab.members() == ["pi-master1"] and cluster["kubeadm_certs"]["uploaded"]
    assert cluster["nodes"] == {"pi-master1": "Ready"}
    assert ["start", "pi-image-tokend.service"] in lab.fake.calls("systemctl")
    assert json.loads((root / STATE / "firstboot.done").read_text()) == {"node": "pi-master1", "initialized": True}
    no_key_anywhere(lab, result.stderr, result.stdout, (root / STATE / "firstboot.log").read_text())


def test_before_1_29_kube_vip_keeps_admin_conf_during_init(tmp_path):
    lab = SeveralMastersLab(tmp_path, version="1.28", kubeadm="v1.28.15")
    root = lab.node_root("pi-master1")

    result = agent(lab, root, "pi-master1")

    assert result.returncode == 0, result.stderr
    assert "while init runs (with /etc/kubernetes/admin.conf)" in result.stderr
    assert kube_vip_kubeconfig(root) == ["/etc/kubernetes/admin.conf"]
    assert lab.fake.inits()[0]["config"]["InitConfiguration"]["apiVersion"] == "kubeadm.k8s.io/v1beta3"


def test_a_second_master_joins_as_a_control_plane_through_a_fallback_endpoint(lab, formed):
    root = lab.node_root("pi-master2")

    result = agent(lab, root, "pi-master2")

    assert result.returncode == 0, result.stderr
    [join] = lab.fake.joins()
    assert join["node"] == "pi-master2"
    assert join["config"]["controlPlane"] == {
        "localAPIEndpoint": {"advertiseAddress": MASTERS["pi-master2"], "bindPort": 6443},
        "certificateKey": "<redacted>"}
    assert join["config"]["discovery"]["bootstrapToken"]["apiServerEndpoint"] == VIP + ":6443"
    assert lab.members() == ["pi-master1", "pi-master2"]
    key_file = root / "etc/pi-image/cluster/secrets/certificate.key"
    assert key_file.read_text().strip() == lab.certificate_key and stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert kube_vip_kubeconfig(root) == ["/etc/kubernetes/admin.conf"]
    assert not (root / "etc/kubernetes/super-admin.conf").exists()
    assert (root / "root/.kube/config").read_bytes() == (root / "etc/kubernetes/admin.conf").read_bytes()
    assert json.loads((root / STATE / "control-plane.initialized").read_text())["joined"] is True
    assert len(lab.fake.inits()) == 1, "only the first inits"
    assert len(lab.fake.applies()) == 1, "the pod network is the first's to apply"
    assert lab.fake.calls("systemctl", "start").count(["start", "pi-image-tokend.service"]) == 2
    assert json.loads((root / STATE / "firstboot.done").read_text()) == {"node": "pi-master2", "joined": True}
    assert "answered; it is asked first from now on" in result.stderr
    assert not (root / STATE / "join-config.yaml").exists() and not (root / STATE / "issued-token.json").exists()
    no_key_anywhere(lab, result.stderr, (root / STATE / "firstboot.log").read_text())


def test_a_worker_of_several_masters_joins_through_a_fallback_while_the_vip_is_down(lab, formed):
    root = lab.node_root(WORKER)

    result = agent(lab, root, WORKER)

    assert result.returncode == 0, result.stderr
    [join] = lab.fake.joins()
    assert join["node"] == WORKER and "controlPlane" not in join["config"]
    assert "cannot reach 127.0.0.1:{}".format(lab.ports[VIP + ":8443"]) in result.stderr
    assert "127.0.0.1:{} answered".format(lab.ports[MASTERS["pi-master1"] + ":8443"]) in result.stderr
    assert lab.members() == ["pi-master1"]


def test_a_kill_in_the_middle_of_a_control_plane_join_is_reset_and_joined_once(lab, formed):
    root = lab.node_root("pi-master2")
    lab.be("pi-master2")
    lab.fake.knob("join_sleep", 30)
    running = start_agent(root, lab.fake)
    wait_for(lambda: "pi-master2" in lab.members(), timeout=30)  # its etcd member is in, its kubelet not yet
    os.killpg(running.pid, signal.SIGKILL)
    running.wait()
    lab.fake.knob("join_sleep", 0)
    tokens_before = len(lab.fake.created_tokens())

    result = agent(lab, root, "pi-master2")

    assert result.returncode == 0, result.stderr
    kubeadm = [args[0] for args in lab.fake.calls("kubeadm") if args[0] in ("join", "reset")]
    assert kubeadm == ["join", "reset", "join"], "kubeadm reset takes the member out before the second join"
    assert lab.members() == ["pi-master1", "pi-master2"]
    assert len(lab.fake.created_tokens()) == tokens_before, "the kept token (and key) are used again"
    assert kube_vip_kubeconfig(root) == ["/etc/kubernetes/admin.conf"]
    assert (root / STATE / "firstboot.done").exists()


def test_a_reflashed_first_master_joins_the_cluster_the_others_keep_instead_of_initializing(lab, formed):
    second = lab.node_root("pi-master2")
    assert agent(lab, second, "pi-master2").returncode == 0
    lab.start_endpoint("pi-master2")
    lab.stop_endpoint("pi-master1")  # its card died: its endpoint is gone, its Node goes NotReady
    lab.fake.set_node("pi-master1", "NotReady")
    inits = len(lab.fake.inits())
    reflashed = lab.node_root("pi-master1")

    result = agent(lab, reflashed, "pi-master1")

    assert result.returncode == 0, result.stderr
    assert len(lab.fake.inits()) == inits, "a cluster answered: no second init"
    assert [join["node"] for join in lab.fake.joins()] == ["pi-master2", "pi-master1"]
    assert lab.members() == ["pi-master1", "pi-master2"], "its old member was removed, the new one added"
    assert json.loads((reflashed / STATE / "control-plane.initialized").read_text())["joined"] is True
    assert kube_vip_kubeconfig(reflashed) == ["/etc/kubernetes/admin.conf"]
    no_key_anywhere(lab, result.stderr)


def test_a_first_master_that_once_found_the_cluster_never_initializes_when_every_endpoint_is_down(lab, formed):
    second = lab.node_root("pi-master2")
    assert agent(lab, second, "pi-master2").returncode == 0
    lab.start_endpoint("pi-master2")
    lab.stop_endpoint("pi-master1")
    lab.fake.set_node("pi-master1", "NotReady")
    lab.fake.knob("expire_before_join", 1)  # its join fails once: it is reset, and the power goes
    reflashed = lab.node_root("pi-master1")
    lab.be("pi-master1")
    assert run_agent(reflashed, lab.fake, "--max-attempts", "1").returncode == 1
    lab.stop_endpoint("pi-master2")  # then every endpoint is down
    inits = len(lab.fake.inits())

    result = run_agent(reflashed, lab.fake, "--max-attempts", "3")

    assert result.returncode == 1
    assert len(lab.fake.inits()) == inits and "no cluster yet" not in result.stderr
    assert (reflashed / STATE / "cluster-found").exists()
