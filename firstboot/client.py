"""The device side of the join protocol: pinned-TLS requests to the token endpoint.

The endpoint's certificate is trusted only if its SHA-256 fingerprint equals the pin in node.json — no CA, no
hostname, no validity dates (the Pi's clock may still be in 1970). The pin is checked on every connection, before a
byte is sent on it: also when http.client reconnects by itself because the server closed the last connection.

Joins and reports carry the node's story (optional, ignored by an older endpoint):

    "story": {"phases": {PHASE: unix time, ...}, "sent_at": unix time (the device's clock: the endpoint corrects
              the phases by its skew), "installed_from": "bundle" | "network", "node_ip", "arch", "os",
              "generation" (node.json's), "fix" (with a "failed" report: what fixes that failure)}

The host's admin requests: protocol.ADMIN_PATHS (nothing secret in the answers to status and approve).

A cluster of several control planes has an endpoint on each (all with the same certificate): the client asks its
endpoint, then each fallback in order when one cannot be reached (no connection, a broken exchange, another
certificate), and asks the one that answered first from then on. An answer, whatever its status, is never failed
over: it is that cluster's answer.
"""

import contextlib
import functools
import http.client
import json
import logging
import os
import re
import ssl
import time

from . import protocol
from .nodeconfig import write_private

log = logging.getLogger("pi-image.agent")

MAX_ANSWER_BYTES = 256 * 1024
MAX_STATUS_BYTES = 8 * 1024 * 1024  # an admin status: a row per node, up to a few KB each

BOOT_ID = "proc/sys/kernel/random/boot_id"  # below the root

# Where a one-line failure says what fixes it: "...: rebuild the card", "...; see `journalctl ...`", "... (check ...)"
_FIX_START = re.compile(r"(?:[:;]\s+|\s+\()(?=(?:rebuild|reflash|flash|build|run|check|see|add|give|pass|power|fix|"
                        r"set|use|write|to replace|to join|wait|waiting)\b)")


def split_fix(message):
    """(problem, fix) of a one-line failure whose fix follows its problem, else (message, None)."""
    match = _FIX_START.search(message or "")
    if not match:
        return message, None
    fix = message[match.end():].strip().rstrip(".")
    if match.group().strip() == "(" and fix.endswith(")"):
        fix = fix[:-1]
    return message[:match.start()].rstrip(), fix


class EndpointUnreachable(Exception):
    """The endpoint could not be reached or did not speak the protocol (retry later)."""


class PinMismatch(EndpointUnreachable):
    """The server's certificate is not the pinned one: not our endpoint, nothing was sent."""


class EndpointBusy(EndpointUnreachable):
    """An endpoint of this cluster (it presented the pinned certificate) was reached, but the exchange failed: too
    slow, cut off. The cluster exists: a first control plane must never initialize another one on that account."""


class Answer(object):
    """HTTP status and decoded JSON of one endpoint answer."""

    def __init__(self, status, payload, retry_after=None):
        self.status = status
        self.payload = payload
        self.retry_after = retry_after

    @property
    def error(self):
        return str(self.payload.get("error", "")) or "HTTP {}".format(self.status)


class PinnedHTTPSConnection(http.client.HTTPSConnection):
    """An HTTPS connection that checks the pin each time it connects, whoever calls connect() (http.client does when
    a request follows an answer that closed the connection)."""

    def __init__(self, host, port, fingerprint, **options):
        http.client.HTTPSConnection.__init__(self, host, port, **options)
        self.fingerprint = fingerprint

    def connect(self):
        http.client.HTTPSConnection.connect(self)
        der = self.sock.getpeercert(binary_form=True)
        presented = protocol.certificate_fingerprint(der) if der else "(none)"
        if presented != self.fingerprint:
            self.close()
            raise PinMismatch("{}:{} presented certificate {} but this image pins {}; refusing to talk to it".format(
                self.host, self.port, presented, self.fingerprint))


