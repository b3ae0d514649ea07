"""`pi-image dashboard`: a local web page that shows every node of a cluster as it boots and joins, live.

The server is the standard library's `ThreadingHTTPServer` (one thread per client) and answers three things only:
`GET /` (the page), `GET /static/NAME` (its script and styles, read once from builder/data/dashboard/static) and
`GET /api/nodes` (the rows, as JSON, which the page polls every 2 s); anything else is a 404. The rows come from a
provider (`builder.cluster.status.fleet_status` for the command: what `pi-image status` shows, with its line about
a master that cannot be reached as the page's banner; a fake in tests); each is reduced to the fields the page
shows, so nothing else a row may carry (a credential, a token) ever leaves the process. The page builds its DOM with
`textContent` only: node names and error texts are shown, never interpreted.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import logging
import math
import re
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click

from firstboot.protocol import PHASES

from .. import DATA_DIR
from ..errors import UserError

log = logging.getLogger(__name__)

PAGE_DIR = DATA_DIR / "dashboard"
DEFAULT_LISTEN = "127.0.0.1:8080"
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")
CONTENT_TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                 ".md": "text/plain; charset=utf-8"}

# the phases a node's agent reports, in order (the agent's one list; a control plane initializes the cluster instead
# of getting a token, a worker gets a token instead)
WORKER_PHASES = tuple(phase for phase in PHASES if phase != "initialized")
CONTROL_PLANE_PHASES = tuple(phase for phase in PHASES if phase != "token-issued")

# the only row fields that reach the page: whatever else a row carries is dropped
TEXT_FIELDS = ("node", "role", "address", "arch", "os", "phase", "last_error", "fix", "source")
NUMBER_FIELDS = ("generation", "card_generation")
TEXT_LIMIT = 2000  # characters of one field: an error text is a line, not a log
# a kubeadm bootstrap token or a long hex secret inside an error text is masked (defence in depth: the agent
# should never report one)
SECRET_LOOKING = re.compile(r"\b[a-z0-9]{6}\.[a-z0-9]{16}\b|\b[0-9a-fA-F]{32,}\b")

# the rows, or the rows and a line to show above them (the master cannot be reached: these are what it said last)
Rows = Callable[[], "list[dict] | tuple[list[dict], str | None]"]


class FleetFeed:
    """The rows the page shows. The provider is asked at most once per `min_interval` seconds however many pages
    poll; when it raises `UserError` (master unreachable, nothing known) its line becomes the page's banner and the
    last rows stay; rows it gives with a line (what an unreachable master said last) are shown under that banner."""

    def __init__(self, rows: Rows, cluster: str, min_interval: float = 1.0) -> None:
        self._rows, self._cluster, self._min_interval = rows, cluster, min_interval
        self._lock = threading.Lock()
        self._nodes: list[dict] = []
        self._error: str | None = None
        self._fetched: float | None = None  # when the provider last answered
        self._asked = float("-inf")

    def snapshot(self) -> dict:
        """{"cluster", "nodes", "error", "fetched", "now"}: the JSON document of /api/nodes."""
        with self._lock:
            now = time.time()
            if now - self._asked >= self._min_interval:
                self._asked = now
                try:
                    answer = self._rows()
                    rows, banner = answer if isinstance(answer, tuple) else (answer, None)
                    self._nodes = [public_row(row) for row in rows]
                    self._error = banner
                    if banner is None:  # rows under a banner are older than now: "fetched" stays the last clean answer
                        self._fetched = now
                except UserError as err:
                    self._error = str(err)
            return {"cluster": self._cluster, "nodes": self._nodes, "error": self._error,
                    "fetched": self._fetched, "now": now}


def public_row(row: dict) -> dict:
    """The fields of `row` the page shows, each coerced to a plain JSON value, plus its progress along its role's
    phases: {"done", "total", "steps": [{"phase", "at"}]}. Unknown keys are dropped."""
    clean: dict[str, Any] = {key: _text(row.get(key)) for key in TEXT_FIELDS}
    clean.update({key: _number(row.get(key)) for key in NUMBER_FIELDS})
    newest = row.get("newest_card")
    clean["newest_card"] = newest if isinstance(newest, bool) else None
    updated = row.get("updated")
    clean["updated"] = _number(updated) if isinstance(updated, (int, float)) else _text(updated)
    phases = row.get("phases")
    reached = phases if isinstance(phases, dict) else {}
    order = CONTROL_PLANE_PHASES if clean["role"] == "control-plane" else WORKER_PHASES
    steps = [{"phase": phase, "at": _number(reached.get(phase))} for phase in order]
    done = [index + 1 for index, step in enumerate(steps) if step["at"] is not None or step["phase"] == clean["phase"]]
    clean["progress"] = {"done": max(done, default=0), "total": len(order), "steps": steps}
    return clean


def _text(value: object) -> str | None:
    if value is None:
        return None
    return SECRET_LOOKING.sub("[hidden]", str(value)[:TEXT_LIMIT])


def _number(value: object) -> float | int | None:
    """`value` if it is a finite number (JSON has no NaN), else None."""
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) else None


class DashboardServer(ThreadingHTTPServer):
    """The page's HTTP server, bound at construction (so a port in use is known before anything is printed).
    Run it with `serve_forever()` (in a thread, for tests), stop it with `shutdown()`, then `server_close()`."""

    daemon_threads = True  # a browser's idle connection never keeps the command from exiting

    def __init__(self, rows: Rows, host: str, port: int, cluster: str = "", public: bool = False,
                 min_interval: float = 1.0) -> None:
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.feed = FleetFeed(rows, cluster, min_interval)
        self.page = (PAGE_DIR / "index.html").read_bytes()
        self.assets = {path.name: (path.read_bytes(), CONTENT_TYPES[path.suffix])
                       for path in (PAGE_DIR / "static").iterdir() if path.suffix in CONTENT_TYPES}
        # a loopback page answers only to loopback names, so a web site cannot reach it by DNS rebinding
        self.host_names = None if public else {*LOOPBACK_NAMES, f"[{host}]" if ":" in host else host}
        try:
            super().__init__((host, port), DashboardHandler)
        except OSError as err:
            raise _bind_error(host, port, err) from None

    @property
    def url(self) -> str:
        """Where a browser on this machine (or, for an any-address bind, on the network) finds the page."""
        bound, port = self.server_address[:2]
        host = bound.decode() if isinstance(bound, bytes) else bound
        if host in ("0.0.0.0", "::"):
            host = socket.gethostname()
        return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def _bind_error(host: str, port: int, err: OSError) -> UserError:
    where = f"--listen {f'[{host}]' if ':' in host else host}:{port}"
    if err.errno == errno.EADDRINUSE:
        return UserError(f"{where}: port {port} is already in use (another dashboard?); stop that program or pick "
                         f"another port, like --listen {host}:{port + 1 if port < 65535 else 8081}")
    if err.errno == errno.EADDRNOTAVAIL:
        return UserError(f"{where}: {host} is not an address of this machine; use 127.0.0.1 or one `ip addr` lists")
    if err.errno == errno.EACCES:
        return UserError(f"{where}: ports below 1024 need root; pick a port from 1024 up, like --listen {host}:8080")
    return UserError(f"{where}: cannot listen there ({err.strerror or err}); pick another address or port")


class DashboardHandler(BaseHTTPRequestHandler):
    """GET /, GET /static/NAME, GET /api/nodes; 404 for anything else (other methods: http.server's 501)."""

    server: DashboardServer
    server_version = "pi-image-dashboard"
    sys_version = ""
    timeout = 30  # an idle or trickling client gives its thread back

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if not self._host_allowed():
            self._send(403, b"this dashboard answers only at its loopback address\n", "text/plain; charset=utf-8")
        elif path == "/":
            self._send(200, self.server.page, "text/html; charset=utf-8")
        elif path == "/api/nodes":
            body = json.dumps(self.server.feed.snapshot(), separators=(",", ":")).encode()
            self._send(200, body, "application/json")
        elif path.startswith("/static/") and path[len("/static/"):] in self.server.assets:
            self._send(200, *self.server.assets[path[len("/static/"):]])
        else:
            self._send(404, b"not found\n", "text/plain; charset=utf-8")

    def _host_allowed(self) -> bool:
        if self.server.host_names is None:
            return True
        host = (self.headers.get("Host") or "").strip().lower()
        name = host if host.startswith("[") and host.endswith("]") else host.rsplit(":", 1)[0]
        return name in self.server.host_names

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        # no inline script or style, nothing from elsewhere: an injected tag could not run even if one got in
        self.send_header("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; "
                         "img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
                         "frame-ancestors 'none'")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)


