"""`pi-image dashboard`: the fleet page in a real headless browser (Debian's chromium), fed by a scripted fleet
that moves nodes through their phases; its server's bounds; and the command's one-line refusals."""

from __future__ import annotations

import http.client
import json
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import ClassVar

import pytest
from readback import PiImage, succeeded

from builder.cli.dashboard import (
    CONTROL_PLANE_PHASES,
    WORKER_PHASES,
    DashboardServer,
    parse_listen,
)
from builder.errors import UserError

CHROMIUM = Path("/usr/bin/chromium")
needs_chromium = pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed "
                                    "(/usr/bin/chromium): `apt-get install chromium` to test the page in a browser")
T0 = int(time.time()) - 600  # when the scripted fleet's nodes booted
HOSTILE = "<script>alert(1)</script><img src=x onerror=\"document.title='pwned'\">"
SECRETS = {"credential": "c0ffee" * 11, "token": "abcdef.0123456789abcdef", "enrollment_key": "ENROLL-SECRET-42",
           "admin_credential": "ADMIN-SECRET-7"}
ROW_KEYS = {"node", "role", "address", "arch", "os", "generation", "card_generation", "newest_card", "phase",
            "last_error", "fix", "updated", "source", "progress"}


class ScriptedFleet:
    """A stand-in for `builder.build.fleet.fleet_status`: nodes at chosen phases. `advance(name)` moves one node on;
    `moving` names a node that moves on after each answer; `unreachable` makes the next answers a UserError."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.nodes: dict[str, dict] = {}
        self.moving: str | None = None
        self.unreachable: str | None = None
        self.answered: list[str | None] = []  # the moving node's phase in each answer

    def add(self, name: str, phase: str | None, role: str = "worker", **fields: object) -> None:
        order = CONTROL_PLANE_PHASES if role == "control-plane" else WORKER_PHASES
        self.nodes[name] = {"node": name, "role": role, "order": order, "at": order.index(phase) if phase else -1,
                            "generation": 1, "card_generation": 1, "newest_card": True, "source": "endpoint",
                            "last_error": None, "fix": None, **fields}

    def advance(self, name: str, steps: int = 1) -> str:
        node = self.nodes[name]
        node["at"] = min(node["at"] + steps, len(node["order"]) - 1)
        return node["order"][node["at"]]

    def phase(self, name: str) -> str | None:
        node = self.nodes[name]
        return node["order"][node["at"]] if node["at"] >= 0 else None

    def __call__(self) -> list[dict]:
        with self.lock:
            if self.unreachable:
                raise UserError(self.unreachable)
            rows = [self._row(node) for node in self.nodes.values()]
            if self.moving:
                self.answered.append(self.phase(self.moving))
                self.advance(self.moving)
            return rows

    @staticmethod
    def _row(node: dict) -> dict:
        reached = node["order"][:node["at"] + 1]
        row = {key: value for key, value in node.items() if key not in ("order", "at")}
        return {**row, "phase": reached[-1] if reached else None, "updated": T0 + 40 * node["at"] if reached else None,
                "phases": {phase: T0 + 40 * index for index, phase in enumerate(reached)}}


def lab_fleet() -> ScriptedFleet:
    """Six nodes of a mixed fleet, each at another point of its story."""
    fleet = ScriptedFleet()
    fleet.add("pi-master1", "ready", "control-plane", address="192.168.6.11", arch="arm64", os="Ubuntu 24.04.1 LTS")
    fleet.add("pi-worker1", "joined", address="192.168.6.15", arch="arm64", os="Ubuntu 24.04.1 LTS",
              generation=2, card_generation=2)
    fleet.add("kali-worker2", "waiting-for-control-plane", address="192.168.6.16", arch="arm64",
              os="Kali GNU/Linux Rolling", generation=3, card_generation=2, newest_card=False,
              last_error="the token endpoint refused this card: generation 2 is not the newest (3)",
              fix="write kali-worker2's newest image: pi-image flash kali-worker2.img /dev/sdX")
    fleet.add("jetson-nano1", "runtime-installed", address="192.168.6.17", arch="arm64", os="Ubuntu 18.04.6 LTS")
    fleet.add("x86-worker3", "booted", address="192.168.6.18", arch="amd64", os="Ubuntu 24.04.1 LTS")
    fleet.add("pi-worker4", None, address="192.168.6.19", card_generation=None, newest_card=None)
    return fleet


@pytest.fixture
def fleet() -> ScriptedFleet:
    return lab_fleet()


@pytest.fixture
def page(fleet: ScriptedFleet) -> Iterator[DashboardServer]:
    """The dashboard of `fleet` on a free loopback port, serving from a thread; the provider is asked on every poll."""
    server = DashboardServer(fleet, "127.0.0.1", 0, cluster="homelab", min_interval=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(10)


def chromium(url: str, tmp_path: Path, *args: str, budget_ms: int = 5000) -> str:
    """What headless chromium prints for `url` after `budget_ms` of (virtual) time: the page ran its script."""
    profile = tmp_path / f"chromium-profile-{time.monotonic_ns()}"
    proc = subprocess.run([str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu",
                           "--disable-background-networking", "--disable-component-update", "--disable-sync",
                           "--no-first-run", "--hide-scrollbars", f"--user-data-dir={profile}",
                           f"--virtual-time-budget={budget_ms}", *args, url],
                          check=False, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"chromium exit {proc.returncode}: {proc.stderr[-2000:]}"
    return proc.stdout


def rendered(url: str, tmp_path: Path) -> str:
    return chromium(url, tmp_path, "--dump-dom")


class NodeRows(HTMLParser):
    """The page's node rows as {cell name: text}, cell name from the cell's class (`cell-phase` → "phase"); the
    text of each element with an id (banner, summary...); every tag name seen."""

    VOID: ClassVar[set[str]] = {"meta", "link", "br", "img", "input", "hr", "source", "wbr"}

    def __init__(self, dom: str) -> None:
        super().__init__()
        self.rows: list[dict[str, str]] = []
        self.by_id: dict[str, str] = {}
        self.tags: list[str] = []
        self._open: list[tuple[str, str | None, str | None]] = []  # (tag, id, cell name) of each open element
        self.feed(dom)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        found = dict(attrs)
        cell = None
        if any(element_id == "rows" for _, element_id, _ in self._open):
            if tag == "tr":
                self.rows.append({})
            if tag == "td":
                cell = (found.get("class") or "").removeprefix("cell-")
                self.rows[-1][cell] = ""
        if found.get("id"):
            self.by_id[found["id"] or ""] = ""
        if tag not in self.VOID:
            self._open.append((tag, found.get("id"), cell))

    def handle_endtag(self, tag: str) -> None:
        while self._open and self._open.pop()[0] != tag:
            pass

    def handle_data(self, data: str) -> None:
        for _, element_id, cell in self._open:
            if element_id:
                self.by_id[element_id] = " ".join(f"{self.by_id[element_id]} {data}".split())
            if cell:
                self.rows[-1][cell] = " ".join(f"{self.rows[-1][cell]} {data}".split())

    def node(self, name: str) -> dict[str, str]:
        return next(row for row in self.rows if row["node"] == name)


# --- the page in a browser -------------------------------------------------------------------------------------

@needs_chromium
def test_every_node_shows_its_phase_progress_address_card_and_error(page, fleet, tmp_path):
    dom = NodeRows(rendered(page.url, tmp_path))
    assert [row["node"] for row in dom.rows] == list(fleet.nodes)
    for name, node in fleet.nodes.items():
        row = dom.node(name)
        assert row["role"] == node["role"] and row["address"] == node["address"]
        assert row["phase"].startswith(fleet.phase(name) or "not seen yet"), row
        assert row["arch"] == node.get("arch", "–") and row["os"] == node.get("os", "–")
    assert "7 of 7 phases" in dom.node("pi-master1")["phase"]
    assert "6 of 7 phases" in dom.node("pi-worker1")["phase"]
    assert "0 of 7 phases" in dom.node("pi-worker4")["phase"]
    assert "initialized" in dom.node("pi-master1")["phase"], "a control plane's timeline has initialized"
    kali = dom.node("kali-worker2")
    assert kali["error"] == ("the token endpoint refused this card: generation 2 is not the newest (3) Fix: write "
                             "kali-worker2's newest image: pi-image flash kali-worker2.img /dev/sdX")
    assert kali["card"] == "generation 2 old (newest 3): reflash"
    assert dom.node("pi-worker1")["card"] == "generation 2 newest"
    assert dom.by_id["summary"] == "6 nodes · 1 ready · 1 with an error · 3 on their way · 1 not seen yet"
    assert dom.by_id["cluster"] == "homelab"
    assert dom.by_id["banner"] == ""


@needs_chromium
def test_reloading_the_page_shows_nodes_further_along(page, fleet, tmp_path):
    assert NodeRows(rendered(page.url, tmp_path)).node("x86-worker3")["phase"].startswith("booted")
    fleet.advance("x86-worker3", 3)
    fleet.nodes["x86-worker3"].update(last_error="kubeadm join: connection refused", fix="is the master on?")
    row = NodeRows(rendered(page.url, tmp_path)).node("x86-worker3")
    assert row["phase"].startswith("waiting-for-control-plane 4 of 7 phases")
    assert row["error"] == "kubeadm join: connection refused Fix: is the master on?"
    assert "local-setup" in row["phase"] and "(+40 s)" in row["phase"], "the timeline says when each phase came"


@needs_chromium
def test_an_open_page_follows_a_node_through_its_phases_by_itself(page, fleet, tmp_path):
    fleet.moving = "x86-worker3"
    row = NodeRows(rendered(page.url, tmp_path)).node("x86-worker3")  # 5 s of page time: it polls every 2 s
    assert len(fleet.answered) >= 2, f"the page asked {len(fleet.answered)} time(s) in 5 s"
    shown = row["phase"].split()[0]
    assert shown in fleet.answered[1:], f"the page shows {shown}, the answers were {fleet.answered}"


@needs_chromium
def test_an_unreachable_master_is_a_banner_above_the_last_known_rows(page, fleet, tmp_path):
    assert ask(page.server_address[1], "/api/nodes")[0] == 200
    fleet.unreachable = "the master's endpoint 192.168.6.11:8443 does not answer (is it on?)"
    dom = NodeRows(rendered(page.url, tmp_path))
    assert dom.by_id["banner"].startswith(fleet.unreachable + " (showing what was known at ")
    assert [row["node"] for row in dom.rows] == list(fleet.nodes)
    assert dom.node("pi-master1")["phase"].startswith("ready")


@needs_chromium
def test_hostile_node_names_and_error_texts_are_shown_as_text(page, fleet, tmp_path):
    fleet.add("pi-<b>x</b>", "booted", address="192.168.6.20", last_error=HOSTILE, fix="</td></tr><i>fix</i>")
    html = rendered(page.url, tmp_path)
    dom = NodeRows(html)
    row = dom.node("pi-<b>x</b>")
    assert row["error"] == f"{HOSTILE} Fix: </td></tr><i>fix</i>"
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert dom.tags.count("script") == 1, "only the page's own script"
    assert not {"img", "b", "i"} & set(dom.tags)
    assert "pwned" not in html.split("<title>")[1].split("</title>")[0]


@needs_chromium
def test_nothing_secret_reaches_the_api_or_the_page(page, fleet, tmp_path):
    for node in fleet.nodes.values():
        node.update(SECRETS)
    fleet.nodes["pi-worker1"]["last_error"] = f"kubeadm join --token {SECRETS['token']} failed"
    body = ask(page.server_address[1], "/api/nodes")[2].decode()
    assert all(set(row) == ROW_KEYS for row in json.loads(body)["nodes"])
    html = rendered(page.url, tmp_path)
    for secret in SECRETS.values():
        assert secret not in body and secret not in html
    assert NodeRows(html).node("pi-worker1")["error"] == "kubeadm join --token [hidden] failed"


@needs_chromium
@pytest.mark.parametrize("screen", [(390, 844), (1280, 800)], ids=["phone", "desktop"])
def test_screenshots_of_the_fleet_on_a_phone_and_a_desktop(page, fleet, tmp_path, screen):
    width, height = screen
    shot = tmp_path / f"dashboard-{width}x{height}.png"
    chromium(page.url, tmp_path, f"--screenshot={shot}", f"--window-size={width},{height}")
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", data[16:24]) == (width, height)
    assert len(data) > 30_000, f"{shot}: {len(data)} bytes, too few for a page of six nodes"


# --- the server's bounds ---------------------------------------------------------------------------------------

def ask(port: int, path: str, method: str = "GET", host: str | None = None) -> tuple[int, dict, bytes]:
    """(status, headers, body) of one request to the dashboard on `port`, with the Host header a browser sends."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.putrequest(method, path, skip_host=True)
        connection.putheader("Host", host or f"127.0.0.1:{port}")
        connection.endheaders()
        answer = connection.getresponse()
        return answer.status, dict(answer.getheaders()), answer.read()
    finally:
        connection.close()