class NodeStory(object):
    """The phases this node reached and when, and what it tells the endpoint about itself (client's "story").

    Kept in a file (the agent's phases.json, 0600): a restart in the same boot goes on with it, a new boot starts a
    new story. Each phase is kept with the wall clock and the monotonic clock of its moment; when sent, its time is
    recomputed from the monotonic clock against the wall clock now, so NTP setting the clock of a Pi without RTC
    between two phases does not make one of them last months (the endpoint then moves the times onto its own clock).
    """

    def __init__(self, path, root, facts, wall=time.time, monotonic=time.monotonic):
        """`path`: where the phases are kept; `root`: the system's root (its boot id); `facts`: arch, os, generation
        (node_ip is added once known, `fix` set with each failure)."""
        self.path = path
        self.facts = dict(facts)
        self.fix = None
        self._wall, self._monotonic = wall, monotonic
        self._boot = _boot_id(root)
        self._record = self._load()

    def _load(self):
        try:
            with open(self.path) as handle:
                record = json.load(handle)
            phases = record["phases"]
            if self._boot and record["boot"] == self._boot and all(
                    len(times) == 2 and all(isinstance(t, (int, float)) for t in times) for times in phases.values()):
                return record
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            pass
        return {"boot": self._boot, "phases": {}}

    def reached(self, phase, **details):
        """Record `phase` (and `details`: installed_from) the first time it is reached; True if it was new."""
        if phase in self._record["phases"]:
            return False
        self._record["phases"][phase] = [self._wall(), self._monotonic()]
        self._record.update(details)
        try:
            write_private(self.path, json.dumps(self._record, sort_keys=True))
        except OSError as err:  # the story is worth less than the node: it goes on without it
            log.warning("cannot keep the phases in %s: %s", self.path, err.strerror or err)
        return True

    def body(self):
        """The story as joins and reports carry it (see firstboot.client)."""
        now, since_boot = self._wall(), self._monotonic()
        story = {key: value for key, value in self.facts.items() if value is not None}
        story.update(sent_at=now, phases={name: now - (since_boot - monotonic)
                                          for name, (_, monotonic) in self._record["phases"].items()})
        if self._record.get("installed_from"):
            story["installed_from"] = self._record["installed_from"]
        if self.fix:
            story["fix"] = protocol.redact(self.fix)
        return story


def _boot_id(root):
    """This boot's id (the kernel's, below the agent's root), '' where there is none (a sandbox)."""
    try:
        with open(os.path.join(root, BOOT_ID)) as handle:
            return handle.read().strip()
    except OSError:
        return ""


