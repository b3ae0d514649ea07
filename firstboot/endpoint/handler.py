"""The endpoint's HTTP requests: GET /v1/challenge, POST /v1/join, /v1/report, /v1/admin/{kubeconfig, inventory,
status, approve, upgrade}; nothing else.

Everything from the network is hostile. A request's head (request line and headers) is capped while it is read,
bodies are capped before they are read, addresses and nodes are rate limited, and a POST is authenticated (one-time
nonce, then an HMAC made with the credential of the generation the card names, never older than the node's current
one, compared in constant time) before its
JSON is even parsed. An admin request is authenticated with the admin credential only (protocol.admin_credential).
"""

import http.client
import http.server
import json
import logging
import re

from .. import protocol
from .audit import audit
from .guards import TooManyNonces
from .kube import ClusterError
from .leases import NodeBusy

log = logging.getLogger("pi-image.tokend")

# A genuine agent's head is under 1 KiB (8 headers); http.server alone would read 100 lines of 64 KiB each.
MAX_HEAD_BYTES = 8 * 1024
_DIGITS = re.compile(r"^[0-9]{1,18}$")  # ASCII only: str.isdigit() takes '²', which int() refuses
MAX_HEADERS = 32
# Older generations whose credential a refused signature is checked against, to tell the operator why (an old card).
OLD_GENERATIONS_CHECKED = 16


class RequestRefused(Exception):
    """Ends a request with an HTTP error; `close` drops the connection afterwards."""

    def __init__(self, status, message, close=True, headers=None):
        Exception.__init__(self, message)
        self.status = status
        self.close = close
        self.headers = headers or {}


class HeadTooLarge(http.client.HTTPException):
    """A request head over MAX_HEAD_BYTES or MAX_HEADERS; http.server answers 431 to it (414 in the request line)."""


class HeadLimitedReader(object):
    """A connection's rfile whose readline() - all http.server reads a head with - stops at each request head's cap.

    Memory per connection stays at one buffer however many or however long the lines a client sends; the body is
    read with read(), capped by Content-Length checks.
    """

    def __init__(self, raw):
        self._raw = raw
        self.overflow = None
        self.start_request()

    def start_request(self):
        """A new request head begins: its byte and line budgets are full again."""
        self._head_bytes = 0
        self._head_lines = 0
        self.overflow = None

    def readline(self, limit=-1):
        """One line of the current head (`limit` is http.server's own, larger cap: ours is tighter)."""
        if self._head_lines >= MAX_HEADERS + 2:  # the request line, the headers, the blank line that ends them
            self._refuse("more than {} headers".format(MAX_HEADERS))
        line = self._raw.readline(MAX_HEAD_BYTES - self._head_bytes + 1)
        self._head_lines += 1
        self._head_bytes += len(line)
        if self._head_bytes > MAX_HEAD_BYTES:
            self._refuse("request head larger than {} bytes".format(MAX_HEAD_BYTES))
        return line

    def _refuse(self, reason):
        self.overflow = reason
        raise HeadTooLarge(reason)

    def read(self, size=-1):
        return self._raw.read(size)

    def close(self):
        self._raw.close()


