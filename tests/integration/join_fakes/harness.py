"""Test harness for the join protocol: a cluster directory, a test CA, a real token endpoint process, sandbox roots
for real agent processes, and the recording stand-ins on PATH.

Agents and the endpoint run under Python 3.6 when it is installed (the oldest device Python), else the test Python.
"""

import dataclasses
import datetime
import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from builder import cluster as clusters
from firstboot import protocol
from firstboot.endpoint.settings import ServerSettings
from firstboot.endpoint.state import NodeStore
from firstboot.nodeconfig import NodeConfig

from .wrappers import TOOLS, write_wrapper

REPO = Path(__file__).resolve().parents[3]
TOKEN_SHAPE = re.compile(rb"[a-z0-9]{6}\.[a-z0-9]{16}")
FAST_AGENT = ["--backoff-initial", "0.05", "--backoff-max", "0.2"]


def _firstboot_python():
    """FIRSTBOOT_PYTHON, else a python3.6 on PATH, when it runs and has ssl + sqlite3; else None."""
    for candidate in (os.environ.get("FIRSTBOOT_PYTHON"), shutil.which("python3.6")):
        if not candidate:
            continue
        try:
            probe = subprocess.run([candidate, "-c", "import ssl, sqlite3"], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        except OSError:
            continue
        if probe.returncode == 0:
            return candidate
    return None


# The oldest device Python when one is installed; else the test Python (vermin still proves 3.6 on every run).
PYTHON36 = _firstboot_python()
FIRSTBOOT_PYTHON = PYTHON36 or sys.executable


def _self_signed(common_name, key_type="ecdsa", ca=False):
    """(private key, certificate) valid for a day."""
    key = ec.generate_private_key(ec.SECP256R1()) if key_type == "ecdsa" else \
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
               .serial_number(x509.random_serial_number()).not_valid_before(now)
               .not_valid_after(now + datetime.timedelta(days=1)))
    if ca:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    return key, builder.sign(key, hashes.SHA256())


def make_ca(path, key_type="ecdsa"):
    """A self-signed cluster CA at `path`; returns kubeadm's discovery hash computed by `cryptography`."""
    key, cert = _self_signed("kubernetes", key_type, ca=True)
    Path(path).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    spki = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return "sha256:" + hashlib.sha256(spki).hexdigest()


def make_server_certificate(directory: Path, name: str):
    """NAME.crt and NAME.key (PEM) in `directory`: a server identity; returns (cert, key, pin fingerprint)."""
    key, cert = _self_signed(name)
    cert_path, key_path = directory / (name + ".crt"), directory / (name + ".key")
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    fingerprint = "sha256:" + hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()
    return cert_path, key_path, fingerprint


class FakeCluster:
    """The stand-ins' shared state directory and the bin directory that puts them on PATH."""

    def __init__(self, base: Path):
        self.state = base / "fake-state"
        self.bin = base / "fake-bin"
        self.state.mkdir()
        self.bin.mkdir()
        for tool in TOOLS:
            write_wrapper(str(self.bin), tool)
        self.env = dict(os.environ, PATH="{}:/usr/bin:/bin".format(self.bin), FAKE_STATE=str(self.state),
                        FAKE_BIN=str(self.bin), PYTHONPATH=str(REPO))

    def knob(self, name, value):
        (self.state / name).write_text(str(value))

    def calls(self, tool=None, *prefix):
        """Recorded invocations (args lists), optionally of one tool starting with `prefix`."""
        path = self.state / "calls.jsonl"
        records = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
        return [r["args"] for r in records
                if (tool is None or r["tool"] == tool) and r["args"][:len(prefix)] == list(prefix)]

    def joins(self):
        return self._records("joins.jsonl")

    def inits(self):
        """Each successful `kubeadm init`: node, advertise_address, node_ip, root, skip_token_print, config_mode and
        config ({kind: document}, token secrets redacted)."""
        return self._records("inits.jsonl")

    def applies(self):
        """Each successful `kubectl apply -f`: file, kubeconfig, objects [{kind, name, namespace, group}],
        flannel_network."""
        return self._records("applies.jsonl")

    def created_tokens(self):
        """Bootstrap tokens the endpoint created, in order: token_id, description, ttl_seconds, groups (no secret)."""
        return self._records("bootstrap-tokens.jsonl")

    def deleted_tokens(self):
        """Ids of the bootstrap tokens the endpoint deleted, in order."""
        prefix = "bootstrap-token-"
        return [args[-1][len(prefix):] for args in self.calls("kubectl")
                if args[-3:-1] == ["delete", "secret"] and args[-1].startswith(prefix)]

    def _records(self, name):
        path = self.state / name
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def cluster(self):
        path = self.state / "cluster.json"
        return json.loads(path.read_text()) if path.exists() else {"nodes": {}, "tokens": {}}

    def set_node(self, name, status):
        data = self.cluster()
        data["nodes"][name] = status
        (self.state / "cluster.json").write_text(json.dumps(data))


