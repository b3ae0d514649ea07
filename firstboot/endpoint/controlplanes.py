"""What a joining control plane needs besides a token: the certificate key, a live kubeadm-certs Secret, and no
stale etcd member of its name.

`kubeadm join --control-plane` downloads the cluster's certificates from the kubeadm-certs Secret, encrypted with the
certificate key; kubeadm deletes that Secret two hours after it was uploaded. Before the key is handed out, the Secret
is uploaded again (`kubeadm init phase upload-certs --upload-certs --config F`) when it is older than CERTS_FRESH
(1 h 50 min: the joining master has ten minutes left to download it) or its age is unknown. The key goes to kubeadm in
F only, a 0600 temporary file (in the endpoint unit's private /tmp: its sandbox keeps /etc read-only), deleted at
once (kubeadm refuses --certificate-key together with --config, and a command line is readable by every local user);
kubeadm is told not to print it. The time of the upload is kept in the shared state (store.share_value), so every
master knows it.

A master card reflashed finds its old etcd member still in the cluster, and `kubeadm join` would fail on it: the
member named like the node is removed through the API, with etcdctl inside this master's etcd Pod.
"""

import json
import logging
import os
import tempfile

from ..joinconfig import api_version_for, to_yaml
from .kube import ClusterError
from .settings import SettingsError

log = logging.getLogger("pi-image.tokend")

CERTS_FRESH = 110 * 60  # seconds an uploaded kubeadm-certs Secret is handed out for (kubeadm deletes it at 2 h)
CERTS_UPLOADED_AT = "kubeadm-certs-uploaded-at"
ETCDCTL = ["etcdctl", "--endpoints=https://127.0.0.1:2379", "--cacert=/etc/kubernetes/pki/etcd/ca.crt",
           "--cert=/etc/kubernetes/pki/etcd/server.crt", "--key=/etc/kubernetes/pki/etcd/server.key"]
UPLOAD_TIMEOUT = 120


class ControlPlaneJoins(object):
    """The certificate key and etcd membership for control planes joining through this master's endpoint."""

    def __init__(self, settings, admin, store, clock):
        self.settings = settings
        self.admin = admin
        self.store = store
        self._clock = clock

    def certificate_key(self):
        """The cluster's certificate key, its kubeadm-certs Secret uploaded again first when it may be gone before
        the joining master reads it. SettingsError when this endpoint has no key; ClusterError when kubeadm fails."""
        key = self.settings.certificate_key()
        uploaded = self.store.shared_value(CERTS_UPLOADED_AT)
        if not isinstance(uploaded, (int, float)) or not 0 <= self._clock() - uploaded < CERTS_FRESH:
            self._upload(key)
            self.store.share_value(CERTS_UPLOADED_AT, self._clock())
        return key

    def redacted(self, text):
        """`text` without the certificate key (a node's report may quote kubeadm, and reports are kept and audited)."""
        if not self.settings.control_planes():
            return text
        try:
            return text.replace(self.settings.certificate_key(), "<certificate key>")
        except SettingsError:
            return text

    def _upload(self, key):
        descriptor, path = tempfile.mkstemp(prefix="upload-certs-", suffix=".yaml")  # 0600
        try:
            with os.fdopen(descriptor, "w") as handle:
                handle.write(self._upload_config(key))
            result = self.admin.commands.run(
                ["kubeadm", "init", "phase", "upload-certs", "--upload-certs", "--config", path,
                 "--skip-certificate-key-print", "--kubeconfig", self.admin.kubeconfig], timeout=UPLOAD_TIMEOUT)
        finally:
            os.unlink(path)
        if not result.ok:
            raise ClusterError("cannot upload the control-plane certificates (kubeadm init phase upload-certs): "
                               + result.summary().replace(key, "<certificate key>"))
        log.info("uploaded the control-plane certificates again (the kubeadm-certs Secret, for 2 h)")

    def _upload_config(self, key):
        """What `kubeadm init phase upload-certs --config` reads: an InitConfiguration with the certificateKey and
        a ClusterConfiguration naming the running version (else kubeadm would look the newest one up online)."""
        version = self.admin.cluster_version()
        api_version = api_version_for(version)
        documents = [{"apiVersion": api_version, "kind": "InitConfiguration", "certificateKey": key},
                     {"apiVersion": api_version, "kind": "ClusterConfiguration", "kubernetesVersion": version,
                      "controlPlaneEndpoint": self.settings.api_server}]
        return "---\n".join(to_yaml(document) + "\n" for document in documents)

    def remove_etcd_member(self, name):
        """Remove the etcd member named `name` (a reflashed master's old one); its id in hex, or None when etcd has
        no member of that name."""
        pod = "etcd-" + self._etcd_node(name)
        listing = self._etcdctl(pod, "member", "list", "-w", "json")
        try:
            members = json.loads(listing.stdout)["members"]
            found = [member["ID"] for member in members if member.get("name") == name]
        except (ValueError, KeyError, TypeError):
            raise ClusterError("etcdctl member list printed no member list: " + listing.summary()) from None
        if not found:
            return None
        member = "{:x}".format(found[0])
        self._etcdctl(pod, "member", "remove", member)
        return member

    def _etcd_node(self, name):
        """The control plane whose etcd Pod is asked: this master, else another one than `name`."""
        here = self.settings.node_name()
        others = sorted(self.settings.control_planes() - {name})
        if here != name and (here in others or not others):
            return here
        if not others:
            raise ClusterError("no other control plane's etcd to remove {}'s member through".format(name))
        return others[0]

    def _etcdctl(self, pod, *args):
        result = self.admin.kubectl("-n", "kube-system", "exec", pod, "--", *(ETCDCTL + list(args)), timeout=60)
        if not result.ok:
            raise ClusterError("etcdctl {} in {} failed: {}".format(" ".join(args[:2]), pod, result.summary()))
        return result