class EndpointClient(object):
    """Signed requests for one node to its endpoint (or a fallback); each exchange is challenge + POST on one
    connection."""

    def __init__(self, endpoint, fingerprint, node, credential, timeout=15.0, source_address=None, generation=None,
                 story=None, fallback_endpoints=()):
        """`generation`: which build of the node the credential is (node.json's), sent so that an endpoint whose
        inventory is older than the card still knows which credential to check. `story`: a callable giving the
        node's story (see the module's docstring), sent with each join and report. `fallback_endpoints`: HOST:PORT
        of the other endpoints of the cluster, asked in order when the one asked cannot be reached."""
        self.endpoints = [protocol.split_host_port(address) for address in [endpoint] + list(fallback_endpoints)]
        self.host, self.port = self.endpoints[0]  # the one asked first: the last that answered
        self.story = story
        self.generation = generation
        self.fingerprint = protocol.normalize_fingerprint(fingerprint)
        self.node = node
        self.credential = credential
        self.timeout = timeout
        self.source_address = source_address
        self._tls = _pinning_tls_context()

    def join(self, facts):
        """Ask for a bootstrap token; `facts` are macs, arch, os, kubeadm_version, node_ip."""
        body = dict(facts)
        body["node"] = self.node
        return self._exchange(protocol.JOIN_PATH, self._with_story(body))

    def report(self, state, message=""):
        """Tell the endpoint how far the node got ('progress', 'failed', 'joined')."""
        return self._exchange(protocol.REPORT_PATH, self._with_story(
            {"node": self.node, "state": state, "message": protocol.redact(message)}))

    def _with_story(self, body):
        if self.story is not None:
            body["story"] = self.story()
        return body

    def admin_kubeconfig(self):
        """The cluster's admin kubeconfig (a client made with protocol.ADMIN_NAME and the admin credential)."""
        return self._exchange(protocol.ADMIN_KUBECONFIG_PATH, {})

    def admin_sync_inventory(self, nodes):
        """Push the inventory ({name: generation}) to the endpoint (an admin client, as for admin_kubeconfig)."""
        return self._exchange(protocol.ADMIN_INVENTORY_PATH, {"nodes": nodes})

    def admin_status(self):
        """Every node's row as the endpoint knows it (an admin client): phases, facts, last error; no secret."""
        return self._exchange(protocol.ADMIN_STATUS_PATH, {}, MAX_STATUS_BYTES)

    def admin_approve(self, node, replace=False, listed=False):
        """Let `node` join (with `replace`: take over its Ready namesake once); `listed`: the operator's inventory
        lists it, so the endpoint approves it even if its own copy of the inventory does not know it yet."""
        return self._exchange(protocol.ADMIN_APPROVE_PATH,
                              {"node": node, "replace": bool(replace), "listed": bool(listed)})

    def admin_upgrade(self, to, mode):
        """Ask this control plane to upgrade itself to the minor `to` ("1.32"): `mode` apply (the first control
        plane: `kubeadm upgrade apply`) or node (the others, once it is done); see protocol.ADMIN_UPGRADE_PATH."""
        return self._exchange(protocol.ADMIN_UPGRADE_PATH, {"to": to, "mode": mode})

    def challenge(self):
        """Only GET /v1/challenge on a pinned connection: is our endpoint there and answering? (probes, benches)"""
        return self._ask(lambda connection: _request(connection, "GET", protocol.CHALLENGE_PATH))

    @property
    def answered(self):
        """HOST:PORT of the endpoint asked first: the last that answered (at first node.json's `endpoint`)."""
        return "{}:{}".format(self.host, self.port)

    def _ask(self, exchange):
        """`exchange(connection)`'s answer from the first endpoint that can be reached, in the order: the last that
        answered, then the others as configured. EndpointUnreachable naming every one tried when none could be
        (a PinMismatch when one of them presented another certificate: something is there, but not ours)."""
        first = (self.host, self.port)
        order = [first] + [address for address in self.endpoints if address != first]
        failures = []
        for host, port in order:
            try:
                with self._connection(host, port) as connection:
                    answer = exchange(connection)
            except EndpointUnreachable as err:
                failures.append(err)
                if len(failures) < len(order):
                    log.warning("%s; asking the next endpoint", err)
                continue
            if (host, port) != first:
                log.info("the token endpoint at %s:%d answered; it is asked first from now on", host, port)
                self.host, self.port = host, port
            return answer
        if len(failures) == 1:
            raise failures[0]
        kind = next((kind for kind in (PinMismatch, EndpointBusy) if any(isinstance(err, kind) for err in failures)),
                    EndpointUnreachable)
        raise kind("no token endpoint answered: " + "; ".join(str(err) for err in failures))

    @contextlib.contextmanager
    def _connection(self, host, port):
        """A connected PinnedHTTPSConnection, closed afterwards; transport errors become EndpointUnreachable."""
        connection = PinnedHTTPSConnection(host, port, self.fingerprint, timeout=self.timeout, context=self._tls,
                                           source_address=self.source_address)
        try:
            connection.connect()
        except (OSError, ssl.SSLError, http.client.HTTPException) as err:
            connection.close()
            raise EndpointUnreachable("cannot reach {}:{}: {}".format(host, port, err)) from None
        try:
            yield connection
        except (OSError, ssl.SSLError, http.client.HTTPException) as err:
            raise EndpointBusy("exchange with {}:{} failed: {}".format(host, port, err)) from None
        finally:
            connection.close()

    def _exchange(self, path, payload, limit=MAX_ANSWER_BYTES):
        body = json.dumps(payload, sort_keys=True).encode("utf-8")

        def signed_post(connection):
            challenge = _request(connection, "GET", protocol.CHALLENGE_PATH)
            nonce = challenge.payload.get("nonce")
            if challenge.status != 200 or not isinstance(nonce, str):
                return challenge
            headers = {
                "Content-Type": "application/json",
                protocol.HEADER_NODE: self.node,
                protocol.HEADER_NONCE: nonce,
                protocol.HEADER_SIGNATURE: protocol.sign(self.credential, "POST", path, nonce, body),
            }
            if self.generation is not None:
                headers[protocol.HEADER_GENERATION] = str(self.generation)
            return _request(connection, "POST", path, body, headers, limit)

        return self._ask(signed_post)


@functools.lru_cache(maxsize=1)
def _pinning_tls_context():
    """One shared client context (building one costs more than a handshake): no CA, no hostname — the pin decides."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # trust comes from the pin, checked by PinnedHTTPSConnection.connect
    return protocol.require_tls12(context)


def _request(connection, method, path, body=None, headers=None, limit=MAX_ANSWER_BYTES):
    connection.request(method, path, body=body, headers=headers or {})
    response = connection.getresponse()
    raw = response.read(limit + 1)
    if len(raw) > limit:
        raise EndpointUnreachable("answer from the endpoint is too large")
    try:
        payload = json.loads(raw.decode("utf-8")) if raw else {}
    except ValueError:
        payload = {}
    if not isinstance(payload, dict):
        payload = {}
    retry_after = response.getheader("Retry-After")
    return Answer(response.status, payload, float(retry_after) if retry_after and retry_after.isdigit() else None)

