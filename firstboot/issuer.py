"""The token endpoint's decisions for an authenticated node: issue a token, make it wait, or refuse — and say why.

HTTP and authentication live in tokend.py; by the time a request gets here its signature and nonce were checked.
Every decision writes one audit line (never a token) and updates the node's row in the state store.
"""

import logging
import threading
import time

from . import discovery, protocol, state
from .kube import ClusterError, new_bootstrap_token

audit_log = logging.getLogger("pi-image.audit")

TOKEN_LIFETIME_SECONDS = 30 * 60
REPORT_MESSAGE_LIMIT = 2000


def audit(decision, node, address, detail=""):
    """One line per decision: what, for whom, from where, why."""
    audit_log.info("decision=%s node=%s address=%s%s", decision, node, address,
                   " detail=" + protocol.redact(detail) if detail else "")


class JoinIssuer(object):
    """Answers /v1/join and /v1/report for nodes whose request was authenticated."""

    def __init__(self, settings, store, admin, clock=time.time):
        self.settings = settings
        self.store = store
        self.admin = admin
        self._clock = clock
        self._locks = {}
        self._locks_guard = threading.Lock()

    def _node_lock(self, name):
        with self._locks_guard:
            return self._locks.setdefault(name, threading.Lock())

    def is_allowed(self, name):
        """Inventory nodes and nodes an operator approved may join."""
        if name in self.settings.known_nodes():
            return True
        row = self.store.get(name)
        return bool(row and row["approved"])

    def join(self, name, facts, address):
        """(HTTP status, answer) for a join request."""
        with self._node_lock(name):
            try:
                return self._join_locked(name, facts, address)
            except ClusterError as err:
                audit("error", name, address, str(err))
                self.store.update(name, last_error=str(err))
                return 503, {"error": "the cluster could not be reached to issue a token; see the token server log"}

    def _join_locked(self, name, facts, address):
        if not self.is_allowed(name):
            if not self.settings.approval_mode:
                audit("refused-unknown", name, address)
                return 403, {"error": "node {} is not in this cluster's inventory".format(name)}
            self.store.update(name, state=state.PENDING, facts=facts, address=address)
            audit("pending", name, address)
            return 202, {"state": state.PENDING,
                         "message": "waiting for approval: run `pi-image approve {}`".format(name)}
        refusal = self._version_refusal(facts)
        if refusal:
            return self._refuse(name, address, facts, "refused-version-skew", refusal)
        row = self.store.get(name) or {}
        ready = self.admin.node_ready(name)
        if ready and not row.get("replace_allowed"):
            if row.get("state") == state.TOKEN_ISSUED and self._token_still_valid(row):
                audit("already-joined", name, address)
                return 200, {"state": state.JOINED}
            return self._refuse(name, address, facts, "refused-ready-node-exists", (
                "a Ready node named {0} already exists; to replace it with this device run "
                "`pi-image approve {0} --replace`".format(name)))
        if ready is not None:
            self.admin.delete_node(name)
            audit("deleted-node", name, address, "replaced" if ready else "stale NotReady node")
        return self._issue(name, facts, address, row)

    def _version_refusal(self, facts):
        cluster_version = self.admin.cluster_version()
        node_version = str(facts.get("kubeadm_version", ""))
        try:
            same_minor = protocol.minor_version(node_version) == protocol.minor_version(cluster_version)
        except ValueError:
            same_minor = False
        if same_minor:
            return None
        return ("version skew: this node has kubeadm {} but the cluster runs {}; rebuild the image with "
                "kubernetes_version {}.{}".format(node_version or "(unknown)", cluster_version,
                                                   *protocol.minor_version(cluster_version)))

    def _token_still_valid(self, row):
        return row.get("token_issued_at") and self._clock() - row["token_issued_at"] < TOKEN_LIFETIME_SECONDS

    def _refuse(self, name, address, facts, decision, message):
        self.store.update(name, state=state.FAILED, last_error=message, facts=facts, address=address)
        audit(decision, name, address, message)
        return 409, {"error": message}

    def _issue(self, name, facts, address, row):
        if row.get("token_id"):
            self.admin.delete_token(row["token_id"])
        token = new_bootstrap_token()
        self.admin.create_token(token, name)
        token_id = token.split(".")[0]
        self.store.update(name, state=state.TOKEN_ISSUED, token_id=token_id, token_issued_at=self._clock(),
                          replace_allowed=0, facts=facts, address=address, last_error=None)
        audit("token-issued", name, address, "token_id=" + token_id)
        return 200, {
            "state": state.TOKEN_ISSUED,
            "api_server": self.settings.api_server,
            "token": token,
            "ca_cert_hashes": discovery.discovery_hashes_from_pem(self.settings.ca_cert_pem()),
            "kubernetes_version": self.admin.cluster_version(),
            "node_subnet": self.settings.node_subnet,
            "server_time": self._clock(),
        }

    def report(self, name, body, address):
        """(HTTP status, answer) for a progress report; "joined" retires the node's token."""
        if not self.is_allowed(name) and self.store.get(name) is None:
            audit("refused-report-unknown", name, address)
            return 403, {"error": "node {} is not in this cluster's inventory".format(name)}
        report_state = body.get("state")
        if report_state not in protocol.REPORT_STATES:
            return 400, {"error": "state must be one of " + ", ".join(protocol.REPORT_STATES)}
        message = protocol.redact(str(body.get("message", "")))[:REPORT_MESSAGE_LIMIT]
        with self._node_lock(name):
            row = self.store.get(name) or {}
            changes = {"last_report": "{}: {}".format(report_state, message) if message else report_state}
            if report_state == "failed":
                changes.update(state=state.FAILED, last_error=message)
            elif report_state == "joined":
                changes.update(state=state.JOINED, last_error=None, token_id=None)
                if row.get("token_id"):
                    self.admin.delete_token(row["token_id"])
            self.store.update(name, **changes)
        audit("report-" + report_state, name, address, message)
        return 200, {"state": changes.get("state", row.get("state"))}
