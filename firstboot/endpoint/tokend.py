"""The token endpoint: HTTPS server that hands short-lived bootstrap tokens to authenticated nodes.

    python3 -m firstboot.endpoint --config /etc/pi-image/cluster/tokend.json [--state-dir DIR]

Everything from the network is hostile. Each connection is admitted at accept, before a thread or a TLS handshake is
spent on it, only if its source address holds fewer than `per_address` connections (and the server fewer than
`max_connections`); a refused one is held unread for a few seconds, then reset. TLS is done in the connection's own
thread (a stalled handshake cannot block accept) and must finish, with the first request's head, within
`handshake_seconds`: an idle socket is cut fast. The whole connection then has `connection_seconds` (slowloris),
until a request is authenticated: its answer, which may wait for kubectl on a slow master, has `work_seconds`.
Requests are handled in handler.py.
"""

import argparse
import fcntl
import http.server
import logging
import os
import resource
import socket
import socketserver
import ssl
import sys
import time

from .. import protocol
from ..commands import CommandRunner
from .audit import RefusalLog, configure_logging
from .guards import ConnectionSlots, ConnectionWatchdog, HeldConnections, NonceBook, RateLimiter, reset_connection
from .handler import RequestHandler
from .issuer import JoinIssuer
from .kube import ClusterAdmin
from .kubestore import KubeStore
from .leases import NodeLeases
from .objects import KubeObjects
from .settings import ServerSettings, SettingsError
from .state import NodeStore, default_state_dir

log = logging.getLogger("pi-image.tokend")


class Limits(object):
    """Tunable defences; the defaults suit a fleet of a few hundred nodes."""

    def __init__(self, nonce_ttl=protocol.NONCE_TTL_SECONDS, handshake_seconds=2.0, connection_seconds=10.0,
                 io_timeout=5.0, max_connections=256, per_address=8, address_per_minute=120, address_burst=60,
                 node_per_minute=12, node_burst=6, refusal_log_seconds=10.0, hold_refused_seconds=5.0,
                 held_capacity=1024, work_seconds=120.0, admin_per_minute=120, admin_burst=30):
        self.nonce_ttl = nonce_ttl
        self.handshake_seconds = handshake_seconds
        self.connection_seconds = connection_seconds
        self.io_timeout = io_timeout
        self.max_connections = max_connections
        self.per_address = per_address
        self.address_per_minute = address_per_minute
        self.address_burst = address_burst
        self.node_per_minute = node_per_minute
        self.node_burst = node_burst
        self.refusal_log_seconds = refusal_log_seconds
        self.hold_refused_seconds = hold_refused_seconds
        self.held_capacity = held_capacity
        self.work_seconds = work_seconds  # an authenticated request's answer (rate-limited per node)
        # the operator's requests: `status --watch` and the fleet page ask every 2 s
        self.admin_per_minute = admin_per_minute
        self.admin_burst = admin_burst