class TokenServer:
    """`python -m firstboot.endpoint` as a real process on 127.0.0.1 (an ephemeral port, kept across restarts)."""

    def __init__(self, cluster_dir: Path, fake: FakeCluster, ca_cert: Path, extra_args=()):
        self.cluster_dir = cluster_dir
        self.fake = fake
        self.ca_cert = ca_cert
        self.extra_args = list(extra_args)
        self.port = 0
        self.process = None

    @property
    def endpoint(self):
        return "127.0.0.1:{}".format(self.port)

    def start(self):
        clusters.write_server_config(clusters.load_cluster(self.cluster_dir))
        # no --state-dir: the endpoint's default, DIR/state, is where `pi-image status --cluster DIR` looks
        argv = [FIRSTBOOT_PYTHON, "-m", "firstboot.endpoint", "--config", str(self.cluster_dir / "tokend.json"),
                "--listen", "127.0.0.1:{}".format(self.port), "--ca-cert", str(self.ca_cert),
                "--kubeconfig", str(self.cluster_dir / "admin.conf")]
        self.stderr_path = self.cluster_dir / "tokend.stderr"
        with open(self.stderr_path, "ab") as stderr:
            self.process = subprocess.Popen(argv + self.extra_args, cwd=str(REPO), env=self.fake.env,
                                            stdout=subprocess.PIPE, stderr=stderr)
        line = self.process.stdout.readline().decode()
        match = re.search(r"listening on https://127\.0\.0\.1:(\d+)", line)
        assert match, "token endpoint did not start: {!r} {}".format(line, self.stderr_path.read_text())
        self.port = int(match.group(1))
        return self

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        self.process = None

    def restart(self):
        self.stop()
        return self.start()

    def audit_log(self):
        return (self.cluster_dir / "state" / "audit.log").read_text()


def built_card(cluster_dir: Path, name: str):
    """What `pi-image build --cluster DIR --node NAME` does to the inventory: the node's next generation, recorded.
    Returns the cluster as the build read it and the node as its card has it (for clusters.node_config)."""
    cluster = clusters.load_cluster(cluster_dir)
    node = dataclasses.replace(cluster.node(name), generation=cluster.node(name).generation + 1)
    clusters.record_generation(cluster_dir, name, node.generation)
    return cluster, node


def new_cluster(base: Path, nodes=("pi-worker1",), version="1.31", approval_mode=False):
    """A cluster directory made by the real builder code, with `nodes` in the inventory."""
    cluster = clusters.init_cluster(base / "cluster", "192.168.6.10:6443", "127.0.0.1:8443", version,
                                    "192.168.6.0/24", approval_mode)
    for name in nodes:
        clusters.add_node(cluster, name, "worker-8g", None, "worker")
    return cluster


class JoinLab:
    """One test's world: a cluster directory, a test CA, the stand-ins and a running token endpoint."""

    def __init__(self, base, nodes=("pi-worker1",), ca_type="ecdsa", version="1.31", approval_mode=False,
                 server_args=()):
        self.base = base
        self.fake = FakeCluster(base)
        self.cluster = new_cluster(base, nodes, version, approval_mode)
        self.ca_cert = base / "ca.crt"
        self.ca_hash = make_ca(self.ca_cert, ca_type)
        self.fake.knob("expected_ca_hash", self.ca_hash)
        self.server = TokenServer(self.cluster.directory, self.fake, self.ca_cert, server_args)

    def node_root(self, name="pi-worker1"):
        """A sandbox device flashed with a fresh build of `name`: node.json from the real builder code, the node's
        generation bumped in the inventory as `pi-image build` does, the endpoint pointed at the running one."""
        config = clusters.node_config(*built_card(self.cluster.directory, name))
        return make_root(self.base / "build-{}".format(config.generation), config, self.server.endpoint)

    def credential(self, name="pi-worker1"):
        """The credential the endpoint accepts from `name` now (its current generation's)."""
        settings = ServerSettings(str(self.cluster.directory / "tokend.json"))
        return protocol.node_credential(settings.enrollment_key, name, settings.generation(name))

    def state(self, name="pi-worker1"):
        store = NodeStore(str(self.cluster.directory / "state"))
        try:
            return store.get(name)
        finally:
            store.close()


