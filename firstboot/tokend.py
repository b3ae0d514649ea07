"""The token endpoint: HTTPS server that hands short-lived bootstrap tokens to authenticated nodes.

    python3 -m firstboot.tokend --config /etc/pi-image/cluster/tokend.json [--state-dir /var/lib/pi-image/tokend]

Everything from the network is hostile: TLS is done in the worker thread (a stalled handshake cannot block accept),
every connection has a total deadline (slowloris), bodies are capped, addresses and nodes are rate limited, and a
request is authenticated (one-time nonce + HMAC, compared in constant time) before its JSON is even parsed.
"""

import argparse
import http.server
import json
import logging
import os
import socket
import socketserver
import ssl
import sys
import threading

from . import protocol
from .commands import CommandRunner
from .guards import ConnectionWatchdog, NonceBook, RateLimiter, TooManyNonces
from .issuer import JoinIssuer, audit
from .kube import ClusterAdmin
from .settings import ServerSettings, SettingsError
from .state import NodeStore

log = logging.getLogger("pi-image.tokend")


class Limits(object):
    """Tunable defences; the defaults suit a fleet of a few hundred nodes."""

    def __init__(self, nonce_ttl=protocol.NONCE_TTL_SECONDS, connection_seconds=10.0, io_timeout=5.0,
                 max_connections=256, address_per_minute=120, address_burst=60, node_per_minute=12, node_burst=6):
        self.nonce_ttl = nonce_ttl
        self.connection_seconds = connection_seconds
        self.io_timeout = io_timeout
        self.max_connections = max_connections
        self.address_per_minute = address_per_minute
        self.address_burst = address_burst
        self.node_per_minute = node_per_minute
        self.node_burst = node_burst


class RequestRefused(Exception):
    """Ends a request with an HTTP error; `close` drops the connection afterwards."""

    def __init__(self, status, message, close=True, headers=None):
        Exception.__init__(self, message)
        self.status = status
        self.close = close
        self.headers = headers or {}


class TokenEndpoint(socketserver.ThreadingMixIn, http.server.HTTPServer):
    """One thread per connection, TLS wrapped inside that thread, at most `max_connections` at once."""

    daemon_threads = True
    request_queue_size = 256
    allow_reuse_address = True

    def __init__(self, settings, store, issuer, limits=None):
        self.settings = settings
        self.limits = limits or Limits()
        self.store = store
        self.issuer = issuer
        self.nonces = NonceBook(self.limits.nonce_ttl)
        self.address_limiter = RateLimiter(self.limits.address_per_minute, self.limits.address_burst)
        self.node_limiter = RateLimiter(self.limits.node_per_minute, self.limits.node_burst)
        self.watchdog = ConnectionWatchdog()
        self.tls = _server_tls_context(settings)
        self._slots = threading.BoundedSemaphore(self.limits.max_connections)
        host, port = protocol.split_host_port(settings.listen)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.address_family = family
        http.server.HTTPServer.__init__(self, (host, port), RequestHandler)

    @property
    def url(self):
        host, port = self.server_address[:2]
        return "https://{}:{}".format("[" + host + "]" if ":" in host else host, port)

    def process_request(self, request, client_address):
        if not self._slots.acquire(blocking=False):
            audit("refused-busy", "-", client_address[0])
            self.shutdown_request(request)
            return
        socketserver.ThreadingMixIn.process_request(self, request, client_address)

    def process_request_thread(self, request, client_address):
        try:
            socketserver.ThreadingMixIn.process_request_thread(self, request, client_address)
        finally:
            self._slots.release()

    def finish_request(self, request, client_address):
        """Handshake here, in the connection's own thread, under the connection deadline."""
        request.settimeout(self.limits.io_timeout)
        self.watchdog.watch(request, self.limits.connection_seconds)
        try:
            tls_socket = self.tls.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as err:
            audit("refused-tls", "-", client_address[0], type(err).__name__)
            return
        finally:
            self.watchdog.release(request)
        self.watchdog.watch(tls_socket, self.limits.connection_seconds)
        try:
            self.RequestHandlerClass(tls_socket, client_address, self)
        finally:
            self.watchdog.release(tls_socket)

    def handle_error(self, request, client_address):
        log.debug("connection from %s ended with an error", client_address[0], exc_info=True)