def parse_listen(listen: str, public: bool) -> tuple[str, int]:
    """(host, port) of --listen HOST:PORT ([::1]:PORT for IPv6, PORT alone for 127.0.0.1:PORT). Any address but
    loopback is refused unless `public`: the page has no login."""
    host, sep, port_text = listen.rpartition(":")
    if not sep:
        host, port_text = "127.0.0.1", listen
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host or not port_text.isdigit() or int(port_text) > 65535:
        raise UserError(f"--listen {listen}: expected HOST:PORT with a port 0-65535, like {DEFAULT_LISTEN} "
                        "(or [::1]:8080)")
    if not public and not _is_loopback(host):
        raise UserError(f"--listen {listen}: {host} is not a loopback address, so anyone who reaches it would see "
                        f"the fleet (the page has no login); add --public to mean it, or use 127.0.0.1:{port_text}")
    return host, int(port_text)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@click.command("dashboard")
@click.option("--cluster", type=click.Path(path_type=Path, file_okay=False),
              help="The cluster to show [default: $PI_IMAGE_CLUSTER, else ~/.config/pi-image/cluster if it exists].")
@click.option("--listen", default=DEFAULT_LISTEN, show_default=True, metavar="HOST:PORT",
              help="Where the page is served; port 0 picks a free one. Loopback only, unless --public.")
