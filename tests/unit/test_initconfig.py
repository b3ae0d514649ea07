"""The configuration a control-plane node gives `kubeadm init`, parsed back with PyYAML and checked field by field."""

import pytest
import yaml

from firstboot import initconfig
from firstboot.runtime import RUNTIMES

TOKEN = "abcdef.0123456789abcdef"


def parsed(kubeadm_version, patches=None):
    text = initconfig.render(kubeadm_version, "192.168.6.11:6443", TOKEN, "pi-master1", "192.168.6.11", "containerd",
                             "10.244.0.0/16", "10.96.0.0/12", patches)
    return list(yaml.safe_load_all(text))


@pytest.mark.parametrize("version, api_version", [("v1.30.8", "kubeadm.k8s.io/v1beta3"),
                                                  ("v1.33.2", "kubeadm.k8s.io/v1beta4")])
def test_init_configuration_field_by_field(version, api_version):
    init, cluster, kubelet = parsed(version)

    assert init["apiVersion"] == api_version and init["kind"] == "InitConfiguration"
    assert init["localAPIEndpoint"] == {"advertiseAddress": "192.168.6.11", "bindPort": 6443}
    registration = init["nodeRegistration"]
    assert registration["name"] == "pi-master1"
    assert registration["criSocket"] == RUNTIMES["containerd"].cri_socket == "unix:///var/run/containerd/containerd.sock"
    if api_version.endswith("v1beta4"):
        assert registration["kubeletExtraArgs"] == [{"name": "node-ip", "value": "192.168.6.11"}]
    else:
        assert registration["kubeletExtraArgs"] == {"node-ip": "192.168.6.11"}
    [token] = init["bootstrapTokens"]
    assert token == {"token": TOKEN, "ttl": "15m0s", "usages": ["signing", "authentication"],
                     "groups": ["system:bootstrappers:kubeadm:default-node-token"]}
    assert "patches" not in init

    assert cluster["apiVersion"] == api_version and cluster["kind"] == "ClusterConfiguration"
    assert cluster["kubernetesVersion"] == version
    assert cluster["controlPlaneEndpoint"] == "192.168.6.11:6443"
    assert cluster["networking"] == {"podSubnet": "10.244.0.0/16", "serviceSubnet": "10.96.0.0/12",
                                     "dnsDomain": "cluster.local"}
    assert cluster["apiServer"] == {"certSANs": ["192.168.6.11", "pi-master1"]}

    assert kubelet == {"apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
                       "cgroupDriver": "systemd"}


def test_a_kubelet_patch_directory_is_passed_on():
    init = parsed("v1.31.4", patches="/var/lib/pi-image/kubeadm-patches")[0]
    assert init["patches"] == {"directory": "/var/lib/pi-image/kubeadm-patches"}


def test_the_api_server_port_is_the_bind_port():
    text = initconfig.render("v1.31.4", "10.0.2.2:16443", TOKEN, "m", "10.0.2.15", "containerd", "10.244.0.0/16",
                             "10.96.0.0/12")
    init, cluster, _ = yaml.safe_load_all(text)
    assert init["localAPIEndpoint"]["bindPort"] == 16443
    assert cluster["controlPlaneEndpoint"] == "10.0.2.2:16443"


def test_every_scalar_is_a_string_or_the_port():
    """Hand-written YAML (the agent is stdlib-only): nothing may be read as another type than intended."""
    def scalars(value):
        if isinstance(value, dict):
            for item in value.values():
                yield from scalars(item)
        elif isinstance(value, list):
            for item in value:
                yield from scalars(item)
        else:
            yield value

    values = [v for document in parsed("v1.31.4") for v in scalars(document)]
    assert all(isinstance(v, str) for v in values if v != 6443)


def test_the_first_of_several_control_planes_gives_init_the_clusters_certificate_key():
    key = "0123456789abcdef" * 4
    text = initconfig.render("v1.31.4", "192.168.6.10:6443", TOKEN, "pi-master1", "192.168.6.11", "containerd",
                             "10.244.0.0/16", "10.96.0.0/12", certificate_key=key)
    init, cluster, _ = yaml.safe_load_all(text)
    assert init["certificateKey"] == key
    assert cluster["controlPlaneEndpoint"] == "192.168.6.10:6443"
    assert "certificateKey" not in parsed("v1.31.4")[0], "one control plane: no key"