class RequestHandler(http.server.BaseHTTPRequestHandler):
    """One connection's requests; the server (tokend.TokenEndpoint) holds the settings, guards and issuer."""

    protocol_version = "HTTP/1.1"
    server_version = "pi-image-tokend"
    sys_version = ""
    # Each answer leaves in one write (one TLS record, one segment) and at once: with unbuffered writes and Nagle on,
    # the body waited for the client's delayed ACK of the headers, 40 ms per answer.
    wbufsize = -1
    disable_nagle_algorithm = True

    _discard_after_answer = 0
    _head_seen = False

    def setup(self):
        http.server.BaseHTTPRequestHandler.setup(self)
        self.rfile = HeadLimitedReader(self.rfile)

    def handle_one_request(self):
        self.rfile.start_request()
        try:
            http.server.BaseHTTPRequestHandler.handle_one_request(self)
        except HeadTooLarge:  # in the request line (http.server itself answers an overflow in the headers)
            self.requestline, self.request_version, self.command = "", "", ""
            self.send_error(414)
        if self.rfile.overflow:
            self.close_connection = True
            self.server.refusals.refused("refused-headers", self.client_address[0], self.rfile.overflow)

    def parse_request(self):
        """http.server's parsing; once the connection's first head is in, the connection deadline replaces the short
        one for the handshake and first request (an idle connection is cut fast, a working one has time)."""
        if not http.server.BaseHTTPRequestHandler.parse_request(self):
            return False
        if not self._head_seen:
            self._head_seen = True
            self.server.watchdog.watch(self.connection, self.server.limits.connection_seconds)
        return True

    def log_message(self, format, *args):  # noqa: A002 - http.server's signature
        log.debug("%s %s", self.client_address[0], format % args)

    def do_GET(self):
        self._answer(self._challenge)

    def do_POST(self):
        self._answer(self._authenticated_post)

    def _answer(self, handler):
        try:
            try:
                status, payload = handler()
            except NodeBusy as busy:
                audit("busy-elsewhere", self.headers.get(protocol.HEADER_NODE, "-"), self.client_address[0],
                      str(busy))
                raise RequestRefused(503, str(busy), close=False,
                                     headers={"Retry-After": str(busy.retry_after)}) from None
            except ClusterError as err:  # the state in the API cannot be read (several masters)
                audit("error", self.headers.get(protocol.HEADER_NODE, "-"), self.client_address[0], str(err))
                raise RequestRefused(503, "the cluster could not be reached; see the token server log", close=False,
                                     headers={"Retry-After": "5"}) from None
            self._send(status, payload)
        except RequestRefused as refusal:
            self._send(refusal.status, {"error": str(refusal)}, refusal.close, refusal.headers)
            self._discard_unread_body()

    def _discard_unread_body(self):
        """Swallow (a bounded part of) a refused body, so closing does not reset the connection before the client
        reads our answer; the connection deadline still applies."""
        remaining = self._discard_after_answer
        self._discard_after_answer = 0
        try:
            while remaining > 0:
                chunk = self.rfile.read(min(remaining, 16384))
                if not chunk:
                    break
                remaining -= len(chunk)
        except OSError:
            pass

    def _send(self, status, payload, close=False, headers=None):
        body = json.dumps(payload).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()

    def _limit_address(self):
        if not self.server.address_limiter.allow(self.client_address[0]):
            self.server.refusals.refused("refused-rate-address", self.client_address[0])
            raise RequestRefused(429, "too many requests from this address",
                                 headers={"Retry-After": str(self.server.address_limiter.retry_after())})

    def _challenge(self):
        if self.path != protocol.CHALLENGE_PATH:
            raise RequestRefused(404, "not found")
        self._limit_address()
        try:
            nonce = self.server.nonces.issue()
        except TooManyNonces:
            raise RequestRefused(503, "busy, try again", headers={"Retry-After": "5"}) from None
        return 200, {"nonce": nonce, "expires_in": self.server.limits.nonce_ttl}

    def _authenticated_post(self):
        if self.path not in (protocol.JOIN_PATH, protocol.REPORT_PATH) + protocol.ADMIN_PATHS:
            raise RequestRefused(404, "not found")
        self._limit_address()
        body = self._read_body()
        if self.path in protocol.ADMIN_PATHS:
            self._authenticate_admin(body)
            self._allow_work()
            return self._admin_request(body)
        node = self.headers.get(protocol.HEADER_NODE, "")
        address = self.client_address[0]
        generation = self._authenticate(node, body)
        self._allow_work()
        if not self.server.node_limiter.allow(node):
            audit("refused-rate-node", node, address)
            raise RequestRefused(429, "too many requests for this node",
                                 headers={"Retry-After": str(self.server.node_limiter.retry_after())})
        try:
            payload = json.loads(body.decode("utf-8"))
        except (ValueError, RecursionError):
            raise RequestRefused(400, "body is not JSON") from None
        if not isinstance(payload, dict) or payload.get("node") != node:
            raise RequestRefused(400, "body must be a JSON object whose 'node' matches the {} header".format(
                protocol.HEADER_NODE))
        if self.path == protocol.JOIN_PATH:
            facts = {key: str(payload.get(key, ""))[:200] for key in ("arch", "os", "kubeadm_version", "node_ip")}
            facts["macs"] = [str(mac)[:32] for mac in payload.get("macs", [])[:16]] \
                if isinstance(payload.get("macs"), list) else []
            return self.server.issuer.join(node, generation, facts, address, payload.get("story"),
                                           payload.get("control_plane") is True)
        return self.server.issuer.report(node, generation, payload, address)

    def _admin_request(self, body):
        """An authenticated operator's request, by path."""
        issuer, address = self.server.issuer, self.client_address[0]
        if self.path == protocol.ADMIN_KUBECONFIG_PATH:
            return issuer.admin_kubeconfig(address)
        try:
            payload = json.loads(body.decode("utf-8"))
        except (ValueError, RecursionError):
            payload = None
        if not isinstance(payload, dict):
            raise RequestRefused(400, "body must be a JSON object")
        if self.path == protocol.ADMIN_INVENTORY_PATH:
            return issuer.admin_inventory(payload.get("nodes"), address)
        if self.path == protocol.ADMIN_STATUS_PATH:
            return issuer.admin_status(address)
        if self.path == protocol.ADMIN_UPGRADE_PATH:
            return issuer.upgrades.request(payload.get("to"), payload.get("mode"), address)
        node = payload.get("node")  # protocol.ADMIN_APPROVE_PATH
        if not isinstance(node, str) or not protocol.NODE_NAME_RE.match(node):
            raise RequestRefused(400, "'node' must be a node name (lower-case letters, digits and '-')")
        return issuer.admin_approve(node, payload.get("replace") is True, payload.get("listed") is True, address)

    def _allow_work(self):
        """An authenticated request gets `work_seconds` for its answer: the connection deadline is for what a
        stranger can hold open, and the cluster calls behind a token (kubectl on a slow master) may outlast it."""
        self.server.watchdog.watch(self.connection, self.server.limits.work_seconds)

    def _read_body(self):
        length_text = self.headers.get("Content-Length", "")
        if not _DIGITS.match(length_text):
            raise RequestRefused(411, "Content-Length required")
        length = int(length_text)
        if length > protocol.MAX_BODY_BYTES:
            self.server.refusals.refused("refused-oversized", self.client_address[0], "{} bytes".format(length))
            self._discard_after_answer = min(length, 4 * protocol.MAX_BODY_BYTES)
            raise RequestRefused(413, "body larger than {} bytes".format(protocol.MAX_BODY_BYTES))
        body = self.rfile.read(length)
        if len(body) != length:
            raise RequestRefused(400, "body shorter than Content-Length")
        return body

    def _authenticate(self, node, body):
        """The generation `node` signed with. Nonce first (spent even if the signature is wrong), then the HMAC with
        the credential of the generation the card names (HEADER_GENERATION; else the inventory's current one), which
        must be no older than the inventory's and than the last generation a token was issued to; the same answer
        for every failure."""
        address = self.client_address[0]
        nonce = self.headers.get(protocol.HEADER_NONCE, "")
        signature = self.headers.get(protocol.HEADER_SIGNATURE, "")
        if not protocol.NODE_NAME_RE.match(node):
            audit("refused-bad-name", "-", address)
            raise RequestRefused(401, "authentication failed")
        if not self.server.nonces.consume(nonce):
            audit("refused-nonce", node, address, "unknown, reused or expired nonce")
            raise RequestRefused(401, "authentication failed: ask /v1/challenge for a fresh nonce")
        current = self.server.settings.generation(node)
        row = self.server.store.get(node) or {}
        current = max(current, row.get("generation") or 0)
        claimed = self.headers.get(protocol.HEADER_GENERATION, "")
        generation = int(claimed) if _DIGITS.match(claimed) and len(claimed) <= 9 else current
        if generation >= current and self._signed_by(node, generation, nonce, body, signature):
            return generation
        old = [g for g in range(current - 1, max(-1, current - 1 - OLD_GENERATIONS_CHECKED), -1)
               if self._signed_by(node, g, nonce, body, signature)]
        audit("refused-signature", node, address, "signed by the image of an older build (generation {} of {}): "
              "flash the newest image".format(old[0], current) if old else "")
        raise RequestRefused(401, "authentication failed")

    def _authenticate_admin(self, body):
        """An operator's request: nonce first, then the HMAC with the admin credential (never a node's)."""
        address = self.client_address[0]
        if not self.server.nonces.consume(self.headers.get(protocol.HEADER_NONCE, "")):
            audit("refused-nonce", protocol.ADMIN_NAME, address, "unknown, reused or expired nonce")
            raise RequestRefused(401, "authentication failed: ask /v1/challenge for a fresh nonce")
        credential = protocol.admin_credential(self.server.settings.enrollment_key)
        if self.headers.get(protocol.HEADER_NODE, "") != protocol.ADMIN_NAME or not protocol.signature_matches(
                credential, "POST", self.path, self.headers.get(protocol.HEADER_NONCE, ""), body,
                self.headers.get(protocol.HEADER_SIGNATURE, "")):
            audit("refused-signature", protocol.ADMIN_NAME, address, "admin request")
            raise RequestRefused(401, "authentication failed")
        if not self.server.admin_limiter.allow(protocol.ADMIN_NAME):
            raise RequestRefused(429, "too many admin requests",
                                 headers={"Retry-After": str(self.server.admin_limiter.retry_after())})

    def _signed_by(self, node, generation, nonce, body, signature):
        credential = protocol.node_credential(self.server.settings.enrollment_key, node, generation)
        return protocol.signature_matches(credential, "POST", self.path, nonce, body, signature)