def _server_tls_context(settings):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.options |= ssl.OP_NO_COMPRESSION
    protocol.require_tls12(context)
    if hasattr(context, "num_tickets"):  # Python 3.8+: agents never resume sessions, so skip minting tickets
        setattr(context, "num_tickets", 0)
    context.load_cert_chain(settings.file("tls_cert_file"), settings.file("tls_key_file"))
    return context


class RequestHandler(http.server.BaseHTTPRequestHandler):
    """GET /v1/challenge, POST /v1/join, POST /v1/report; nothing else."""

    protocol_version = "HTTP/1.1"
    server_version = "pi-image-tokend"
    sys_version = ""
    # Each answer leaves in one write (one TLS record, one segment) and at once: with unbuffered writes and Nagle on,
    # the body waited for the client's delayed ACK of the headers, 40 ms per answer.
    wbufsize = -1
    disable_nagle_algorithm = True

    def log_message(self, format, *args):  # noqa: A002 - http.server's signature
        log.debug("%s %s", self.client_address[0], format % args)

    _discard_after_answer = 0

    def do_GET(self):
        self._answer(self._challenge)

    def do_POST(self):
        self._answer(self._authenticated_post)

    def _answer(self, handler):
        try:
            status, payload = handler()
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
            audit("refused-rate-address", "-", self.client_address[0])
            raise RequestRefused(429, "too many requests from this address",
                                 headers={"Retry-After": str(self.server.address_limiter.retry_after())})

    def _challenge(self):
        if self.path != protocol.CHALLENGE_PATH:
            raise RequestRefused(404, "not found")
        self._limit_address()
        try:
            nonce = self.server.nonces.issue()
        except TooManyNonces:
            raise RequestRefused(503, "busy, try again", headers={"Retry-After": "5"})
        return 200, {"nonce": nonce, "expires_in": self.server.limits.nonce_ttl}

    def _authenticated_post(self):
        if self.path not in (protocol.JOIN_PATH, protocol.REPORT_PATH):
            raise RequestRefused(404, "not found")
        self._limit_address()
        body = self._read_body()
        node = self.headers.get(protocol.HEADER_NODE, "")
        address = self.client_address[0]
        self._authenticate(node, body)
        if not self.server.node_limiter.allow(node):
            audit("refused-rate-node", node, address)
            raise RequestRefused(429, "too many requests for this node",
                                 headers={"Retry-After": str(self.server.node_limiter.retry_after())})
        try:
            payload = json.loads(body.decode("utf-8"))
        except (ValueError, RecursionError):
            raise RequestRefused(400, "body is not JSON")
        if not isinstance(payload, dict) or payload.get("node") != node:
            raise RequestRefused(400, "body must be a JSON object whose 'node' matches the {} header".format(
                protocol.HEADER_NODE))
        if self.path == protocol.JOIN_PATH:
            facts = {key: str(payload.get(key, ""))[:200] for key in ("arch", "os", "kubeadm_version", "node_ip")}
            facts["macs"] = [str(mac)[:32] for mac in payload.get("macs", [])[:16]] \
                if isinstance(payload.get("macs"), list) else []
            return self.server.issuer.join(node, facts, address)
        return self.server.issuer.report(node, payload, address)

    def _read_body(self):
        length_text = self.headers.get("Content-Length", "")
        if not length_text.isdigit():
            raise RequestRefused(411, "Content-Length required")
        length = int(length_text)
        if length > protocol.MAX_BODY_BYTES:
            audit("refused-oversized", "-", self.client_address[0], "{} bytes".format(length))
            self._discard_after_answer = min(length, 4 * protocol.MAX_BODY_BYTES)
            raise RequestRefused(413, "body larger than {} bytes".format(protocol.MAX_BODY_BYTES))
        body = self.rfile.read(length)
        if len(body) != length:
            raise RequestRefused(400, "body shorter than Content-Length")
        return body

    def _authenticate(self, node, body):
        """Nonce first (spent even if the signature is wrong), then the HMAC; the same answer for every failure."""
        address = self.client_address[0]
        nonce = self.headers.get(protocol.HEADER_NONCE, "")
        signature = self.headers.get(protocol.HEADER_SIGNATURE, "")
        if not protocol.NODE_NAME_RE.match(node):
            audit("refused-bad-name", "-", address)
            raise RequestRefused(401, "authentication failed")
        if not self.server.nonces.consume(nonce):
            audit("refused-nonce", node, address, "unknown, reused or expired nonce")
            raise RequestRefused(401, "authentication failed: ask /v1/challenge for a fresh nonce")
        credential = protocol.node_credential(self.server.settings.enrollment_key, node)
        if not protocol.signature_matches(credential, "POST", self.path, nonce, body, signature):
            audit("refused-signature", node, address)
            raise RequestRefused(401, "authentication failed")


