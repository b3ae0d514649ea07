"""Step 4 of first boot: the kubeadm JoinConfiguration, in the schema the node's kubeadm understands.

v1beta4 (kubeadm >= 1.31) takes kubeletExtraArgs as a list of name/value pairs; v1beta3 (1.22-1.35) as a map.
Written as YAML by hand (standard library only): block structure with every scalar JSON-quoted, which YAML reads as
a double-quoted string. The node's own kubelet settings - sized to the board (node.json `kubelet`), another
resolv.conf than kubeadm gives it (LocalSetup.kubelet_resolv_conf()) - go in a kubeadm patch (`patches.directory`,
target kubeletconfiguration, kubeadm >= 1.25), for join and init alike.

A control plane of several joins with `controlPlane` (the same shape in v1beta3 and v1beta4): its API server's
address and port, and the certificate key that decrypts the cluster's certificates from the kubeadm-certs Secret. The
key is in the file only (0600, deleted after the join), never on a command line.
"""

import json

from . import protocol
from .runtime import RUNTIMES

KUBELET_PATCH = "kubeletconfiguration+strategic.yaml"
# kubeadm's preflight pulls only images the runtime lacks: an offline card's bundle has them all (firstboot/bundle.py)
IMAGE_PULL_POLICY = "IfNotPresent"


def api_version_for(kubernetes_version):
    """kubeadm.k8s.io/v1beta4 from 1.31 on, v1beta3 before."""
    return "kubeadm.k8s.io/v1beta4" if protocol.minor_version(kubernetes_version) >= (1, 31) \
        else "kubeadm.k8s.io/v1beta3"


def join_configuration(kubernetes_version, api_server, token, ca_cert_hashes, node, node_ip, runtime,
                       patches=None, certificate_key=None):
    """The JoinConfiguration as a dict; `patches` is the directory of kubeadm patches, if any; with a
    `certificate_key` the node joins as a control plane whose API server listens on `node_ip` at the port of
    `api_server` (kube-vip's virtual address carries the same port)."""
    api_version = api_version_for(kubernetes_version)
    extra_args = kubelet_extra_args(api_version, {"node-ip": node_ip})
    config = {
        "apiVersion": api_version,
        "kind": "JoinConfiguration",
        "discovery": {"bootstrapToken": {
            "apiServerEndpoint": api_server, "token": token, "caCertHashes": list(ca_cert_hashes)}},
        "nodeRegistration": {"name": node, "criSocket": RUNTIMES[runtime].cri_socket, "kubeletExtraArgs": extra_args,
                             "imagePullPolicy": IMAGE_PULL_POLICY},
    }
    if certificate_key is not None:
        config["controlPlane"] = {
            "localAPIEndpoint": {"advertiseAddress": node_ip,
                                 "bindPort": protocol.split_host_port(api_server, protocol.API_SERVER_PORT)[1]},
            "certificateKey": certificate_key}
    if patches:
        config["patches"] = {"directory": patches}
    return config


def kubelet_extra_args(api_version, arguments):
    """`arguments` ({flag: value}) in the shape `api_version` reads: v1beta4 a list of name/value pairs,
    v1beta3 a map."""
    if api_version.endswith("v1beta4"):
        return [{"name": name, "value": value} for name, value in sorted(arguments.items())]
    return dict(arguments)


def kubelet_patch(settings):
    """The text of KUBELET_PATCH: `settings` ({KubeletConfiguration field: value}) over the cluster's kubelet config."""
    return to_yaml(settings) + "\n"


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


def render(*args, **kwargs):
    """The JoinConfiguration file's text (join_configuration()'s arguments)."""
    return to_yaml(join_configuration(*args, **kwargs)) + "\n"