KERNEL_OVERLAY = REPO / "builder" / "data" / "overlays" / "k8s-kernel" / "etc"
KERNEL_SWITCHES = ("net/bridge/bridge-nf-call-iptables", "net/bridge/bridge-nf-call-ip6tables", "net/ipv4/ip_forward")
CONTAINERD_SOCKET = "var/run/containerd/containerd.sock"


def make_root(base: Path, node_config: NodeConfig, endpoint=None):
    """A sandbox device tree: node.json (0600), the build's sysctl and module lists, /proc/sys switches at 0 (the
    agent writes 1), cgroup v2 with memory, no swap, one NIC, Ubuntu os-release, and containerd's socket (a socket
    inode only: the fake ctr/containerd answer for the daemon)."""
    root = base / ("root-" + node_config.node)
    files = {
        "etc/pi-image/node.json": json.dumps((node_config.replace(endpoint=endpoint) if endpoint else node_config)
                                             .to_json()),
        "etc/sysctl.d/k8s.conf": (KERNEL_OVERLAY / "sysctl.d" / "k8s.conf").read_text(),
        "etc/modules-load.d/k8s.conf": (KERNEL_OVERLAY / "modules-load.d" / "k8s.conf").read_text(),
        "sys/fs/cgroup/cgroup.controllers": "cpuset cpu io memory pids\n",
        "proc/swaps": "Filename\tType\tSize\tUsed\tPriority\n",
        "sys/class/net/eth1/address": "dc:a6:32:01:02:03\n",
        "etc/os-release": 'ID=ubuntu\nPRETTY_NAME="Ubuntu 22.04.4 LTS"\n',
        **{"proc/sys/" + switch: "0\n" for switch in KERNEL_SWITCHES},
    }
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    (root / "etc/pi-image/node.json").chmod(0o600)
    socket_path = root / CONTAINERD_SOCKET
    socket_path.parent.mkdir(parents=True, exist_ok=True)
    os.mknod(str(socket_path), 0o600 | stat.S_IFSOCK)  # too long a path for bind(): an inode is enough here
    return root


# The agent of a device with an address of its own: on loopback every connection would come from 127.0.0.1, so the
# device's connections are bound to its address (argv[1]); nothing else about the agent changes.
_AGENT_AT_ADDRESS = """
import runpy, socket, sys
address, connect = sys.argv.pop(1), socket.create_connection
def from_device(target, timeout=socket._GLOBAL_DEFAULT_TIMEOUT, source_address=None):
    return connect(target, timeout, source_address or (address, 0))
socket.create_connection = from_device
sys.argv[0] = "agent"
runpy.run_module("firstboot.agent", run_name="__main__")
"""


def agent_env(root: Path, fake: FakeCluster):
    """The stand-ins' environment for an agent on `root`: what kubeadm writes below /etc lands in that sandbox."""
    return dict(fake.env, FAKE_ROOT=str(root))


def agent_argv(root: Path, *extra, address=None):
    start = ["-c", _AGENT_AT_ADDRESS, address] if address else ["-m", "firstboot.agent"]
    return [FIRSTBOOT_PYTHON] + start + ["--root", str(root)] + FAST_AGENT + list(extra)


def run_agent(root: Path, fake: FakeCluster, *extra, timeout=30, address=None):
    """Run the real agent to completion (connecting from `address`, if given); returns the CompletedProcess."""
    return subprocess.run(agent_argv(root, *extra, address=address), cwd=str(REPO), env=agent_env(root, fake),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, timeout=timeout)


def start_agent(root: Path, fake: FakeCluster, *extra):
    """Start the real agent in its own session (kill the group to cut the power); communicate() for its output."""
    return subprocess.Popen(agent_argv(root, *extra), cwd=str(REPO), env=agent_env(root, fake),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
                            start_new_session=True)


def wait_for(predicate, timeout=15.0, interval=0.05):
    """Poll until `predicate()` is truthy; AssertionError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("condition not met within {} s".format(timeout))


def files_containing_tokens(*directories):
    """Every file under `directories` holding something shaped like a bootstrap token."""
    hits = []
    for directory in directories:
        for path in Path(directory).rglob("*"):
            if path.is_file() and TOKEN_SHAPE.search(path.read_bytes()):
                hits.append(str(path))
    return hits
