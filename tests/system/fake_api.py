"""The control plane the guests talk to: an HTTP server on the host in front of the join tests' fake cluster.

There is no Kubernetes here. What the guests' kubeadm and kubectl stand-ins (guest/test-tools) would send to a real
API server comes here instead, and each request is played by the join tests' stand-in of the same tool
(join_fakes/fake_tool.py) against one FakeCluster, so the guests and the host see the same nodes and tokens:

    POST /pi-image-test/kubeadm-join  {"config", "kubeadm_version"}   `kubeadm join --config FILE` with FAKE_ROOT a
                                      fresh directory; the answer adds the files it wrote there (a control plane's
                                      join writes admin.conf and the pki, as init does)
    POST /pi-image-test/kubeadm-init  {"args", "config", "config_mode", "kubeadm_version", "manifests"}
                                      `kubeadm init ARGS` with FAKE_ROOT a fresh directory (as the guest's agent
                                      resets before it inits again) holding the guest's static pods (`manifests`:
                                      {name: text}); the answer adds the files it wrote there
                                      ({"etc/kubernetes/admin.conf": {"content", "mode"}, ...}). `init phase
                                      upload-certs` comes the same way.
    POST /pi-image-test/kubeadm-upgrade {"args", "kubeadm_version"}  `kubeadm upgrade plan|apply|node ...`
    POST /pi-image-test/kubectl       `kubectl ARGS` (framing: see guest/.../kubectl.bash); a file given with -f FILE
                                      is written here first and its path put in its place
    GET  /pi-image-test/hold          "stay" until release() is called, then "release" (the guest monitor's
                                      pitest.stay_while= polls it before it powers off)

JSON answers are {"returncode", "stdout", "stderr"}, as the real tool's exit code and output.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from join_fakes.harness import FakeCluster

from builder.run import run

TOKEN = re.compile(r"\b[a-z0-9]{6}\.[a-z0-9]{16}\b")
PREFIX = "/pi-image-test/"


class FakeApiServer:
    """Serves the routes above on 127.0.0.1:`port` (10.0.2.2:`port` in the guests) for `fake`."""

    def __init__(self, fake: FakeCluster, port: int, log: Path):
        self.fake = fake
        self.log = log
        self.tokens_seen: list[str] = []  # secrets the guests presented or created, to prove they leak nowhere
        self.init_files: dict[str, dict] = {}  # what the last `kubeadm init` wrote
        self.released = threading.Event()
        self.server = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def _handler(self):
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                if self.path != PREFIX + "hold":
                    return self.send_error(404)
                self._answer(b"release\n" if api.released.is_set() else b"stay\n")

            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                route = self.path[len(PREFIX):] if self.path.startswith(PREFIX) else None
                if route == "kubectl":
                    returncode, stdout, stderr = api.kubectl(body, int(self.headers["X-Args"]),
                                                             int(self.headers["X-File-Bytes"]))
                    return self._answer(stdout + stderr, {"X-Exit-Code": returncode, "X-Stdout-Bytes": len(stdout)})
                request = json.loads(body)
                if route == "kubeadm-join":
                    answer = api.join(request["config"], request["kubeadm_version"])
                elif route == "kubeadm-upgrade":
                    answer = api.upgrade(request["args"], request["kubeadm_version"])
                elif route == "kubeadm-init":
                    answer = api.init(request["args"], request["config"], request["config_mode"],
                                      request["kubeadm_version"], request.get("manifests", {}))
                else:
                    return self.send_error(404)
                self._answer(json.dumps(answer).encode())

            def _answer(self, body: bytes, headers: dict | None = None):
                self.send_response(200)
                for name, value in {"Content-Length": len(body), **(headers or {})}.items():
                    self.send_header(name, str(value))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format, *args):  # noqa: A002
                with open(api.log, "a") as handle:
                    handle.write((format % args) + "\n")

        return Handler

    def join(self, config: str, kubeadm_version: str) -> dict:
        self.tokens_seen += TOKEN.findall(config)
        self.fake.knob("kubeadm_version", kubeadm_version)
        with tempfile.TemporaryDirectory(dir=self.fake.state) as work:
            path, root = Path(work) / "join-config.yaml", Path(work) / "root"
            path.write_text(config)
            root.mkdir()
            return self._with_files(["join", "--config", str(path)], root)

    def init(self, args: list[str], config: str, config_mode: int, kubeadm_version: str,
             manifests: dict[str, str]) -> dict:
        self.tokens_seen += TOKEN.findall(config)
        self.fake.knob("kubeadm_version", kubeadm_version)
        with tempfile.TemporaryDirectory(dir=self.fake.state) as work:
            path, root = Path(work) / "init-config.yaml", Path(work) / "root"
            path.write_text(config)
            path.chmod(config_mode)  # the fake checks what kubeadm's reader would see: who else could read it
            (root / "etc/kubernetes/manifests").mkdir(parents=True)
            for name, text in manifests.items():
                (root / "etc/kubernetes/manifests" / os.path.basename(name)).write_text(text)
            args = list(args)
            args[args.index("--config") + 1] = str(path)
            answer = self._with_files(args, root)
        if "phase" not in args:
            self.init_files = answer["files"]
        return answer

    def upgrade(self, args: list[str], kubeadm_version: str) -> dict:
        self.fake.knob("kubeadm_version", kubeadm_version)
        return _answer(run([str(self.fake.bin / "kubeadm"), *args], env=self.fake.env, check=False))

    def _with_files(self, args: list[str], root: Path) -> dict:
        """The fake kubeadm's answer to `args` with FAKE_ROOT `root`, and the files it wrote there."""
        answer = _answer(run([str(self.fake.bin / "kubeadm"), *args], env={**self.fake.env, "FAKE_ROOT": str(root)},
                             check=False))
        files = {str(file.relative_to(root)): {"content": file.read_text(), "mode": file.stat().st_mode & 0o7777}
                 for file in sorted(root.rglob("*")) if file.is_file()}
        return dict(answer, files=files)

    def kubectl(self, body: bytes, argc: int, file_bytes: int) -> tuple[int, bytes, bytes]:
        *words, rest = body.split(b"\0", argc)
        args = [word.decode() for word in words]
        content, stdin = rest[:file_bytes], rest[file_bytes:]
        self.tokens_seen += _bootstrap_tokens(stdin)
        with tempfile.TemporaryDirectory(dir=self.fake.state) as work:
            if "-f" in args and args[args.index("-f") + 1] != "-":
                where = args.index("-f") + 1
                path = Path(work) / os.path.basename(args[where])
                path.write_bytes(content)
                args[where] = str(path)
            result = run([str(self.fake.bin / "kubectl"), *args], env=self.fake.env, input=stdin, check=False)
        return result.returncode, result.stdout, result.stderr

    def release(self) -> None:
        """Let the guests that stay while /hold says so power off."""
        self.released.set()

    def start(self) -> FakeApiServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _answer(result) -> dict:
    return {"returncode": result.returncode, "stdout": result.stdout.decode(), "stderr": result.stderr.decode()}


def _bootstrap_tokens(text: bytes) -> list[str]:
    """The token of a bootstrap-token Secret (JSON, as the endpoint creates it), id and secret apart in it."""
    try:
        data = json.loads(text).get("stringData", {})
        return [data["token-id"] + "." + data["token-secret"]]
    except (ValueError, AttributeError, KeyError, TypeError):
        return []
