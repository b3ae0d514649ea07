"""The agent's inputs and state on the device: /etc/pi-image/node.json and /var/lib/pi-image/.

node.json (written by the build, mode 0600, root:root) — the keys are defined by builder.cluster.node_config():

    node, role, kubernetes_version, runtime                    always (local setup)
    runtime_packages                                           apt packages that provide the runtime when it is
                                                               missing (may be empty or absent: nothing to install)
    built_at                                                   the build's time (Unix): the device's clock is
                                                               wrong while it is before it
    kubelet                                                    KubeletConfiguration fields sized to the board
                                                               (builder/kubelet.py; absent: the kubelet's defaults)
    endpoint, endpoint_fingerprint, credential,                a worker built for a cluster
    api_server, node_subnet
    api_server, node_subnet, control_plane {pod_subnet,         a control-plane node built for a cluster: it runs
      service_subnet, admin_user}                              `kubeadm init` (controlplane.py)

The agent's state (AgentPaths): firstboot.done (the unit's condition), join-started (a join was under way),
issued-token.json (a join token still valid, 0600, deleted once joined), kubeadm-patches/, firstboot.log; on a
control plane: init-started, init-failures, init-config.yaml (0600), control-plane.initialized (the condition of the
token endpoint's unit).
"""

import json
import os

from .runtime import RUNTIMES

LOCAL_KEYS = ("node", "kubernetes_version", "runtime")
CLUSTER_KEYS = ("endpoint", "endpoint_fingerprint", "credential", "api_server", "node_subnet")
CONTROL_PLANE_KEYS = ("api_server", "node_subnet")
ROLES = ("worker", "control-plane")

# Where a control-plane image keeps what the build put there for it (paths below the root; the builder imports them):
CLUSTER_DIR = "etc/pi-image/cluster"  # the cluster directory's settings and secrets; the endpoint's state in state/
CNI_MANIFEST = "usr/lib/pi-image/cni/kube-flannel.yml"
ENDPOINT_UNIT = "pi-image-tokend.service"
INITIALIZED = "var/lib/pi-image/control-plane.initialized"  # ConditionPathExists of ENDPOINT_UNIT


class ConfigError(Exception):
    """node.json is missing or malformed; the message names the file and the key."""


def load_node_config(path):
    """node.json as a dict, checked: local keys always, cluster keys all or none."""
    try:
        with open(path) as handle:
            config = json.load(handle)
    except OSError as err:
        raise ConfigError("{}: cannot read: {}".format(path, err.strerror))
    except ValueError as err:
        raise ConfigError("{}: not valid JSON: {}".format(path, err))
    if not isinstance(config, dict):
        raise ConfigError("{}: expected a JSON object".format(path))
    missing = [key for key in LOCAL_KEYS if not config.get(key)]
    if config.get("endpoint"):
        missing += [key for key in CLUSTER_KEYS if not config.get(key)]
    if config.get("control_plane") is not None:
        if not isinstance(config["control_plane"], dict):
            raise ConfigError("{}: control_plane must be an object".format(path))
        missing += [key for key in CONTROL_PLANE_KEYS if not config.get(key)]
        missing += ["control_plane." + key for key in ("pod_subnet", "service_subnet")
                    if not config["control_plane"].get(key)]
    if missing:
        raise ConfigError("{}: missing key(s) {}".format(path, ", ".join(missing)))
    if config["runtime"] not in RUNTIMES:
        raise ConfigError("{}: runtime must be one of {}, not {!r}".format(path, ", ".join(sorted(RUNTIMES)),
                                                                         config["runtime"]))
    if config.setdefault("role", "worker") not in ROLES:
        raise ConfigError("{}: role must be one of {}, not {!r}".format(path, ", ".join(ROLES), config["role"]))
    if not isinstance(config.setdefault("kubelet", {}), dict):
        raise ConfigError("{}: kubelet must be an object of KubeletConfiguration fields".format(path))
    packages = config.setdefault("runtime_packages", [])
    if not isinstance(packages, list) or not all(isinstance(name, str) and name for name in packages):
        raise ConfigError("{}: runtime_packages must be a list of package names".format(path))
    return config


def write_private(path, text):
    """Write `text` atomically to `path` with mode 0600: temp file, fsync, rename, fsync of the directory."""
    temporary = path + ".tmp"
    descriptor = os.open(temporary, os.O_CREAT | os.O_TRUNC | os.O_WRONLY, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    # the rename itself must be on disk too: a power cut must not undo "done" after the endpoint saw "joined"
    directory = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


class AgentPaths(object):
    """Where the agent reads and writes, all below `root` so tests can use a sandbox tree."""

    def __init__(self, root):
        self.root = os.path.abspath(root)
        self.state_dir = os.path.join(self.root, "var/lib/pi-image")
        self.done = os.path.join(self.state_dir, "firstboot.done")
        self.join_started = os.path.join(self.state_dir, "join-started")
        self.join_config = os.path.join(self.state_dir, "join-config.yaml")
        self.issued_token = os.path.join(self.state_dir, "issued-token.json")
        self.kubeadm_patches = os.path.join(self.state_dir, "kubeadm-patches")
        self.log_file = os.path.join(self.state_dir, "firstboot.log")
        self.node_config = os.path.join(self.root, "etc/pi-image/node.json")
        self.init_started = os.path.join(self.state_dir, "init-started")
        self.init_failures = os.path.join(self.state_dir, "init-failures")
        self.init_config = os.path.join(self.state_dir, "init-config.yaml")
        self.initialized = os.path.join(self.root, INITIALIZED)
        self.cluster_dir = os.path.join(self.root, CLUSTER_DIR)
        self.cni_manifest = os.path.join(self.root, CNI_MANIFEST)
        self.admin_kubeconfig = os.path.join(self.root, "etc/kubernetes/admin.conf")

    def is_done(self):
        return os.path.exists(self.done)

    def ensure_state_dir(self):
        if not os.path.isdir(self.state_dir):
            os.makedirs(self.state_dir, mode=0o700)

    def write_private(self, path, text):
        """Write `text` atomically to `path` with mode 0600 (write_private)."""
        write_private(path, text)

    def discard(self, path):
        """Remove `path` if it exists."""
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass

    def mark_done(self, summary):
        """The marker systemd's ConditionPathExists=! checks: the unit never runs again."""
        self.write_private(self.done, json.dumps(summary, sort_keys=True) + "\n")