def test_the_server_answers_only_the_page_its_files_and_the_rows(page):
    port = page.server_address[1]
    assert ask(port, "/")[1]["Content-Type"] == "text/html; charset=utf-8"
    for name, kind in (("pico.min.css", "text/css"), ("dashboard.css", "text/css"),
                       ("dashboard.js", "text/javascript"), ("pico.LICENSE.md", "text/plain")):
        status, headers, _ = ask(port, f"/static/{name}")
        assert (status, headers["Content-Type"].split(";")[0]) == (200, kind), name
    status, headers, body = ask(port, "/api/nodes?again=1")
    assert status == 200 and headers["Content-Type"] == "application/json" and json.loads(body)["nodes"]
    assert "script-src 'self'" in headers["Content-Security-Policy"]
    for path in ("/index.html", "/static/", "/static/../dashboard.py", "/static/%2e%2e/index.html", "/api/nodes/x",
                 "/api", "//etc/passwd", "/static/dashboard.js/"):
        assert ask(port, path)[0] == 404, path
    assert ask(port, "/", method="POST")[0] == 501
    assert ask(port, "/api/nodes", host="evil.example:80")[0] == 403, "a rebound DNS name gets nothing"
    assert ask(port, "/", host=f"localhost:{port}")[0] == 200


# --- the command -----------------------------------------------------------------------------------------------

