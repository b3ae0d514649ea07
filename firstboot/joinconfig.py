"""Step 4 of first boot: the kubeadm JoinConfiguration, in the schema the node's kubeadm understands.

v1beta4 (kubeadm >= 1.31) takes kubeletExtraArgs as a list of name/value pairs; v1beta3 (1.22-1.35) as a map.
Written as YAML by hand (standard library only): block structure with every scalar JSON-quoted, which YAML reads as
a double-quoted string.
"""

import json

from . import protocol

CRI_SOCKETS = {
    "containerd": "unix:///var/run/containerd/containerd.sock",
    "docker": "unix:///var/run/cri-dockerd.sock",
}


def api_version_for(kubernetes_version):
    """kubeadm.k8s.io/v1beta4 from 1.31 on, v1beta3 before."""
    return "kubeadm.k8s.io/v1beta4" if protocol.minor_version(kubernetes_version) >= (1, 31) \
        else "kubeadm.k8s.io/v1beta3"


def join_configuration(kubernetes_version, api_server, token, ca_cert_hashes, node, node_ip, runtime):
    """The JoinConfiguration as a dict."""
    api_version = api_version_for(kubernetes_version)
    if api_version.endswith("v1beta4"):
        extra_args = [{"name": "node-ip", "value": node_ip}]
    else:
        extra_args = {"node-ip": node_ip}
    return {
        "apiVersion": api_version,
        "kind": "JoinConfiguration",
        "discovery": {"bootstrapToken": {
            "apiServerEndpoint": api_server, "token": token, "caCertHashes": list(ca_cert_hashes)}},
        "nodeRegistration": {"name": node, "criSocket": CRI_SOCKETS[runtime], "kubeletExtraArgs": extra_args},
    }


def to_yaml(value, indent=0):
    """Block-style YAML for dicts, lists and scalars (scalars JSON-quoted)."""
    pad = " " * indent
    lines = []
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, (dict, list)) and item:
                lines.append("{}{}:".format(pad, key))
                lines.append(to_yaml(item, indent + 2))
            else:
                lines.append("{}{}: {}".format(pad, key, _scalar(item)))
    else:
        for item in value:
            if isinstance(item, (dict, list)) and item:
                nested = to_yaml(item, indent + 2).splitlines()
                lines.append("{}- {}".format(pad, nested[0].lstrip()))
                lines.extend(nested[1:])
            else:
                lines.append("{}- {}".format(pad, _scalar(item)))
    return "\n".join(lines)


def _scalar(value):
    if isinstance(value, (dict, list)):
        return "{}" if isinstance(value, dict) else "[]"
    return json.dumps(value)


def render(kubernetes_version, api_server, token, ca_cert_hashes, node, node_ip, runtime):
    """The JoinConfiguration file's text."""
    config = join_configuration(kubernetes_version, api_server, token, ca_cert_hashes, node, node_ip, runtime)
    return to_yaml(config) + "\n"
