"""kube-vip's static pod for a control plane of several: it holds the API server's virtual IP (kubeadm's
controlPlaneEndpoint) on whichever control plane leads, and answers ARP for it there.

The image is pinned in data/kube-vip.yaml (with its source). The manifest is what that release's own generator
prints for `kube-vip manifest pod --address VIP --controlplane --arp --leaderElection` (generatePodSpec in
pkg/kubevip/config_generator.go), written here as data so the build needs neither the image nor the network:

- ARP mode, control plane only: `cp_enable` and no `svc_enable` (no Services of type LoadBalancer), leader election
  through the Lease `plndr-cp-lock` in kube-system, so exactly one control plane holds the address at a time.
- `address`, not the legacy `vip_address`: since v1.x the manager refuses vip_address without vip_subnet in
  control-plane ARP mode (Config.CheckSubnetExists), while `address` gets its /32 by itself.
- No `vip_interface`: kube-vip's manager then takes the interface of the default route (IPv4 first, then IPv6;
  vip.GetDefaultGatewayInterface) and follows it if that route moves, which on a node of the cluster is the interface
  of its node subnet (a board with Wi-Fi and Ethernet up routes through one of them: pin its address on that one).
- Its kubeconfig is /etc/kubernetes/admin.conf from the host (hostPath, as the generator mounts it outside the
  cluster); on Kubernetes >= 1.29 the first master's agent swaps in super-admin.conf while `kubeadm init` runs (the
  admin.conf's RBAC binding does not exist yet: kube-vip issue #684), and back afterwards.

The agent copies the file (firstboot.nodeconfig.KUBE_VIP_MANIFEST) into /etc/kubernetes/manifests before `kubeadm
init`, or after `kubeadm join --control-plane` (whose preflight wants that directory empty).
"""

from __future__ import annotations

from typing import Any

import yaml

from .. import DATA_DIR

KUBE_VIP_DATA = DATA_DIR / "kube-vip.yaml"
ADMIN_KUBECONFIG = "/etc/kubernetes/admin.conf"


def _pinned() -> dict[str, Any]:
    data = yaml.safe_load(KUBE_VIP_DATA.read_text())
    assert isinstance(data, dict)
    return data


def kube_vip_image() -> str:
    """The pinned image, ghcr.io/kube-vip/kube-vip:vX.Y.Z (an --offline control plane of several bundles it)."""
    return str(_pinned()["image"])


def kube_vip_manifest(vip: str, api_port: int) -> bytes:
    """The static pod holding `vip` (A.B.C.D) for the API servers listening on `api_port`, as YAML."""
    pinned = _pinned()
    lease = pinned["lease"]
    env: list[dict[str, Any]] = [
        {"name": "vip_arp", "value": "true"},
        {"name": "port", "value": str(api_port)},
        {"name": "vip_nodename", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
        {"name": "cp_enable", "value": "true"},
        {"name": "cp_namespace", "value": pinned["namespace"]},
        {"name": "vip_leaderelection", "value": "true"},
        {"name": "vip_leasename", "value": lease["name"]},
        {"name": "vip_leaseduration", "value": str(lease["duration"])},
        {"name": "vip_renewdeadline", "value": str(lease["renew_deadline"])},
        {"name": "vip_retryperiod", "value": str(lease["retry_period"])},
        {"name": "address", "value": vip},
        {"name": "prometheus_server", "value": pinned["prometheus_server"]},
    ]
    pod = {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "kube-vip", "namespace": pinned["namespace"]},
        "spec": {
            "containers": [{
                "name": "kube-vip", "image": pinned["image"], "imagePullPolicy": "IfNotPresent",
                "args": ["manager"], "env": env,
                "securityContext": {"capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]}},
                "volumeMounts": [{"name": "kubeconfig", "mountPath": ADMIN_KUBECONFIG}],
            }],
            "hostAliases": [{"ip": "127.0.0.1", "hostnames": ["kubernetes"]}],
            "hostNetwork": True,
            "volumes": [{"name": "kubeconfig", "hostPath": {"path": ADMIN_KUBECONFIG}}],
        },
    }
    return yaml.safe_dump(pod, sort_keys=False, default_flow_style=False).encode()
