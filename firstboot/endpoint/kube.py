"""What the token endpoint asks of the cluster, through kubectl on the master."""

import calendar
import json
import secrets
import string
import threading
import time

from ..initconfig import BOOTSTRAP_GROUP as BOOTSTRAP_TOKEN_GROUP

_TOKEN_ALPHABET = string.ascii_lowercase + string.digits
READINESS_TIMEOUT = 5  # seconds one `kubectl get nodes` may take for a status answer
READINESS_FAILURE_TTL = 30.0  # an API server that did not answer is asked again after this long, not at each status


class ClusterError(Exception):
    """kubeadm or kubectl failed; the message is one line, tokens redacted."""


def new_bootstrap_token():
    """A bootstrap token generated here ('[a-z0-9]{6}.[a-z0-9]{16}'), so no tool has to print one back to us."""
    def pick(count):
        return "".join(secrets.choice(_TOKEN_ALPHABET) for _ in range(count))
    return pick(6) + "." + pick(16)


def bootstrap_token_secret(token, description, expires_at):
    """The Secret that *is* a bootstrap token - the very object `kubeadm token create` writes.

    Kubernetes keeps bootstrap tokens as Secrets of type bootstrap.kubernetes.io/token named bootstrap-token-<id> in
    kube-system: the API server's bootstrap authenticator and the signer of the cluster-info ConfigMap (what
    `kubeadm join` checks) read them from there, and `kubeadm token create` does nothing more than create one. Made
    here and handed to `kubectl create -f -` on stdin, the token never shows on a command line: `kubeadm token
    create <token>` would put it in /proc/PID/cmdline, readable by every local user, and kubeadm reads it from
    nowhere else. (`create`, not `apply`: apply would copy the whole object, secret included, into an annotation.)
    `expires_at` is a Unix time on the master's clock, as kubeadm's --ttl is.
    """
    token_id, token_secret = token.split(".")
    return {
        "apiVersion": "v1", "kind": "Secret", "type": "bootstrap.kubernetes.io/token",
        "metadata": {"name": "bootstrap-token-" + token_id, "namespace": "kube-system"},
        "stringData": {
            "token-id": token_id, "token-secret": token_secret, "description": description,
            "expiration": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(expires_at)),
            "usage-bootstrap-authentication": "true", "usage-bootstrap-signing": "true",
            "auth-extra-groups": BOOTSTRAP_TOKEN_GROUP,
        },
    }