def build_endpoint(settings, state_dir, limits=None, commands=None):
    """A ready-to-serve TokenEndpoint for `settings`, keeping its state in `state_dir`."""
    store = NodeStore(state_dir)
    admin = ClusterAdmin(commands or CommandRunner(), settings.file("kubeconfig"))
    return TokenEndpoint(settings, store, JoinIssuer(settings, store, admin), limits)


def configure_logging(state_dir, verbose=False):
    """Decisions to stderr (the journal) and to <state_dir>/audit.log (0600); tokens are redacted on the way."""
    os.makedirs(state_dir, mode=0o700, exist_ok=True)
    audit_path = os.path.join(state_dir, "audit.log")
    os.close(os.open(audit_path, os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o600))
    formatter = logging.Formatter("%(asctime)s %(name)s: %(message)s")
    redactor = _RedactingFilter()
    handlers = [logging.StreamHandler(sys.stderr), logging.FileHandler(audit_path)]
    for handler in handlers:
        handler.setFormatter(formatter)
        handler.addFilter(redactor)
    root = logging.getLogger("pi-image")
    root.handlers = handlers
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    root.propagate = False


class _RedactingFilter(logging.Filter):
    def filter(self, record):
        record.msg = protocol.redact(record.getMessage())
        record.args = None
        return True


def serve(settings, state_dir, limits=None, verbose=False, announce=sys.stdout):
    """Run the endpoint until interrupted; prints 'listening on URL' once the socket is bound."""
    configure_logging(state_dir, verbose)
    endpoint = build_endpoint(settings, state_dir, limits)
    announce.write("pi-image token endpoint listening on {}\n".format(endpoint.url))
    announce.flush()
    try:
        endpoint.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        endpoint.server_close()
        endpoint.store.close()


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python3 -m firstboot.tokend", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="tokend.json written by `pi-image cluster init`")
    parser.add_argument("--state-dir", default="/var/lib/pi-image/tokend", help="SQLite state and audit log")
    parser.add_argument("--listen", help="ADDR:PORT to serve on (overrides tokend.json)")
    parser.add_argument("--ca-cert", help="cluster CA certificate (overrides tokend.json)")
    parser.add_argument("--kubeconfig", help="admin kubeconfig (overrides tokend.json)")
    parser.add_argument("--nonce-ttl", type=float, default=protocol.NONCE_TTL_SECONDS, help=argparse.SUPPRESS)
    parser.add_argument("--connection-seconds", type=float, default=10.0, help="total time allowed per connection")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    os.umask(0o077)
    try:
        settings = ServerSettings(args.config, {"listen": args.listen, "ca_cert_file": args.ca_cert,
                                                "kubeconfig": args.kubeconfig})
    except SettingsError as err:
        sys.stderr.write("pi-image-tokend: error: {}\n".format(err))
        return 2
    limits = Limits(nonce_ttl=args.nonce_ttl, connection_seconds=args.connection_seconds,
                    io_timeout=min(5.0, args.connection_seconds))
    serve(settings, args.state_dir, limits, args.verbose)
    return 0


if __name__ == "__main__":
    sys.exit(main())
