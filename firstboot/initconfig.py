"""The configuration `kubeadm init` gets on a control-plane node: InitConfiguration, ClusterConfiguration and
KubeletConfiguration, in the kubeadm schema of the node's own kubeadm (v1beta4 from 1.31, v1beta3 before).

The advertise address and node-ip are the node's address on the cluster subnet (never the Wi-Fi or DHCP address
kubeadm would pick from the default route); the control-plane endpoint is the cluster's api_server, so a second
control plane or a virtual IP can come later. The bootstrap token kubeadm init insists on creating is one chosen
here, short-lived, and deleted by the agent right after init: nodes get theirs from the token endpoint.

The first of several control planes gives `certificateKey` too (the cluster's, read from its card): `kubeadm init
--upload-certs` encrypts the certificates with it into the kubeadm-certs Secret, and the other control planes, which
get the same key from the token endpoint, decrypt them when they join.
"""

from . import joinconfig, protocol
from .runtime import RUNTIMES

KUBELET_API_VERSION = "kubelet.config.k8s.io/v1beta1"
INIT_TOKEN_TTL = "15m0s"
BOOTSTRAP_GROUP = "system:bootstrappers:kubeadm:default-node-token"
DNS_DOMAIN = "cluster.local"


def documents(kubeadm_version, api_server, token, node, node_ip, runtime, pod_subnet, service_subnet,
              patches=None, certificate_key=None):
    """[InitConfiguration, ClusterConfiguration, KubeletConfiguration] as dicts.

    `kubeadm_version` is the installed kubeadm's ("v1.31.4"): the control plane runs that release.
    `api_server` is HOST:PORT; the API server binds that port on `node_ip`. `certificate_key`: the cluster's
    (64 hex), for `kubeadm init --upload-certs`; None for a cluster of one control plane.
    """
    api_version = joinconfig.api_version_for(kubeadm_version)
    bind_port = protocol.split_host_port(api_server, protocol.API_SERVER_PORT)[1]
    init = {
        "apiVersion": api_version,
        "kind": "InitConfiguration",
        "bootstrapTokens": [{"token": token, "ttl": INIT_TOKEN_TTL, "usages": ["signing", "authentication"],
                             "groups": [BOOTSTRAP_GROUP]}],
        "localAPIEndpoint": {"advertiseAddress": node_ip, "bindPort": bind_port},
        "nodeRegistration": {"name": node, "criSocket": RUNTIMES[runtime].cri_socket,
                             "kubeletExtraArgs": joinconfig.kubelet_extra_args(api_version, {"node-ip": node_ip}),
                             "imagePullPolicy": joinconfig.IMAGE_PULL_POLICY},
    }
    if certificate_key is not None:
        init["certificateKey"] = certificate_key
    if patches:
        init["patches"] = {"directory": patches}
    cluster = {
        "apiVersion": api_version,
        "kind": "ClusterConfiguration",
        "kubernetesVersion": kubeadm_version,
        "controlPlaneEndpoint": api_server,
        "networking": {"podSubnet": pod_subnet, "serviceSubnet": service_subnet, "dnsDomain": DNS_DOMAIN},
        "apiServer": {"certSANs": [node_ip, node]},
    }
    kubelet = {"apiVersion": KUBELET_API_VERSION, "kind": "KubeletConfiguration", "cgroupDriver": "systemd"}
    return [init, cluster, kubelet]


def render(*args, **kwargs):
    """The init configuration file's text: documents() as YAML documents separated by '---'."""
    return "---\n".join(joinconfig.to_yaml(document) + "\n" for document in documents(*args, **kwargs))