class ClusterAdmin(object):
    """kubectl calls with the admin kubeconfig; the cluster version is cached briefly."""

    def __init__(self, commands, kubeconfig, version_ttl_seconds=60.0, node_list_ttl_seconds=1.0,
                 readiness_ttl_seconds=5.0, clock=time.monotonic):
        self.commands = commands
        self.kubeconfig = kubeconfig
        self._version_ttl = version_ttl_seconds
        self._node_list_ttl = node_list_ttl_seconds
        self._clock = clock
        self._version = None
        self._version_asked = 0.0
        self._version_lock = threading.Lock()
        self._node_names = None
        self._node_names_expiry = 0.0
        self._node_names_lock = threading.Lock()
        self._readiness_ttl = readiness_ttl_seconds
        self._nodes = None
        self._nodes_expiry = 0.0
        self._readiness_lock = threading.Lock()

    def kubectl(self, *args, **options):
        """`kubectl --kubeconfig ADMIN ARGS...` (CommandRunner.run's options: input_text, timeout)."""
        return self.commands.run(["kubectl", "--kubeconfig", self.kubeconfig] + list(args), **options)

    def cluster_version(self, max_age=None):
        """The API server's gitVersion, e.g. 'v1.31.4', asked again once older than `max_age` seconds (default
        version_ttl; 0: asked now, as an upgrade's decision must)."""
        with self._version_lock:
            max_age = self._version_ttl if max_age is None else max_age
            if self._version is None or self._clock() >= self._version_asked + max_age:
                result = self.kubectl("version", "-o", "json")
                try:
                    self._version = json.loads(result.stdout)["serverVersion"]["gitVersion"]
                except (ValueError, KeyError, TypeError):
                    raise ClusterError("cannot read the cluster version (kubectl version): "
                                       + result.summary()) from None
                self._version_asked = self._clock()
            return self._version

    def node_ready(self, name):
        """True/False for the Node's Ready condition, None if no Node of that name exists.

        A name missing from a node list at most node_list_ttl old counts as absent: one kubectl call then serves a
        whole burst of fresh nodes. Should a namesake register in that second, nothing is lost: kubeadm join itself
        refuses to take over a Ready node. Names that are listed are always looked up fresh.
        """
        listed = self._listed_node_names()
        if listed is not None and name not in listed:
            return None
        result = self.kubectl("get", "node", name, "-o", "json")
        if not result.ok:
            if "NotFound" in result.stderr or "not found" in result.stderr:
                return None
            raise ClusterError("cannot look up node {} (kubectl get node): {}".format(name, result.summary()))
        try:
            conditions = json.loads(result.stdout)["status"]["conditions"]
        except (ValueError, KeyError, TypeError):
            return False
        return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)

    def node_readiness(self):
        """{name: (ready, since)} for every Node: its Ready condition and when that last changed (Unix time on the API
        server's clock, or None); None when kubectl cannot say within READINESS_TIMEOUT. One `kubectl get nodes`,
        kept readiness_ttl seconds (READINESS_FAILURE_TTL when it failed), serves every status asked meanwhile (a
        page polling every 2 s, a second viewer)."""
        nodes = self._node_list()
        return None if nodes is None else {name: (node.ready, node.since) for name, node in nodes.items()}

    def kubelet_versions(self):
        """{name: the Node's status.nodeInfo.kubeletVersion, or None} from the same node list as node_readiness();
        ClusterError when kubectl cannot say."""
        nodes = self._node_list()
        if nodes is None:
            raise ClusterError("cannot list the nodes (kubectl get nodes): see the token server log")
        return {name: node.kubelet_version for name, node in nodes.items()}

    def _node_list(self):
        with self._readiness_lock:
            if self._clock() >= self._nodes_expiry:
                result = self.kubectl("get", "nodes", "-o", "json", "--request-timeout={}s".format(READINESS_TIMEOUT),
                                      timeout=READINESS_TIMEOUT + 3)
                self._nodes = _node_list(result.stdout) if result.ok else None
                ttl = self._readiness_ttl if self._nodes is not None else READINESS_FAILURE_TTL
                self._nodes_expiry = self._clock() + ttl
            return self._nodes

    def _listed_node_names(self):
        with self._node_names_lock:
            if self._clock() >= self._node_names_expiry:
                result = self.kubectl("get", "nodes", "-o", "name")
                self._node_names = {line.split("/", 1)[-1] for line in result.stdout.split()} if result.ok else None
                self._node_names_expiry = self._clock() + self._node_list_ttl
            return self._node_names

    def delete_node(self, name):
        """Remove the Node object `name` (gone already is fine)."""
        result = self.kubectl("delete", "node", name)
        if not result.ok and "NotFound" not in result.stderr:
            raise ClusterError("cannot delete node {} (kubectl delete node): {}".format(name, result.summary()))

    def create_token(self, token, node, expires_at):
        """Register `token` as a bootstrap token for `node` until `expires_at` (see bootstrap_token_secret)."""
        secret = bootstrap_token_secret(token, "pi-image " + node, expires_at)
        result = self.kubectl("create", "-f", "-", input_text=json.dumps(secret))
        if not result.ok:
            raise ClusterError("cannot create the bootstrap token (kubectl create secret): " + result.summary())

    def delete_token(self, token_id):
        """Best effort: a token that is already gone is fine, it expires anyway."""
        return self.kubectl("-n", "kube-system", "delete", "secret", "bootstrap-token-" + token_id).ok


class NodeFacts(object):
    """What the endpoint reads of one Node: Ready, since when (Unix time or None), its kubelet's version (or None)."""

    __slots__ = ("ready", "since", "kubelet_version")

    def __init__(self, ready, since, kubelet_version):
        self.ready = ready
        self.since = since
        self.kubelet_version = kubelet_version


def _node_list(text):
    """{name: NodeFacts} from `kubectl get nodes -o json`, None if it is not a node list."""
    try:
        items = json.loads(text)["items"]
        found = {}
        for item in items:
            status = item.get("status") or {}
            conditions = status.get("conditions") or []
            ready = [c for c in conditions if c.get("type") == "Ready"]
            since = _unix_time(ready[0].get("lastTransitionTime")) if ready else None
            version = (status.get("nodeInfo") or {}).get("kubeletVersion")
            found[item["metadata"]["name"]] = NodeFacts(bool(ready) and ready[0].get("status") == "True", since,
                                                        version if isinstance(version, str) else None)
        return found
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def _unix_time(text):
    """Unix time of an RFC 3339 UTC time as the API server writes it ('2024-12-05T01:02:03Z'), or None."""
    try:
        return float(calendar.timegm(time.strptime(text, "%Y-%m-%dT%H:%M:%SZ")))
    except (TypeError, ValueError):
        return None
