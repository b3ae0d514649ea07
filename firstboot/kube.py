"""What the token endpoint asks of the cluster, through kubeadm and kubectl on the master."""

import json
import secrets
import string
import threading
import time

from . import protocol

_TOKEN_ALPHABET = string.ascii_lowercase + string.digits


class ClusterError(Exception):
    """kubeadm or kubectl failed; the message is one line, tokens redacted."""


def new_bootstrap_token():
    """A bootstrap token generated here ('[a-z0-9]{6}.[a-z0-9]{16}'), so no tool has to print one back to us."""
    def pick(count):
        return "".join(secrets.choice(_TOKEN_ALPHABET) for _ in range(count))
    return pick(6) + "." + pick(16)


class ClusterAdmin(object):
    """kubeadm/kubectl calls with the admin kubeconfig; the cluster version is cached briefly."""

    def __init__(self, commands, kubeconfig, version_ttl_seconds=60.0, node_list_ttl_seconds=1.0,
                 clock=time.monotonic):
        self.commands = commands
        self.kubeconfig = kubeconfig
        self._version_ttl = version_ttl_seconds
        self._node_list_ttl = node_list_ttl_seconds
        self._clock = clock
        self._version = None
        self._version_expiry = 0.0
        self._version_lock = threading.Lock()
        self._node_names = None
        self._node_names_expiry = 0.0
        self._node_names_lock = threading.Lock()

    def _kubectl(self, *args):
        return self.commands.run(["kubectl", "--kubeconfig", self.kubeconfig] + list(args))

    def _kubeadm(self, *args):
        return self.commands.run(["kubeadm"] + list(args) + ["--kubeconfig", self.kubeconfig])

    def cluster_version(self):
        """The API server's gitVersion, e.g. 'v1.31.4'."""
        with self._version_lock:
            if self._version is None or self._clock() >= self._version_expiry:
                result = self._kubectl("version", "-o", "json")
                try:
                    self._version = json.loads(result.stdout)["serverVersion"]["gitVersion"]
                except (ValueError, KeyError, TypeError):
                    raise ClusterError("cannot read the cluster version (kubectl version): " + result.summary())
                self._version_expiry = self._clock() + self._version_ttl
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
        result = self._kubectl("get", "node", name, "-o", "json")
        if not result.ok:
            if "NotFound" in result.stderr or "not found" in result.stderr:
                return None
            raise ClusterError("cannot look up node {} (kubectl get node): {}".format(name, result.summary()))
        try:
            conditions = json.loads(result.stdout)["status"]["conditions"]
        except (ValueError, KeyError, TypeError):
            return False
        return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)

    def _listed_node_names(self):
        with self._node_names_lock:
            if self._clock() >= self._node_names_expiry:
                result = self._kubectl("get", "nodes", "-o", "name")
                self._node_names = {line.split("/", 1)[-1] for line in result.stdout.split()} if result.ok else None
                self._node_names_expiry = self._clock() + self._node_list_ttl
            return self._node_names

    def delete_node(self, name):
        result = self._kubectl("delete", "node", name)
        if not result.ok and "NotFound" not in result.stderr:
            raise ClusterError("cannot delete node {} (kubectl delete node): {}".format(name, result.summary()))

    def create_token(self, token, node):
        """Register `token` as a bootstrap token for `node`, valid for protocol.TOKEN_TTL."""
        result = self._kubeadm("token", "create", token, "--ttl", protocol.TOKEN_TTL,
                               "--description", "pi-image " + node)
        if not result.ok:
            raise ClusterError("kubeadm token create failed: " + result.summary())

    def delete_token(self, token_id):
        """Best effort: a token that is already gone is fine, it expires anyway."""
        return self._kubeadm("token", "delete", token_id).ok
