"""The version-skew guard (firstboot/preflight.py version_skew): after install and before a token is asked for or
kubeadm init runs, the installed kubeadm and kubelet must be the cluster's Kubernetes - its exact release when
node.json has one, else its minor. And the kubeadm configuration's schema follows the installed kubeadm."""

import logging
import random

import pytest

from firstboot import joinconfig, preflight
from firstboot.agent import Backoff, FirstBootAgent
from firstboot.commands import CommandResult
from firstboot.nodeconfig import AgentPaths, NodeConfig

FIX = ("rebuild the image with kube_install: release (it installs the cluster's exact release), or install {0} {1} "
       "on the node (and no other {0} on PATH)")


def test_the_clusters_exact_release_passes_and_another_patch_is_named_with_the_fix():
    assert preflight.version_skew("1.31", "1.31.4", [("kubeadm", "v1.31.4"), ("kubelet", "v1.31.4")]) is None

    assert preflight.version_skew("1.31", "1.31.4", [("kubeadm", "v1.31.4"), ("kubelet", "v1.31.2")]) == (
        "version skew: this node has kubelet v1.31.2 but the cluster runs Kubernetes 1.31.4: "
        + FIX.format("kubelet", "1.31.4"))


def test_without_an_exact_release_the_minor_decides():
    assert preflight.version_skew("1.31", None, [("kubeadm", "v1.31.9"), ("kubelet", "v1.31.0")]) is None

    assert preflight.version_skew("1.22", None, [("kubeadm", "v1.21.3"), ("kubelet", "v1.22.0")]) == (
        "version skew: this node has kubeadm v1.21.3 but the cluster runs Kubernetes 1.22: "
        + FIX.format("kubeadm", "1.22"))


def test_a_tool_that_cannot_tell_its_version_is_logged_not_judged(caplog):
    with caplog.at_level(logging.WARNING, logger="pi-image.agent"):
        assert preflight.version_skew("1.31", "1.31.4", [("kubeadm", ""), ("kubelet", "v1.31.4")]) is None

    assert "kubeadm cannot tell its version (it says '')" in caplog.text


class Tools:
    """A node whose kubeadm and kubelet say `version`; every other command succeeds silently."""

    def __init__(self, version):
        self.version = version
        self.calls = []

    def run(self, argv, input_text=None, timeout=None):
        self.calls.append(argv)
        if argv[:2] == ["kubeadm", "version"]:
            return CommandResult(argv, 0, self.version + "\n", "")
        if argv[:2] == ["kubelet", "--version"]:
            return CommandResult(argv, 0, "Kubernetes " + self.version + "\n", "")
        if argv[0] == "dpkg-query":
            return CommandResult(argv, 0, "containerd ii \nkubelet ii \nkubeadm ii \nkubectl ii \n", "")
        return CommandResult(argv, 0, "", "")

    def available(self, tool):
        return True


def agent_with(tmp_path, version, kubernetes_release=None):
    """A node without a cluster endpoint (it is done once local setup passes) whose tools say `version`."""
    for relative, text in {"proc/sys/net/bridge/bridge-nf-call-iptables": "1", "proc/sys/net/ipv4/ip_forward": "1",
                           "proc/swaps": "Filename\n", "sys/fs/cgroup/cgroup.controllers": "memory\n"}.items():
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_text(text)
    paths = AgentPaths(str(tmp_path))
    paths.ensure_state_dir()
    config = NodeConfig(node="pi", kubernetes_version="1.31", runtime="containerd", runtime_packages=["containerd"],
                        kubernetes_release=kubernetes_release)
    commands = Tools(version)
    agent = FirstBootAgent(config, paths, commands, Backoff(1.0, 8.0, random.Random(1)), max_attempts=3,
                           sleep=lambda seconds: None)
    agent.setup.runtime.problem = lambda: None  # containerd answers
    return agent, commands


def test_a_node_of_another_minor_gives_up_at_once_and_never_reaches_kubeadm(tmp_path, caplog):
    agent, commands = agent_with(tmp_path, "v1.30.2")

    assert agent.run() == 1

    assert "this node has kubeadm v1.30.2 but the cluster runs Kubernetes 1.31: rebuild the image" in caplog.text
    assert [call[1] for call in commands.calls if call[0] == "kubeadm"] == ["version"], "no init, no join, no retry"
    assert not (tmp_path / "var/lib/pi-image/firstboot.done").exists()


def test_a_node_of_the_clusters_release_goes_on(tmp_path):
    agent, commands = agent_with(tmp_path, "v1.31.4", kubernetes_release="1.31.4")

    assert agent.run() == 0

    assert ["kubelet", "--version"] in commands.calls
    assert (tmp_path / "var/lib/pi-image/firstboot.done").exists()


@pytest.mark.parametrize("version, schema", [
    ("v1.22.0", "kubeadm.k8s.io/v1beta3"), ("v1.30.9", "kubeadm.k8s.io/v1beta3"),
    ("v1.31.0", "kubeadm.k8s.io/v1beta4"), ("v1.33.2", "kubeadm.k8s.io/v1beta4"),
])
def test_the_kubeadm_schema_follows_the_installed_kubeadm(version, schema):
    assert joinconfig.api_version_for(version) == schema


def test_kubeadm_1_36_and_every_minor_from_1_31_never_gets_v1beta3():
    assert joinconfig.api_version_for("v1.36.0") == joinconfig.api_version_for("1.36") == "kubeadm.k8s.io/v1beta4"
    assert {joinconfig.api_version_for("v1.{}.0".format(minor)) for minor in range(31, 60)} == {
        "kubeadm.k8s.io/v1beta4"}