# `pi-image` with the dashboard command, whether or not the CLI registers it yet
WITH_DASHBOARD = ("from builder.cli import main; from builder.cli.dashboard import dashboard_command; "
                  "main.commands.setdefault('dashboard', dashboard_command); main(prog_name='pi-image')")


def dashboard(*args: str | Path) -> list[str]:
    return [sys.executable, "-c", WITH_DASHBOARD, "dashboard", *map(str, args)]


@pytest.fixture(scope="module")
def homelab(cli: PiImage, tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("dashboard") / "homelab"
    succeeded(cli("cluster", "init", directory, "--api-server", "192.168.6.11:6443", "--endpoint",
                  "192.168.6.11:8443", "--kubernetes-version", "1.31", "--node-subnet", "192.168.6.0/24"))
    return directory


def one_line_error(cli: PiImage, *args: str | Path) -> str:
    proc = subprocess.run(dashboard(*args), check=False, capture_output=True, text=True, env=cli.env(),
                          timeout=60)
    assert (proc.returncode, proc.stdout) == (1, ""), proc
    assert proc.stderr.startswith("pi-image: error: ") and proc.stderr.count("\n") == 1, proc.stderr
    return proc.stderr


def test_an_address_other_than_loopback_is_refused_without_public(cli, homelab):
    error = one_line_error(cli, "--cluster", homelab, "--listen", "0.0.0.0:8080")
    assert error == ("pi-image: error: --listen 0.0.0.0:8080: 0.0.0.0 is not a loopback address, so anyone who "
                     "reaches it would see the fleet (the page has no login); add --public to mean it, or use "
                     "127.0.0.1:8080\n")
    for listen in ("192.168.6.5:8080", "[::]:8080", "mybox.lan:8080"):
        with pytest.raises(UserError, match="add --public to mean it"):
            parse_listen(listen, public=False)
        assert parse_listen(listen, public=True)[1] == 8080
    assert [parse_listen(listen, public=False) for listen in ("localhost:80", "[::1]:0", "127.0.0.2:1", "9000")] \
        == [("localhost", 80), ("::1", 0), ("127.0.0.2", 1), ("127.0.0.1", 9000)]


@pytest.mark.parametrize("listen", ["8080x", "127.0.0.1:", "127.0.0.1:70000", ":8080", "[::1]"])
def test_a_listen_that_is_no_host_and_port_is_refused(listen):
    with pytest.raises(UserError, match=r"expected HOST:PORT with a port 0-65535, like 127.0.0.1:8080"):
        parse_listen(listen, public=True)


def test_a_port_in_use_is_one_line(cli, homelab):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        error = one_line_error(cli, "--cluster", homelab, "--listen", f"127.0.0.1:{port}")
    assert f"--listen 127.0.0.1:{port}: port {port} is already in use" in error


def test_a_directory_that_is_no_cluster_is_one_line(cli, tmp_path):
    assert "cluster.yaml" in one_line_error(cli, "--cluster", tmp_path)
    assert "no cluster: pass --cluster DIR" in one_line_error(cli)


def test_the_command_prints_its_url_serves_the_page_and_stops_on_ctrl_c(cli, homelab):
    proc = subprocess.Popen(dashboard("--cluster", homelab, "--listen", "127.0.0.1:0"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=cli.env(),
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        first = proc.stdout.readline()
        assert first.startswith("pi-image dashboard: http://127.0.0.1:") and first.endswith("; Ctrl-C to stop\n")
        assert f"shows the fleet of {homelab}" in first
        port = int(first.split("http://127.0.0.1:")[1].split("/")[0])
        assert ask(port, "/")[0] == 200
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    assert (proc.returncode, out, err) == (0, "pi-image dashboard: stopped\n", "")


def test_rows_a_provider_gives_with_a_line_show_under_that_banner():
    from builder.cli.dashboard import FleetFeed

    away = "the master 192.168.6.11:8443 cannot be reached (No route to host): showing what it said 2m ago"
    feed = FleetFeed(lambda: ([{"node": "pi-worker1", "phase": "joined", "source": "cache"}], away), "homelab", 0.0)

    snapshot = feed.snapshot()

    assert [(node["node"], node["source"]) for node in snapshot["nodes"]] == [("pi-worker1", "cache")]
    assert snapshot["error"] == away and snapshot["fetched"] is None, "the rows are not from now"


def test_the_commands_rows_are_what_status_shows_local_state_before_any_master_card(cli, tmp_path):
    from builder import cluster as clusters

    lab = clusters.init_cluster(tmp_path / "lab", "192.168.6.10:6443", "192.168.6.10:8443", "1.31", "192.168.6.0/24")
    clusters.add_node(lab, "pi-master1", "master-2g", None, "control-plane", address="192.168.6.10")

    proc = subprocess.Popen(dashboard("--cluster", lab.directory, "--listen", "127.0.0.1:0"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=cli.env(),
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        port = int(proc.stdout.readline().split("http://127.0.0.1:")[1].split("/")[0])
        status, _, body = ask(port, "/api/nodes")
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)

    snapshot = json.loads(body)
    assert status == 200 and snapshot["error"] is None, snapshot
    assert [(row["node"], row["source"]) for row in snapshot["nodes"]] == [("pi-master1", "local")]
