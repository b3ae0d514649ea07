"""The stand-in kubeadm's part of several control planes, called by fake_tool.py with the fake cluster's state
(cluster.json, locked for the call): the kubeadm-certs Secret, etcd's members, kube-vip's kubeconfig while init
waits, and what `kubeadm join` with a controlPlane section checks. Messages are kubeadm's and etcd's own.

cluster.json keys kept here:

    kubeadm_certs   {"key_sha256": hex SHA-256 of the certificate key, "uploaded": unix time}: the kubeadm-certs Secret
                    that `kubeadm init --upload-certs` and `kubeadm init phase upload-certs --upload-certs` write; gone
                    CERTS_TTL seconds later (the real one is owned by a bootstrap token of that lifetime). The key
                    itself is kept nowhere.
    etcd_members    [{"id": "<16 hex>", "name", "peer_urls": ["https://ADDR:2380"]}]: init and control-plane joins add
                    one, `kubeadm reset` on that machine removes its own (kubeadm's remove-etcd-member phase)
    etcd_roots      {member id: $FAKE_ROOT of the machine that runs it}
"""

import hashlib
import os
import random
import re
import time

CERTS_TTL = 2 * 3600
CERTIFICATE_KEY = re.compile(r"^[0-9a-f]{64}$")
KUBE_VIP_POD = "etc/kubernetes/manifests/kube-vip.yaml"  # below a machine's root
CERTS_GONE = ('error execution phase control-plane-prepare/download-certs: error downloading certs: error downloading '
              'the secret: Secret "kubeadm-certs" was not found in the "kube-system" Namespace. This Secret might have '
              'expired. Please, run `kubeadm init phase upload-certs --upload-certs` on a control plane to generate a '
              'new one')
WRONG_KEY = ("error execution phase control-plane-prepare/download-certs: error downloading certs: error decoding "
             "secret data with provided key: cipher: message authentication failed")


def key_problem(key, field):
    """kubeadm's validation error for a certificateKey that is not 32 bytes in hex, else None."""
    if isinstance(key, str) and CERTIFICATE_KEY.match(key):
        return None
    return "{}: Invalid value: \"<redacted>\": certificate key must be a hex-encoded 32-byte AES key".format(field)


def upload_certs(state, key):
    """The kubeadm-certs Secret (re)written, encrypted with `key`."""
    state["kubeadm_certs"] = {"key_sha256": hashlib.sha256(key.encode()).hexdigest(), "uploaded": time.time()}


def download_problem(state, key):
    """What `kubeadm join --control-plane` says when it cannot decrypt the certificates with `key`, else None."""
    certs = state.get("kubeadm_certs")
    if not certs or time.time() > certs["uploaded"] + CERTS_TTL:
        return CERTS_GONE
    if hashlib.sha256(key.encode()).hexdigest() != certs["key_sha256"]:
        return WRONG_KEY
    return None


def add_member(state, name, address, root):
    """etcd's new member for `name` at `address` on the machine `root`; etcd's error if one has its peer URL."""
    members = state.setdefault("etcd_members", [])
    peer_url = "https://{}:2380".format(address)
    if any(peer_url in member["peer_urls"] or member["name"] == name for member in members):
        return ("error execution phase control-plane-join/etcd: error creating local etcd static pod manifest file: "
                "etcdserver: Peer URLs already exists")
    member_id = "{:016x}".format(random.getrandbits(64))
    members.append({"id": member_id, "name": name, "peer_urls": [peer_url]})
    state.setdefault("etcd_roots", {})[member_id] = root
    return None


def remove_members_of(state, root):
    """`kubeadm reset` on `root`: the etcd members that machine runs leave the cluster."""
    roots = state.get("etcd_roots", {})
    gone = {member_id for member_id, where in roots.items() if where == root}
    state["etcd_members"] = [member for member in state.get("etcd_members", []) if member["id"] not in gone]
    state["etcd_roots"] = {member_id: where for member_id, where in roots.items() if member_id not in gone}


def forget_all(state):
    """The cluster's etcd and its Secret, gone with it."""
    for key in ("etcd_members", "etcd_roots", "kubeadm_certs"):
        state.pop(key, None)


def kube_vip_problem(root, minor):
    """Why kube-vip (a static Pod below `root`) cannot bring the virtual address up while init waits, else None:
    from 1.29 admin.conf has no rights before init made its RBAC (kube-vip issue #684), and before 1.29 there is no
    super-admin.conf to mount."""
    import yaml

    path = os.path.join(root, KUBE_VIP_POD)
    if not root or not os.path.exists(path):
        return None
    with open(path) as handle:
        pod = yaml.safe_load(handle)
    mounted = [volume["hostPath"]["path"] for volume in pod["spec"].get("volumes", []) if "hostPath" in volume]
    wanted = "/etc/kubernetes/super-admin.conf" if minor >= 29 else "/etc/kubernetes/admin.conf"
    if wanted in mounted:
        return None
    if minor >= 29:
        return ('kube-vip: error retrieving resource lock kube-system/plndr-cp-lock: leases.coordination.k8s.io '
                '"plndr-cp-lock" is forbidden: User "kubernetes-admin" cannot get resource "leases" in API group '
                '"coordination.k8s.io" in the namespace "kube-system" (mounted: {})'.format(", ".join(mounted)))
    return 'kube-vip: MountVolume.SetUp failed for volume "kubeconfig": hostPath type check failed: {} is not a ' \
        'file'.format(", ".join(mounted))


def join_preflight_problems(root):
    """kubeadm join's preflight errors for a control plane on the machine `root` (its manifests directory)."""
    manifests = os.path.join(root, "etc/kubernetes/manifests")
    if root and os.path.isdir(manifests) and os.listdir(manifests):
        return ["[ERROR DirAvailable--etc-kubernetes-manifests]: /etc/kubernetes/manifests is not empty"]
    return []
