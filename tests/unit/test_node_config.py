"""node.json is one type, NodeConfig (firstboot/nodeconfig.py): the builder assembles it, the agent reads it back and
checks it (issue 27, "one fact, one place"). The agent must accept every config the builder writes, byte for byte."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from builder import cluster as clusters
from builder.build import BuildRequest, BuildResult, Stamp
from builder.build.seed_iso import SeedIsoRequest
from builder.plan.steps import BuildContext
from firstboot.nodeconfig import ConfigError, ControlPlaneSettings, NodeConfig, load_node_config

KUBELET = {"maxPods": 110, "kubeReserved": {"cpu": "80m", "memory": "1843Mi"}}
WORKER = NodeConfig(node="pi-worker1", kubernetes_version="1.31", runtime="containerd",
                    runtime_packages=["containerd"], built_at=1700000000, kubelet=KUBELET, api_server="10.0.0.1:6443",
                    node_subnet="10.0.0.0/24", generation=3, endpoint="10.0.0.1:8443",
                    endpoint_fingerprint="sha256:" + "ab" * 32, credential="cd" * 32)
CONTROL_PLANE = NodeConfig(node="pi-master1", role="control-plane", kubernetes_version="1.31", runtime="containerd",
                           built_at=1700000000, api_server="10.0.0.1:6443", node_subnet="10.0.0.0/24", generation=1,
                           control_plane=ControlPlaneSettings(pod_subnet="10.244.0.0/16",
                                                              service_subnet="10.96.0.0/12", admin_user=None))
LOCAL = NodeConfig(node="lonely-pi", kubernetes_version="1.31", runtime="docker", built_at=1700000000)
PROFILE_IMAGE = NodeConfig(node="worker-8g", kubernetes_version="1.31", runtime="containerd",
                           api_server="10.0.0.1:6443", node_subnet="10.0.0.0/24", kubernetes_release="1.31.4",
                           unstamped=True)


def _node_json(config: NodeConfig) -> str:
    """node.json's text, as the firstboot step writes it."""
    return json.dumps(config.to_json(), indent=2, sort_keys=True) + "\n"


@pytest.mark.parametrize("config", [WORKER, CONTROL_PLANE, LOCAL, PROFILE_IMAGE], ids=lambda c: c.node)
def test_the_agent_reads_back_what_the_builder_writes(config: NodeConfig, tmp_path: Path) -> None:
    path = tmp_path / "node.json"
    path.write_text(_node_json(config))

    assert load_node_config(str(path)) == config
    assert _node_json(load_node_config(str(path))) == path.read_text()


def test_absent_keys_stay_absent_and_cluster_repeats_the_api_server_and_subnet() -> None:
    assert LOCAL.to_json() == {"node": "lonely-pi", "role": "worker", "kubernetes_version": "1.31",
                               "runtime": "docker", "runtime_packages": [], "built_at": 1700000000}
    assert PROFILE_IMAGE.to_json()["cluster"] == {"api_server": "10.0.0.1:6443", "node_subnet": "10.0.0.0/24"}
    assert PROFILE_IMAGE.to_json()["unstamped"] is True and "generation" not in PROFILE_IMAGE.to_json()
    assert CONTROL_PLANE.to_json()["control_plane"] == {"pod_subnet": "10.244.0.0/16",
                                                        "service_subnet": "10.96.0.0/12", "admin_user": None}
    assert "kubelet" not in WORKER.replace(kubelet={}).to_json()


def test_a_config_without_the_optional_keys_gets_the_agents_defaults() -> None:
    config = NodeConfig.from_json({"node": "pi", "kubernetes_version": "1.31", "runtime": "containerd"})

    assert (config.role, config.runtime_packages, config.kubelet, config.generation, config.unstamped) == \
        ("worker", (), {}, None, False)


@pytest.mark.parametrize("change, message", [
    ({"endpoint": "10.0.0.1:8443"}, "missing key(s) endpoint_fingerprint, credential, api_server, node_subnet"),
    ({"control_plane": {"pod_subnet": "10.244.0.0/16"}},
     "missing key(s) api_server, node_subnet, control_plane.service_subnet"),
    ({"control_plane": "yes"}, "control_plane must be an object"),
    ({"node": 5}, "node must be a string, not 5"),
    ({"generation": "2"}, "generation must be a whole number, not '2'"),
    ({"built_at": True}, "built_at must be a Unix time, not True"),
    ({"runtime": "cri-o"}, "runtime must be one of containerd, docker, not 'cri-o'"),
    ({"role": "master"}, "role must be one of worker, control-plane, not 'master'"),
    ({"kubelet": ["maxPods"]}, "kubelet must be an object"),
    ({"runtime_packages": "containerd"}, "runtime_packages must be a list of package names"),
])
def test_a_malformed_config_is_refused_naming_the_file_and_the_key(change: dict, message: str,
                                                                   tmp_path: Path) -> None:
    path = tmp_path / "node.json"
    path.write_text(json.dumps({"node": "pi", "kubernetes_version": "1.31", "runtime": "containerd", **change}))

    with pytest.raises(ConfigError) as refused:
        load_node_config(str(path))
    assert str(refused.value).startswith(f"{path}: ") and message in str(refused.value)


def test_replace_names_a_field_that_does_not_exist() -> None:
    with pytest.raises(TypeError, match="no field.*credentials"):
        WORKER.replace(credentials="x")


def test_a_cluster_node_config_is_what_the_agent_accepts(tmp_path: Path) -> None:
    cluster = clusters.init_cluster(tmp_path / "lab", "192.168.6.10:6443", "192.168.6.10:8443", "1.31",
                                    "192.168.6.0/24")
    clusters.add_node(cluster, "pi-master1", "master-2g", None, "control-plane", address="192.168.6.10")
    clusters.add_node(cluster, "pi-worker1", "worker-8g", None, "worker")

    worker = clusters.node_config(cluster, cluster.node("pi-worker1"))
    master = clusters.node_config(cluster, cluster.node("pi-master1"), admin_user="ubuntu")

    for config in (worker, master):
        assert NodeConfig.from_json(json.loads(_node_json(config))) == config
    assert worker.credential == cluster.credential(cluster.node("pi-worker1")) and worker.control_plane is None
    assert master.credential is None and master.control_plane == ControlPlaneSettings(
        pod_subnet=cluster.pod_subnet, service_subnet=cluster.service_subnet, admin_user="ubuntu")


@pytest.mark.parametrize("request_type", [BuildRequest, BuildResult, BuildContext, SeedIsoRequest, Stamp])
def test_wide_requests_take_keywords_only(request_type: type) -> None:
    with pytest.raises(TypeError, match="positional"):
        request_type("worker-8g")
