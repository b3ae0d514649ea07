"""The host side of a boot test: the cluster directory, the real token endpoint, the fake cluster, the guest.

    NodeBuild   made once per session: `pi-image cluster init/add-node` + `pi-image build` on the Ubuntu-layout base
    SystemLab   one scenario: private copies of the image and cluster directory, the join tests' fake cluster
                (kubeadm/kubectl stand-ins on the endpoint's PATH), a fake API server for the guest's `kubeadm join`,
                `pi-image token-server` on 127.0.0.1 (10.0.2.2 in the guest), and the guest's power-ons.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from join_fakes.harness import FakeCluster

from apt_repo import kube_release
from builder.run import run
from qemu_guest import BootFiles, Guest
from ubuntu_layout import read_root_file

NODE = "pi-worker1"
GUEST_TIMEOUT = 480  # seconds of uptime after which the guest's monitor reports and powers off by itself
BOOT_TIMEOUT = GUEST_TIMEOUT + 180  # host side: QEMU start to power-off
RESULTS = "/var/lib/pi-image-test"
TOKEN = re.compile(r"\b[a-z0-9]{6}\.[a-z0-9]{16}\b")


def pi_image(*args: str) -> subprocess.CompletedProcess:
    """The real CLI, as a user runs it (a failure raises with its message)."""
    return run([sys.executable, "-m", "builder", *args])


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class NodeBuild:
    """The built node image and the cluster it belongs to (read-only: scenarios copy them)."""

    image: Path
    cluster_dir: Path
    ca_cert: Path
    ca_hash: str
    api_port: int
    endpoint_port: int
    figures: dict = field(default_factory=dict)
    node: str = NODE
    kubernetes_version: str = "1.31"


class FakeApiServer:
    """Where the guest's `kubeadm join` stand-in sends its JoinConfiguration: it runs the join tests' kubeadm stand-in
    (`kubeadm join --config FILE`) against the fake cluster and answers with its exit code and output."""

    def __init__(self, fake: FakeCluster, port: int, log: Path):
        lab = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                answer = lab.join(request["config"], request["kubeadm_version"])
                body = json.dumps(answer).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format, *args):  # noqa: A002
                with open(log, "a") as handle:
                    handle.write((format % args) + "\n")

        self.fake = fake
        self.tokens_seen: list[str] = []  # secrets the guest presented, to prove they leak nowhere
        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def join(self, config: str, kubeadm_version: str) -> dict:
        self.tokens_seen += TOKEN.findall(config)
        self.fake.knob("kubeadm_version", kubeadm_version)
        with tempfile.NamedTemporaryFile("w", dir=self.fake.state, suffix=".yaml", delete=False) as handle:
            handle.write(config)
        try:
            result = run([str(self.fake.bin / "kubeadm"), "join", "--config", handle.name], env=self.fake.env,
                         check=False)
        finally:
            os.unlink(handle.name)
        return {"returncode": result.returncode, "stdout": result.stdout.decode(), "stderr": result.stderr.decode()}

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class TokenEndpoint:
    """`pi-image token-server` as a process on 127.0.0.1:PORT, with the fake cluster's kubeadm/kubectl on PATH."""

    def __init__(self, cluster_dir: Path, fake: FakeCluster, ca_cert: Path, port: int):
        self.argv = [sys.executable, "-m", "builder", "token-server", "--cluster", str(cluster_dir),
                     "--listen", f"127.0.0.1:{port}", "--ca-cert", str(ca_cert),
                     "--kubeconfig", str(cluster_dir / "admin.conf")]
        self.env = fake.env
        self.log = cluster_dir / "token-server.log"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(self.argv, env=self.env, stdout=subprocess.PIPE, stderr=log)
        line = self.process.stdout.readline().decode()
        assert "listening on" in line, f"token server did not start: {line!r}\n{self.log.read_text()}"

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


class SystemLab:
    """One scenario's world; `boot()` powers the node on, the rest reads what happened on both sides."""

    def __init__(self, base: Path, build: NodeBuild):
        self.base = base
        self.build = build
        self.cluster_dir = base / "cluster"
        shutil.copytree(build.cluster_dir, self.cluster_dir)
        self.image = base / "node.img"
        run(["cp", "--sparse=always", str(build.image), str(self.image)])
        self.boot_files = BootFiles(self.image, base)
        self.fake = FakeCluster(base)
        self.fake.knob("expected_ca_hash", build.ca_hash)
        self.fake.knob("cluster_version", kube_release(build.kubernetes_version))  # what the API server runs
        self.api = FakeApiServer(self.fake, build.api_port, base / "apiserver.log")
        self.api.start()
        self.endpoint = TokenEndpoint(self.cluster_dir, self.fake, build.ca_cert, build.endpoint_port)
        self.guests: list[Guest] = []

    def boot(self, kernel_args: tuple[str, ...] = (), rtc_base: str | None = None, cloud_init: bool = False,
             **knobs: str) -> Guest:
        """Power the node on; `knobs` become pitest.KEY=VALUE on the kernel command line (see guest/test-tools).

        cloud-init (which applies the build's seed on system-boot, as on Ubuntu) runs only with `cloud_init`: it
        costs a minute of emulated CPU per boot, and only the static-network story needs what it does."""
        knobs.setdefault("timeout", GUEST_TIMEOUT)
        kernel_args = (*kernel_args, *(() if cloud_init else ("cloud-init=disabled",)))
        guest = Guest(self.image, self.boot_files, self.base / f"serial-{len(self.guests) + 1}.log", knobs,
                      kernel_args, rtc_base=rtc_base)
        self.guests.append(guest)
        return guest.start()

    def close(self) -> None:
        for guest in self.guests:
            guest.power_cut()
        self.endpoint.stop()
        self.api.stop()

    def status(self) -> dict:
        """The node's entry in `pi-image status --cluster DIR --json`."""
        rows = json.loads(pi_image("status", "--cluster", str(self.cluster_dir), "--json").stdout)
        return next(row for row in rows if row["node"] == self.build.node)

    def audit_decisions(self) -> list[str]:
        """The endpoint's audit log, one `decision=...` word per line."""
        return [line.split("decision=", 1)[1].split()[0] for line in self._audit() if "decision=" in line]

    def _audit(self) -> list[str]:
        path = self.cluster_dir / "state" / "audit.log"
        return path.read_text().splitlines() if path.exists() else []

    def tokens_issued(self) -> list[str]:
        """The ids of the bootstrap tokens the endpoint minted, in order (from its audit log)."""
        return [line.split("token_id=", 1)[1].split()[0] for line in self._audit() if "decision=token-issued" in line]

    def guest_file(self, path: str) -> str | None:
        """A file of the powered-off guest's root filesystem, read with debugfs."""
        data = read_root_file(self.image, path)
        return None if data is None else data.decode(errors="replace")

    def guest_calls(self, tool: str | None = None) -> list[list[str]]:
        """The stand-ins' calls in the guest (args lists), optionally of one tool."""
        text = self.guest_file(f"{RESULTS}/calls.jsonl") or ""
        records = [json.loads(line) for line in text.splitlines() if line.strip()]
        return [r["args"] for r in records if tool is None or r["tool"] == tool]

    _MISSING = object()

    def guest_report(self, boot: int, default=_MISSING) -> dict:
        """What the guest's monitor recorded at the end of power-on number `boot` (`default` if it wrote nothing)."""
        text = self.guest_file(f"{RESULTS}/boot-{boot}.json")
        if text is None:
            assert default is not self._MISSING, \
                f"the guest wrote no report for boot {boot}; serial log: {self.base}/serial-{boot}.log"
            return default
        return json.loads(text)
