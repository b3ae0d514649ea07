"""The host side of a boot test: the cluster directory, the fake control plane, the token endpoint, the guests.

    ClusterBuild  made once per session: `pi-image cluster init/add-node` + `pi-image build` of each node on the
                  Ubuntu-layout base
    ClusterLab    one scenario with every node of a build: private copies of the images and the cluster directory,
                  the join tests' fake cluster behind a fake API server (fake_api.py) for the guests' kubeadm and
                  kubectl, and the nodes' power-ons; a control-plane node serves the token endpoint itself
    SystemLab     one scenario with one node, whose token endpoint is `pi-image token-server` on the host's
                  127.0.0.1 (10.0.2.2 in the guest), with the fake cluster's kubeadm/kubectl on its PATH
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from apt_repo import kube_release
from fake_api import FakeApiServer
from join_fakes.harness import FakeCluster
from qemu_guest import BootFiles, Guest
from ubuntu_layout import read_root_file

from builder.run import run

NODE = "pi-worker1"
GUEST_TIMEOUT = 480  # seconds of uptime after which the guest's monitor reports and powers off by itself
BOOT_TIMEOUT = GUEST_TIMEOUT + 180  # host side: QEMU start to power-off
RESULTS = "/var/lib/pi-image-test"
ENDPOINT_STATE = "/etc/pi-image/cluster/state"  # a control-plane node's token endpoint state (see its unit)


def pi_image(*args: str) -> subprocess.CompletedProcess:
    """The real CLI, as a user runs it (a failure raises with its message)."""
    return run([sys.executable, "-m", "builder", *args])


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class ClusterBuild:
    """The built node images and the cluster they belong to (read-only: scenarios copy them)."""

    images: dict[str, Path]  # node name -> image, in the order the nodes were added
    cluster_dir: Path
    ca_cert: Path
    ca_hash: str
    api_port: int
    endpoint_port: int
    figures: dict = field(default_factory=dict)
    kubernetes_version: str = "1.31"

    @property
    def node(self) -> str:
        """The first node (the only one, in a single-node build)."""
        return next(iter(self.images))

    @property
    def image(self) -> Path:
        return self.images[self.node]


@dataclass
class PowerOn:
    node: str
    number: int  # the node's power-ons, counted from 1 (its monitor's boot-N.json)
    guest: Guest


class ClusterLab:
    """One scenario's world; `boot(node)` powers a node on, the rest reads what happened on both sides."""

    def __init__(self, base: Path, build: ClusterBuild):
        self.base = base
        self.build = build
        self.cluster_dir = base / "cluster"
        shutil.copytree(build.cluster_dir, self.cluster_dir)
        self.images, self.boot_files = {}, {}
        for node, built in build.images.items():
            self.images[node] = base / f"{node}.img"
            run(["cp", "--sparse=always", str(built), str(self.images[node])])
            (base / node).mkdir()
            self.boot_files[node] = BootFiles(self.images[node], base / node)
        self.fake = FakeCluster(base)
        self.fake.knob("expected_ca_hash", build.ca_hash)
        self.fake.knob("ca_cert_file", build.ca_cert)  # the CA a `kubeadm init` writes: the hash above is its key's
        self.fake.knob("cluster_version", kube_release(build.kubernetes_version))  # what the API server runs
        self.api = FakeApiServer(self.fake, build.api_port, base / "apiserver.log").start()
        self.power_ons: list[PowerOn] = []

    @property
    def guests(self) -> list[Guest]:
        return [power_on.guest for power_on in self.power_ons]

    def boot(self, node: str | None = None, kernel_args: tuple[str, ...] = (), rtc_base: str | None = None,
             cloud_init: bool = False, hostfwd: tuple[int | tuple[int, int], ...] = (), memory_mib: int = 1024,
             only_ports: tuple[int, ...] | None = None, guestfwd: tuple[tuple[str, int], ...] = (),
             address: str | None = None, **knobs) -> Guest:
        """Power `node` on (default: the build's first); `knobs` become pitest.KEY=VALUE on the kernel command line
        (see guest/test-tools), `hostfwd` ports of the host's 127.0.0.1 lead to the same ports of its cluster NIC.

        cloud-init (which applies the build's seed on system-boot, as on Ubuntu) runs only with `cloud_init`: it
        costs a minute of emulated CPU per boot, and only the static-network story needs what it does."""
        node = node or self.build.node
        number = 1 + sum(power_on.node == node for power_on in self.power_ons)
        knobs.setdefault("timeout", GUEST_TIMEOUT)
        kernel_args = (*kernel_args, *(() if cloud_init else ("cloud-init=disabled",)))
        guest = Guest(self.images[node], self.boot_files[node], self.base / f"serial-{node}-{number}.log", knobs,
                      kernel_args, memory_mib=memory_mib, rtc_base=rtc_base, hostfwd=hostfwd, only_ports=only_ports,
                      guestfwd=guestfwd, address=address)
        self.power_ons.append(PowerOn(node, number, guest))
        return guest.start()

    @staticmethod
    @contextmanager
    def two_guests() -> Iterator[None]:
        """Held by a story that powers two guests on: one such story at a time across the pytest-xdist workers
        (their parent's pid names the lock). Four TCG guests on a 2-core machine starve each other: a worker once got
        no DHCP answer for 400 s while both two-guest stories ran."""
        with open(Path(tempfile.gettempdir()) / f"pi-image-system-two-guests-{os.getppid()}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def watch_master_and_worker(self, master: Guest, worker: Guest, master_milestones: tuple[str, ...],
                                worker_milestones: tuple[str, ...]) -> None:
        """Watch both guests (noting their milestones) until the worker is done and powered off and the master
        has reported; the master must stay up all along (it is released by the caller)."""
        deadline = time.monotonic() + BOOT_TIMEOUT
        while worker.running() or "PITEST report" not in master.seen:
            worker.note(worker_milestones)
            master.note(master_milestones)
            assert master.running(), f"the master powered off early; serial log: {master.serial_path}"
            assert time.monotonic() < deadline, f"no cluster within {BOOT_TIMEOUT} s; serial logs: " \
                                                f"{worker.serial_path}, {master.serial_path}"
            time.sleep(0.2)

    def hold_url(self) -> str:
        """For pitest.stay_while=: the guest's monitor keeps it up until release()."""
        return f"http://10.0.2.2:{self.build.api_port}/pi-image-test/hold"

    def close(self) -> None:
        for guest in self.guests:
            guest.power_cut()
        self.api.stop()

    @cached_property
    def control_plane(self) -> str:
        """The first control-plane node of the inventory."""
        rows = json.loads(pi_image("status", "--local", "--cluster", str(self.cluster_dir), "--json").stdout)
        return next(row["node"] for row in rows if row["role"] == "control-plane")

    def audit_decisions(self) -> list[str]:
        """The endpoint's audit log, one `decision=...` word per line."""
        return [line.split("decision=", 1)[1].split()[0] for line in self._audit() if "decision=" in line]

    def decisions(self, node: str) -> list[str]:
        """The audit log's decisions about `node`, in order."""
        return [line.split("decision=", 1)[1].split()[0] for line in self._audit() if f" node={node} " in line]

    def _audit(self) -> list[str]:
        """The control-plane node's audit log, read from its powered-off image."""
        text = self.guest_file(f"{ENDPOINT_STATE}/audit.log", self.control_plane)
        return text.splitlines() if text else []

    def tokens_issued(self) -> list[str]:
        """The ids of the bootstrap tokens the endpoint minted, in order (from its audit log)."""
        return [line.split("token_id=", 1)[1].split()[0] for line in self._audit() if "decision=token-issued" in line]

    def guest_file(self, path: str, node: str | None = None) -> str | None:
        """A file of a powered-off node's root filesystem (default: the build's first node), read with debugfs."""
        data = read_root_file(self.images[node or self.build.node], path)
        return None if data is None else data.decode(errors="replace")

    def guest_records(self, name: str, node: str | None = None) -> list[dict]:
        """The JSON lines of RESULTS/`name` on a powered-off node."""
        text = self.guest_file(f"{RESULTS}/{name}", node) or ""
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def guest_calls(self, tool: str | None = None, node: str | None = None) -> list[list[str]]:
        """The stand-ins' calls on a node (args lists), optionally of one tool."""
        return [r["args"] for r in self.guest_records("calls.jsonl", node) if tool is None or r["tool"] == tool]

    _MISSING = object()

    def guest_report(self, boot: int, default=_MISSING, node: str | None = None) -> dict:
        """What a node's monitor recorded at the end of its power-on number `boot` (`default` if it wrote nothing)."""
        text = self.guest_file(f"{RESULTS}/boot-{boot}.json", node)
        if text is None:
            assert default is not self._MISSING, \
                f"the guest wrote no report for boot {boot}; serial log: " \
                f"{self.base}/serial-{node or self.build.node}-{boot}.log"
            return default
        return json.loads(text)


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


class SystemLab(ClusterLab):
    """A one-node scenario whose token endpoint runs on the host (`endpoint.start()`, not started by itself)."""

    def __init__(self, base: Path, build: ClusterBuild):
        super().__init__(base, build)
        self.endpoint = TokenEndpoint(self.cluster_dir, self.fake, build.ca_cert, build.endpoint_port)

    @property
    def image(self) -> Path:
        return self.images[self.build.node]

    def close(self) -> None:
        super().close()
        self.endpoint.stop()

    def status(self) -> dict:
        """The node's entry in `pi-image status --cluster DIR --json`."""
        rows = json.loads(pi_image("status", "--local", "--cluster", str(self.cluster_dir), "--json").stdout)
        return next(row for row in rows if row["node"] == self.build.node)

    def _audit(self) -> list[str]:
        path = self.cluster_dir / "state" / "audit.log"
        return path.read_text().splitlines() if path.exists() else []