class TokenEndpoint(socketserver.ThreadingMixIn, http.server.HTTPServer):
    """One thread per admitted connection, TLS wrapped inside that thread."""

    daemon_threads = True
    # Room for every connection a flooding client can have pending at once (its sockets are refused in turn), so a
    # genuine node's SYN always finds a place in the queue instead of waiting for a retransmission.
    request_queue_size = 2048
    allow_reuse_address = True

    def __init__(self, settings, store, issuer, limits=None):
        self.settings = settings
        self.limits = limits or Limits()
        self.store = store
        self.issuer = issuer
        self.slots = ConnectionSlots(self.limits.max_connections, self.limits.per_address)
        self.held = HeldConnections(self.limits.hold_refused_seconds, self.limits.held_capacity)
        self.refusals = RefusalLog(self.limits.refusal_log_seconds)
        self.nonces = NonceBook(self.limits.nonce_ttl)
        self.address_limiter = RateLimiter(self.limits.address_per_minute, self.limits.address_burst)
        self.node_limiter = RateLimiter(self.limits.node_per_minute, self.limits.node_burst)
        self.admin_limiter = RateLimiter(self.limits.admin_per_minute, self.limits.admin_burst)
        self.watchdog = ConnectionWatchdog()
        self.tls = _server_tls_context(settings)
        host, port = protocol.split_host_port(settings.listen)
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        http.server.HTTPServer.__init__(self, (host, port), RequestHandler)

    @property
    def url(self):
        """https://HOST:PORT this endpoint serves on."""
        host, port = self.server_address[:2]
        return "https://{}:{}".format("[" + host + "]" if ":" in host else host, port)

    def process_request(self, request, client_address):
        address = client_address[0]
        refusal = self.slots.take(address)
        if refusal:
            self.refusals.refused(refusal, address)
            if not self.held.hold(request):
                reset_connection(request)
            return
        try:
            socketserver.ThreadingMixIn.process_request(self, request, client_address)
        except RuntimeError:  # no thread to be had: the connection gives its slot back
            self.slots.release(address)
            self.refusals.refused("refused-busy", address, "cannot start a thread")
            reset_connection(request)

    def process_request_thread(self, request, client_address):
        try:
            socketserver.ThreadingMixIn.process_request_thread(self, request, client_address)
        finally:
            self.slots.release(client_address[0])

    def finish_request(self, request, client_address):
        """Handshake here, in the connection's own thread, under the short deadline for a new connection."""
        request.settimeout(self.limits.io_timeout)
        try:
            # Wrapped first, handshake after: wrap_socket takes over the descriptor, and the watchdog must hold the
            # socket that owns it to cut a stalled handshake.
            tls_socket = self.tls.wrap_socket(request, server_side=True, do_handshake_on_connect=False)
        except OSError as err:
            self.refusals.refused("refused-tls", client_address[0], type(err).__name__)
            return
        self.watchdog.watch(tls_socket, self.limits.handshake_seconds)  # the handler extends it after the first head
        try:
            try:
                tls_socket.do_handshake()
            except (ssl.SSLError, OSError) as err:
                self.refusals.refused("refused-tls", client_address[0], type(err).__name__)
                return
            self.RequestHandlerClass(tls_socket, client_address, self)
        finally:
            self.watchdog.release(tls_socket)
            tls_socket.close()

    def service_actions(self):
        """Between two accepts (or every poll interval): reset the held connections and write the refusal summaries
        that are due."""
        self.held.reset_due()
        self.refusals.flush()

    def server_close(self):
        super().server_close()
        self.held.reset_all()

    def handle_error(self, request, client_address):
        log.debug("connection from %s ended with an error", client_address[0], exc_info=True)


def _server_tls_context(settings):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.options |= ssl.OP_NO_COMPRESSION
    protocol.require_tls12(context)
    if hasattr(context, "num_tickets"):  # Python 3.8+: agents never resume sessions, so skip minting tickets
        context.num_tickets = 0  # novermin - 3.8+, guarded by the hasattr above
    context.load_cert_chain(settings.file("tls_cert_file"), settings.file("tls_key_file"))
    return context


def fit_descriptors(limits, spare=64):
    """Raise this process's open-file limit to what `limits` may hold open (connections being served, refused ones
    held, `spare` for the rest), within the hard limit; where that is too low, hold fewer refused connections."""
    needed = limits.max_connections + limits.held_capacity + spare
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        soft = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        limits.held_capacity = max(0, min(limits.held_capacity, soft - limits.max_connections - spare))
    return limits


def build_endpoint(settings, state_dir, limits=None, commands=None, clock=None):
    """A ready-to-serve TokenEndpoint for `settings`, keeping its state in `state_dir` - or, where several control
    planes each serve joins, in the Kubernetes API (kubestore.py; the rows in `state_dir` moved there once)."""
    settings.use_synced_inventory(state_dir)
    admin = ClusterAdmin(commands or CommandRunner(), settings.file("kubeconfig"))
    clock = clock or time.time
    leases = None
    if settings.several_control_planes():
        objects = KubeObjects(admin)
        store = KubeStore(objects, clock)
        store.migrate_until_done(state_dir)
        leases = NodeLeases(objects, settings.node_name(), clock)
    else:
        store = NodeStore(state_dir, clock)
    return TokenEndpoint(settings, store, JoinIssuer(settings, store, admin, clock, leases), limits)