@click.option("--public", is_flag=True,
              help="Allow --listen on an address other machines reach (0.0.0.0, a LAN address): no login protects "
                   "the page, anyone who reaches it sees node names, addresses and errors.")
def dashboard_command(cluster: Path | None, listen: str, public: bool) -> None:
    """Serve a web page that shows every node of the cluster as it boots and joins: phase and progress, last error
    and its fix, address, architecture, OS, role, card generation and whether the card is the newest. It updates
    itself every 2 s and reads well on a phone. When the master cannot be reached, the page says so and keeps what
    was last known.

    \b
    Examples:
      pi-image dashboard --cluster ./homelab                 # http://127.0.0.1:8080/ on this machine
      pi-image dashboard --listen 0.0.0.0:8080 --public      # from a phone on the LAN: http://THIS-HOST:8080/
    """
    from ..cluster import load_cluster, required_cluster_dir

    host, port = parse_listen(listen, public)
    cluster_dir = required_cluster_dir(cluster)
    load_cluster(cluster_dir)  # a directory that is no cluster is one line now, not a banner on the page later
    server = DashboardServer(_fleet_rows(cluster_dir), host, port, cluster=cluster_dir.resolve().name, public=public)
    click.echo(f"pi-image dashboard: {server.url} shows the fleet of {cluster_dir}; Ctrl-C to stop")
    if public:
        click.echo("note: --public: anyone who reaches this address sees the page (there is no login)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        click.echo("pi-image dashboard: stopped")
    finally:
        server.server_close()


def _fleet_rows(cluster_dir: Path) -> Rows:
    """The command's provider: `builder.cluster.status.fleet_status` of the cluster (as `pi-image status` shows it),
    imported when first asked."""

    def rows() -> tuple[list[dict], str | None]:
        from ..cluster.status import fleet_status

        return fleet_status(cluster_dir)

    return rows
