"""The token endpoint's decisions for an authenticated node: issue a token, make it wait, or refuse — and say why.

HTTP and authentication live in handler.py; by the time a request gets here its nonce and its signature - made with
the credential of a generation no older than the node's current one - were checked. A generation joins once: after it
has joined, its credential gets no other token (a rebuilt image, generation + 1, joins with no manual step). Every
decision writes one audit line (never a token) and updates the node's row in the state store.

A control plane of several joins with `"control_plane": true` and gets the cluster's certificate key with its token
(controlplanes.py); any other node asking for it is refused and audited (refused-certificate-key). Where several
masters serve joins, a node's join or report is decided under its Lease (leases.py) as well as this process's lock.
"""

import logging
import threading
import time

from .. import protocol
from . import discovery, state
from .audit import audit
from .controlplanes import ControlPlaneJoins
from .kube import ClusterError, new_bootstrap_token
from .leases import NoLeases
from .settings import SettingsError
from .upgrades import Upgrades

log = logging.getLogger("pi-image.tokend")

TOKEN_LIFETIME_SECONDS = 30 * 60
REPORT_MESSAGE_LIMIT = 2000


class JoinIssuer(object):
    """Answers /v1/join and /v1/report for nodes, and /v1/admin/... for the operator, once authenticated."""

    def __init__(self, settings, store, admin, clock=time.time, leases=None):
        self.settings = settings
        self.store = store
        self.admin = admin
        self._clock = clock
        self._leases = leases or NoLeases()
        self.control_planes = ControlPlaneJoins(settings, admin, store, clock)
        self.upgrades = Upgrades(settings, admin, clock)
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

    def admin_kubeconfig(self, address):
        """(HTTP status, answer) for an authenticated operator: the cluster's admin kubeconfig, once it exists."""
        path = self.settings.file("kubeconfig")
        try:
            with open(path) as handle:
                text = handle.read()
        except OSError as err:
            audit("admin-kubeconfig-missing", protocol.ADMIN_NAME, address, "{}: {}".format(path, err.strerror))
            return 503, {"error": "no admin kubeconfig yet ({}): the control plane is not initialized; see "
                                  "`journalctl -u pi-image-firstboot` on the master".format(path)}
        audit("admin-kubeconfig", protocol.ADMIN_NAME, address)
        return 200, {"kubeconfig": text}

    def admin_inventory(self, nodes, address):
        """(HTTP status, answer) for an authenticated operator's inventory: {name: generation}, kept from now on."""
        if not isinstance(nodes, dict) or not all(protocol.NODE_NAME_RE.match(str(name)) for name in nodes):
            return 400, {"error": "'nodes' must map node names to generations"}
        try:
            count = self.settings.replace_nodes(nodes)
        except SettingsError as err:
            audit("refused-admin-inventory", protocol.ADMIN_NAME, address, str(err))
            return 409, {"error": str(err)}
        audit("admin-inventory", protocol.ADMIN_NAME, address, "{} nodes".format(count))
        return 200, {"nodes": count}

    def admin_status(self, address):
        """(HTTP status, answer) for an authenticated operator: every node's public row (state.PUBLIC_COLUMNS), with
        "ready" and "kubelet_version" from the API server (None when kubectl cannot say) and the phases the endpoint
        saw itself, the inventory this endpoint goes by, its clock, the cluster's version and this card's upgrade
        (upgrades.py). Not audited: a status page asks every few seconds."""
        readiness = self._readiness()
        kubelets = {} if readiness is None else self.upgrades.kubelet_versions()
        now = self._clock()
        rows = {row["name"]: row for row in self.store.all()}
        nodes = []
        for name in sorted(set(rows) | set(readiness or {})):
            row = rows.get(name) or {"name": name, "phases": {}, "facts": {}}
            public = state.public_row(row)
            ready = None if readiness is None else readiness.get(name) or (False, None)
            public["phases"] = self._seen_phases(row, ready, now)
            public["ready"] = None if ready is None else ready[0]
            public["kubelet_version"] = kubelets.get(name)
            nodes.append(public)
        log.debug("status of %d nodes for %s", len(nodes), address)
        inventory = {name: self.settings.generation(name) for name in self.settings.known_nodes()}
        answer = {"nodes": nodes, "inventory": inventory, "server_time": now}
        answer.update(self.upgrades.status(readiness is not None))
        return 200, answer

    def _readiness(self):
        try:
            return self.admin.node_readiness()
        except ClusterError:
            return None

    def _seen_phases(self, row, ready, now):
        """The node's phases plus what the endpoint saw itself: the token it issued in this story (the node tells
        only with its next report) and Ready, kept from the first time the API server says so. `ready`: (ready,
        since), or None while the API server cannot say (the stored "ready" then stays)."""
        phases = dict(row.get("phases") or {})
        issued = row.get("token_issued_at")
        if issued and "token-issued" not in phases and issued >= phases.get("booted", 0):
            phases["token-issued"] = issued
        if ready is not None and not ready[0]:
            phases.pop("ready", None)
        elif ready is not None and "ready" not in phases:
            phases["ready"] = ready[1] or now
            if row.get("state") is not None:
                with self._node_lock(row["name"]):  # a report may have changed the phases since they were read
                    kept = dict((self.store.get(row["name"]) or {}).get("phases") or {}, ready=phases["ready"])
                    self.store.update(row["name"], phases=kept)
        return phases

    def admin_approve(self, name, replace, listed, address):
        """(HTTP status, answer) for an authenticated operator's `pi-image approve`: `name` may join (and, with
        `replace`, take over its Ready namesake once). A name this endpoint never heard of is approved only when the
        operator's inventory lists it (`listed`: this endpoint's copy may be older): a typo approves nothing."""
        with self._node_lock(name):
            if self.store.get(name) is None and name not in self.settings.known_nodes() and not listed:
                audit("refused-admin-approve", name, address, "unknown node")
                return 404, {"error": "node {} is in no inventory of the master and has not asked to join: nothing to "
                                      "approve".format(name)}
            self.store.approve(name, replace)
            approved = self.store.get(name)
        audit("admin-approve", name, address, "by " + protocol.ADMIN_NAME + ("; may replace its Ready namesake once"
                                                                             if replace else ""))
        return 200, {"node": name, "state": approved["state"]}

    def join(self, name, generation, facts, address, story=None, control_plane=False):
        """(HTTP status, answer) for a join request signed with the credential of `name`'s `generation`; its story
        is kept for a node the endpoint has a row of (never a stranger's, never an older card's). `control_plane`:
        the node asks to join as a control plane (the answer then carries the certificate key). NodeBusy when
        another master is deciding for the node."""
        if control_plane and name not in self.settings.control_planes():
            audit("refused-certificate-key", name, address, "not a control plane of this cluster")
            return 403, {"error": "node {} is not a control plane of this cluster: it gets no certificate key "
                                  "(build its image with a control-plane profile)".format(name)}
        with self._node_lock(name), self._leases.held(name):
            try:
                status, answer = self._join_locked(name, generation, facts, address, control_plane)
            except ClusterError as err:
                audit("error", name, address, str(err))
                self.store.update(name, last_error=str(err))
                status, answer = 503, {"error": "the cluster could not be reached to issue a token; see the token "
                                                "server log"}
            if story is not None and status not in (401, 403):
                self._keep_story(name, generation, story)
            return status, answer

    def _keep_story(self, name, generation, story):
        row = self.store.get(name) or {}
        changes = state.story_fields(story, self._clock(), row.get("facts"))
        if changes:
            changes["card_generation"] = generation
            self.store.update(name, **changes)

    def _join_locked(self, name, generation, facts, address, control_plane=False):
        if not self.is_allowed(name):
            if not self.settings.approval_mode:
                audit("refused-unknown", name, address)
                return 403, {"error": "node {} is not in this cluster's inventory".format(name)}
            self.store.update(name, state=state.PENDING, facts=facts, address=address)
            audit("pending", name, address)
            return 202, {"state": state.PENDING,
                         "message": "waiting for approval: run `pi-image approve {}`".format(name)}
        row = self.store.get(name) or {}
        if generation < (row.get("generation") or 0):  # a newer card got a token meanwhile (checked under the lock)
            audit("refused-signature", name, address, "an older card (generation {} of {})".format(
                generation, row["generation"]))
            return 401, {"error": "authentication failed"}
        if row.get("joined_generation") is not None and row["joined_generation"] >= generation:
            message = ("node {0} already joined with this image (generation {1}) and a credential joins once: to "
                       "join this device again, build its image again and flash it").format(name, generation)
            self.store.update(name, last_error=message)
            audit("refused-credential-used", name, address, message)
            return 409, {"error": message}
        refusal = self._version_refusal(facts)
        if refusal:
            return self._refuse(name, address, facts, "refused-version-skew", refusal)
        ready = self.admin.node_ready(name)
        if ready and not row.get("replace_allowed"):
            if row.get("state") == state.TOKEN_ISSUED and row.get("generation") == generation and \
                    self._token_still_valid(row):
                self.store.update(name, state=state.JOINED, joined_generation=generation)
                audit("already-joined", name, address)
                return 200, {"state": state.JOINED}
            return self._refuse(name, address, facts, "refused-ready-node-exists", (
                "a Ready node named {0} already exists; to replace it with this device run "
                "`pi-image approve {0} --replace`".format(name)))
        if ready is not None:
            self.admin.delete_node(name)
            audit("deleted-node", name, address, "replaced" if ready else "stale NotReady node")
        if not control_plane:
            return self._issue(name, generation, facts, address, row)
        return self._issue_control_plane(name, generation, facts, address, row)

    def _issue_control_plane(self, name, generation, facts, address, row):
        """A control plane's token and the certificate key, after its old etcd member (a card reflashed) is gone."""
        removed = self.control_planes.remove_etcd_member(name)
        if removed:
            audit("removed-etcd-member", name, address, "member " + removed + " of the node's previous card")
        try:
            key = self.control_planes.certificate_key()
        except SettingsError as err:
            audit("error", name, address, str(err))
            self.store.update(name, last_error=str(err))
            return 503, {"error": "this master cannot let control planes join: {}".format(err)}
        status, answer = self._issue(name, generation, facts, address, row, "with the certificate key")
        answer["certificate_key"] = key
        return status, answer

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

    def _issue(self, name, generation, facts, address, row, note=""):
        if row.get("token_id"):
            self.admin.delete_token(row["token_id"])
        token = new_bootstrap_token()
        issued_at = self._clock()
        self.admin.create_token(token, name, issued_at + TOKEN_LIFETIME_SECONDS)
        token_id = token.split(".")[0]
        self.store.update(name, state=state.TOKEN_ISSUED, token_id=token_id, token_issued_at=issued_at,
                          generation=generation, replace_allowed=0, facts=facts, address=address, last_error=None,
                          fix=None)
        audit("token-issued", name, address, "token_id=" + token_id + ("; " + note if note else ""))
        return 200, {
            "state": state.TOKEN_ISSUED,
            "api_server": self.settings.api_server,
            "token": token,
            "ca_cert_hashes": discovery.discovery_hashes_from_pem(self.settings.ca_cert_pem()),
            "kubernetes_version": self.admin.cluster_version(),
            "node_subnet": self.settings.node_subnet,
            "server_time": issued_at,
            "expires_in": TOKEN_LIFETIME_SECONDS,
        }

    def report(self, name, generation, body, address):
        """(HTTP status, answer) for a progress report; "joined" retires the node's token and its generation."""
        if not self.is_allowed(name) and self.store.get(name) is None:
            audit("refused-report-unknown", name, address)
            return 403, {"error": "node {} is not in this cluster's inventory".format(name)}
        report_state = body.get("state")
        if report_state not in protocol.REPORT_STATES:
            return 400, {"error": "state must be one of " + ", ".join(protocol.REPORT_STATES)}
        message = self.control_planes.redacted(protocol.redact(str(body.get("message", ""))))[:REPORT_MESSAGE_LIMIT]
        with self._node_lock(name), self._leases.held(name):
            row = self.store.get(name) or {}
            changes = state.story_fields(body.get("story"), self._clock(), row.get("facts"))
            changes.update(card_generation=generation,
                           last_report="{}: {}".format(report_state, message) if message else report_state)
            if report_state == "failed":
                changes.update(state=state.FAILED, last_error=message, fix=state.story_fix(body.get("story")))
            elif report_state == "joined":
                changes.update(state=state.JOINED, last_error=None, fix=None, token_id=None,
                               joined_generation=max(generation, row.get("joined_generation") or 0))
                if row.get("token_id"):
                    self.admin.delete_token(row["token_id"])
            self.store.update(name, **changes)
        audit("report-" + report_state, name, address, message)
        return 200, {"state": changes.get("state", row.get("state"))}