SERVING_MARKER = "tokend.serving"  # in the state directory: locked (shared) while an endpoint serves from it


def hold_serving_marker(state_dir):
    """Lock the state directory's SERVING_MARKER for as long as this process lives (its descriptor is returned, kept
    open): `pi-image status|approve` on this machine then read and write this state instead of asking over the
    network. Shared, so endpoints restarting over one another never refuse to start."""
    descriptor = os.open(os.path.join(state_dir, SERVING_MARKER), os.O_CREAT | os.O_RDWR, 0o600)
    fcntl.flock(descriptor, fcntl.LOCK_SH)
    return descriptor


def is_serving(state_dir):
    """True while an endpoint on this machine serves from `state_dir` (one it cannot open counts as not).

    The probe tries an exclusive lock of the marker, which any serving endpoint's shared lock refuses. Probes take
    turns (an exclusive lock of the state directory itself, held for the instant of the probe: nothing is created),
    so two at once never take each other's lock for an endpoint's."""
    try:
        directory = os.open(state_dir, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(directory, fcntl.LOCK_EX)
        try:
            descriptor = os.open(os.path.join(state_dir, SERVING_MARKER), os.O_RDONLY)
        except OSError:
            return False
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return False
        except OSError:
            return True
        finally:
            os.close(descriptor)
    finally:
        os.close(directory)


def serve(settings, state_dir, limits=None, verbose=False, announce=sys.stdout):
    """Run the endpoint until interrupted; prints 'listening on URL' once the socket is bound."""
    configure_logging(state_dir, verbose)
    marker = hold_serving_marker(state_dir)
    try:
        endpoint = build_endpoint(settings, state_dir, fit_descriptors(limits or Limits()))
    except BaseException:
        os.close(marker)
        raise
    announce.write("pi-image token endpoint listening on {}\n".format(endpoint.url))
    announce.flush()
    try:
        endpoint.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        endpoint.server_close()
        endpoint.store.close()
        os.close(marker)


def main(argv=None):
    """`python3 -m firstboot.endpoint`: parse the command line and serve."""
    parser = argparse.ArgumentParser(prog="python3 -m firstboot.endpoint", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="tokend.json written by `pi-image cluster init`")
    parser.add_argument("--state-dir", help="SQLite state and audit log [default: the config's directory/state, "
                                            "where `pi-image status --cluster DIR` looks]")
    parser.add_argument("--listen", help="ADDR:PORT to serve on (overrides tokend.json)")
    parser.add_argument("--ca-cert", help="cluster CA certificate (overrides tokend.json)")
    parser.add_argument("--kubeconfig", help="admin kubeconfig (overrides tokend.json)")
    parser.add_argument("--node-name", help="this master's node name (overrides tokend.json; default: the host name)")
    parser.add_argument("--nonce-ttl", type=float, default=protocol.NONCE_TTL_SECONDS, help=argparse.SUPPRESS)
    parser.add_argument("--connection-seconds", type=float, default=10.0, help="total time allowed per connection")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    os.umask(0o077)
    try:
        settings = ServerSettings(args.config, {"listen": args.listen, "ca_cert_file": args.ca_cert,
                                                "kubeconfig": args.kubeconfig, "node_name": args.node_name})
    except SettingsError as err:
        sys.stderr.write("pi-image-tokend: error: {}\n".format(err))
        return 2
    seconds = args.connection_seconds
    limits = Limits(nonce_ttl=args.nonce_ttl, handshake_seconds=min(2.0, seconds), connection_seconds=seconds,
                    io_timeout=min(5.0, seconds))
    try:
        serve(settings, args.state_dir or default_state_dir(args.config), limits, args.verbose)
    except OSError as err:
        sys.stderr.write("pi-image-tokend: error: cannot serve on {}: {}\n".format(settings.listen, err))
        return 1
    return 0
