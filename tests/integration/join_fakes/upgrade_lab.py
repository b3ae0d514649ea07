"""A control plane that initialized its cluster at 1.31 (the real first-boot agent, in a sandbox root), ready to be
upgraded in place (`UpgradeLab`): its card's apt source and pin rendered from the build's own kube-repo overlay, the
real upgrade unit's program (`python -m firstboot.upgrade --root ROOT`), and its real token endpoint, serving from
the card's copy of the cluster directory (in this process, as test_endpoint_several_masters.py runs one)."""

import json
import subprocess
import threading
import time
from pathlib import Path

import jinja2

from builder import cluster as clusters
from firstboot import protocol
from firstboot.client import EndpointClient
from firstboot.commands import CommandRunner
from firstboot.endpoint.settings import ServerSettings
from firstboot.endpoint.tokend import Limits, build_endpoint

from .control_plane import MASTER, ControlPlaneLab
from .harness import FIRSTBOOT_PYTHON, REPO, agent_env, run_agent

KUBE_REPO = "https://pkgs.k8s.io/core:/stable:/v{version}/deb/"  # the profiles' default kube_repo_url
OVERLAY = REPO / "builder/data/overlays/kube-repo"
SOURCE_LIST = "etc/apt/sources.list.d/kubernetes.list"
PIN_FILE = "etc/apt/preferences.d/kubernetes"
RECORD = "var/lib/pi-image/upgrade.json"


def kube_repo_files(version, kube_repo=KUBE_REPO):
    """{path below the root: text} of the kube-repo overlay rendered for the minor `version`, as the build does."""
    context = {"kubernetes_version": version, "kubernetes_release": None,
               "kube_repo": kube_repo.format(version=version)}
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False)
    return {relative: env.from_string((OVERLAY / (relative + ".j2")).read_text()).render(context)
            for relative in (SOURCE_LIST, PIN_FILE)}


class UpgradeLab:
    """pi-master1 initialized at v1.31.4 by its first-boot agent; `card` has node.json's kube_repo (else not)."""

    def __init__(self, base: Path, kube_repo=KUBE_REPO):
        self.control_plane = ControlPlaneLab(base)
        self.fake = self.control_plane.fake
        self.root = self.control_plane.node_root()
        first_boot = run_agent(self.root, self.fake, timeout=60)
        assert first_boot.returncode == 0, first_boot.stderr
        node_json = self.root / "etc/pi-image/node.json"
        config = json.loads(node_json.read_text())
        config.pop("kube_repo", None)
        if kube_repo:
            config["kube_repo"] = kube_repo
        node_json.write_text(json.dumps(config))
        for relative, text in kube_repo_files("1.31").items():
            (self.root / relative).parent.mkdir(parents=True, exist_ok=True)
            (self.root / relative).write_text(text)
        self.calls_before = len(self.fake.calls())
        self.endpoint = None

    def file(self, relative):
        return (self.root / relative).read_text()

    def record(self):
        return json.loads((self.root / RECORD).read_text())

    def request(self, to="1.32", mode="apply", current="v1.31.4"):
        """The record the endpoint writes when it accepts a request (endpoint/upgrades.py), written directly."""
        now = time.time()
        (self.root / RECORD).write_text(json.dumps({
            "node": MASTER, "to": to, "mode": mode, "from": current, "release": None, "state": "running",
            "phase": "requested", "phases": {"requested": now}, "error": None, "fix": None, "requested_at": now,
            "updated_at": now}))

    def argv(self):
        return [FIRSTBOOT_PYTHON, "-m", "firstboot.upgrade", "--root", str(self.root)]

    def run(self):
        """What pi-image-upgrade.service runs, to its end."""
        return subprocess.run(self.argv(), cwd=str(REPO), env=agent_env(self.root, self.fake),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, timeout=60)

    def start(self):
        """The same in its own session (kill the group to cut the power)."""
        return subprocess.Popen(self.argv(), cwd=str(REPO), env=agent_env(self.root, self.fake),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
                                start_new_session=True)

    def sequence(self):
        """The calls since the first boot, one line each ("kubeadm upgrade plan v1.32.1")."""
        return self.control_plane.sequence()[self.calls_before:]

    def start_endpoint(self):
        """The card's token endpoint (the real one), from /etc/pi-image/cluster/tokend.json below the root."""
        cluster_dir = self.root / "etc/pi-image/cluster"
        settings = ServerSettings(str(cluster_dir / "tokend.json"), {
            "listen": "127.0.0.1:0", "ca_cert_file": str(self.root / "etc/kubernetes/pki/ca.crt"),
            "kubeconfig": str(self.root / "etc/kubernetes/admin.conf"), "node_name": MASTER})
        self.endpoint = build_endpoint(settings, str(cluster_dir / "state"), Limits(),
                                       CommandRunner(env=agent_env(self.root, self.fake)), time.time)
        threading.Thread(target=self.endpoint.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self.endpoint

    def admin(self):
        """The operator's client of the card's endpoint (the admin credential of the cluster directory)."""
        cluster = clusters.load_cluster(self.control_plane.cluster.directory)
        return EndpointClient("127.0.0.1:{}".format(self.endpoint.server_address[1]), cluster.endpoint_fingerprint,
                              protocol.ADMIN_NAME, cluster.admin_credential())

    def ask(self, to, mode="apply"):
        """POST /v1/admin/upgrade, signed as the operator; (status, answer)."""
        answer = self.admin().admin_upgrade(to, mode)
        return answer.status, answer.payload

    def stop(self):
        if self.endpoint is not None:
            self.endpoint.shutdown()
            self.endpoint.server_close()
            self.endpoint.store.close()
            self.endpoint = None
