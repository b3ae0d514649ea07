"""The agent's inputs and state on the device: /etc/pi-image/node.json and /var/lib/pi-image/.

node.json (written by the build, mode 0600, root:root) is a NodeConfig: the build assembles one
(builder/cluster/__init__.py node_config(), builder/build/__init__.py prepare()) and writes its to_json() with sorted
keys; the agent reads it back with load_node_config(), which checks it (NodeConfig.from_json()). Its keys:

    node, role, kubernetes_version, runtime    always (local setup); role: worker | control-plane
    runtime_packages     distro packages that provide the runtime when it is missing (empty: nothing to install);
                         with kube_install release also the kubelet's dependencies (conntrack, socat, ethtool,
                         iptables)
    package_manager      apt (absent: the default) | pacman: how runtime_packages are installed (localsetup.py)
    kube_install         packages (absent: the default; apt from pkgs.k8s.io, pinned to the minor) | release: the
                         upstream binaries of kubernetes_release (release.py)
    kube_repo            with kube_install packages: the Kubernetes apt repository's URL, "{version}" standing for
                         the minor (the profile's kube_repo_url): an upgrade moves the node's source to another minor's
    release {kube_url, crictl_url, crictl_version, cni_url, cni_version, arch, sha256}    present iff kube_install
                         is release: where the five assets are and the SHA-256 the build recorded for each (keys:
                         the asset file names); the device trusts these digests, never the network
    built_at             the build's time (Unix): the device's clock is wrong while it is before it
    kubelet              KubeletConfiguration fields sized to the board (builder/plan/kubelet.py; absent: the
                         kubelet's defaults)
    kubernetes_release   the exact patch an --offline card's bundle holds, or the release path installs
    api_server, node_subnet, cluster {api_server, node_subnet}    every image built for a cluster (`cluster`
                         repeats the two, for `pi-image inspect`)
    generation           which build of the node the card is (the endpoint accepts the newest only); a node's image
    endpoint, endpoint_fingerprint, credential    a worker of a cluster: where and how it asks for its join token
    fallback_endpoints   the other control planes' token endpoints ("HOST:PORT"), asked in order when `endpoint`
                         does not answer (a cluster of several control planes; absent: none)
    control_plane {pod_subnet, service_subnet, admin_user, vip, may_initialize}    a control plane of a cluster:
                         the cluster's only one runs `kubeadm init` (controlplane.py) and never joins; where there are
                         several (`vip`: the API server's virtual address, which kube-vip holds, its manifest at
                         KUBE_VIP_MANIFEST), the first (`may_initialize`) runs `kubeadm init --upload-certs` unless
                         another control plane's endpoint answers, and every other one joins as a control plane with
                         the certificate key its endpoint gives it (such a control plane has endpoint, fingerprint
                         and credential as a worker has)
    unstamped            true on a cluster's profile image, which has no node yet: `pi-image flash` stamps one onto
                         each card; the agent refuses to go on without one

The agent's state (AgentPaths): firstboot.done (the unit's condition), join-started (a join was under way),
issued-token.json (a join token still valid, 0600, deleted once joined), kubeadm-patches/, firstboot.log; on a
control plane: init-started, init-failures, init-config.yaml (0600), control-plane.initialized (the condition of the
token endpoint's unit).
"""

import json
import os
import re
from typing import Any, Dict, List, Optional, Sequence, Tuple, TypeVar

from .protocol import minor_version
from .runtime import RUNTIMES

ROLES = ("worker", "control-plane")
PACKAGE_MANAGERS = ("apt", "pacman")
KUBE_INSTALLS = ("packages", "release")
RELEASE_ARCHES = ("amd64", "arm64")
KUBE_BINARIES = ("kubelet", "kubeadm", "kubectl")

# Where a control-plane image keeps what the build put there for it (paths below the root; the builder imports them):
CLUSTER_DIR = "etc/pi-image/cluster"  # the cluster directory's settings and secrets; the endpoint's state in state/
CNI_MANIFEST = "usr/lib/pi-image/cni/kube-flannel.yml"
ENDPOINT_UNIT = "pi-image-tokend.service"
INITIALIZED = "var/lib/pi-image/control-plane.initialized"  # ConditionPathExists of ENDPOINT_UNIT
UPGRADE_UNIT = "pi-image-upgrade.service"  # a control plane's in-place upgrade (upgrade.py); the endpoint starts it
UPGRADE_RECORD = "var/lib/pi-image/upgrade.json"  # its record (0600): ConditionPathExists of UPGRADE_UNIT
KUBE_VIP_MANIFEST = "etc/pi-image/kube-vip.yaml"  # kube-vip's static pod, put in /etc/kubernetes/manifests at init/join
SECRETS_DIR = "secrets"  # in CLUSTER_DIR (and in the host's cluster directory): 0700, each file 0600
CERTIFICATE_KEY = "certificate.key"  # in SECRETS_DIR: kubeadm's --certificate-key (hex AES-256) of the cluster

_LOCAL_KEYS = ("node", "kubernetes_version", "runtime")
_WORKER_KEYS = ("endpoint", "endpoint_fingerprint", "credential", "api_server", "node_subnet")
_CONTROL_PLANE_KEYS = ("api_server", "node_subnet")
_TEXT_KEYS = _LOCAL_KEYS + _WORKER_KEYS + ("role", "kubernetes_release", "kube_repo")

_RELEASE_URLS = ("kube_url", "crictl_url", "cni_url")
_RELEASE_VERSIONS = ("crictl_version", "cni_version")
_RELEASE_TEXT = _RELEASE_URLS + _RELEASE_VERSIONS + ("arch",)
_PATCH = re.compile(r"^\d+\.\d+\.\d+$")
_TAG = re.compile(r"^v\d+\.\d+\.\d+$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")

R = TypeVar("R", bound="_Record")


class ConfigError(Exception):
    """node.json is missing or malformed; the message names the file and the key."""


class _Record(object):
    """A record whose fields are its __slots__: equal when they are, copied with changes by replace()."""

    __slots__: Sequence[str] = ()

    def replace(self: R, **changes: Any) -> R:
        """A copy with `changes` (as dataclasses.replace)."""
        values = {name: getattr(self, name) for name in self.__slots__}
        unknown = sorted(set(changes) - set(values))
        if unknown:
            raise TypeError("{} has no field(s) {}".format(type(self).__name__, ", ".join(unknown)))
        values.update(changes)
        return type(self)(**values)

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and all(getattr(self, name) == getattr(other, name)
                                                 for name in self.__slots__)

    __hash__ = None  # type: ignore[assignment]  # mutable fields (kubelet): never a dict key

    def __repr__(self) -> str:
        return "{}({})".format(type(self).__name__, ", ".join("{}={!r}".format(name, getattr(self, name))
                                                             for name in self.__slots__))


class ControlPlaneSettings(_Record):
    """node.json's control_plane: what `kubeadm init` needs beyond the node's own keys (controlplane.py)."""

    __slots__ = ("pod_subnet", "service_subnet", "admin_user", "vip", "may_initialize")

    def __init__(self, *, pod_subnet: str, service_subnet: str, admin_user: Optional[str], vip: Optional[str] = None,
                 may_initialize: bool = True) -> None:
        self.pod_subnet = pod_subnet  # kubeadm's podSubnet = flannel's Network
        self.service_subnet = service_subnet
        self.admin_user = admin_user  # who gets ~/.kube/config besides root (null: root only)
        self.vip = vip  # "A.B.C.D": the API server's virtual address (several control planes; None: one)
        self.may_initialize = may_initialize  # False: this control plane always joins the cluster

    @property
    def several(self) -> bool:
        """True in a cluster of several control planes (kube-vip, certificates shared through kubeadm-certs)."""
        return self.vip is not None

    def to_json(self) -> Dict[str, Any]:
        data: Dict[str, Any] = {"pod_subnet": self.pod_subnet, "service_subnet": self.service_subnet,
                                "admin_user": self.admin_user}
        if self.vip is not None:
            data.update(vip=self.vip, may_initialize=self.may_initialize)
        return data


class ReleaseSettings(_Record):
    """node.json's release: where the upstream assets of the release path are, and the SHA-256 the build fetched
    for each (release.py installs them and refuses any other bytes)."""

    __slots__ = ("kube_url", "crictl_url", "crictl_version", "cni_url", "cni_version", "arch", "sha256")

    def __init__(self, *, kube_url: str, crictl_url: str, crictl_version: str, cni_url: str, cni_version: str,
                 arch: str, sha256: Dict[str, str]) -> None:
        self.kube_url = kube_url  # https://dl.k8s.io/release: {kube_url}/v{X.Y.Z}/bin/linux/{arch}/{tool}
        self.crictl_url = crictl_url  # {crictl_url}/{V}/crictl-{V}-linux-{arch}.tar.gz
        self.crictl_version = crictl_version  # "v1.31.1"
        self.cni_url = cni_url  # {cni_url}/{V}/cni-plugins-linux-{arch}-{V}.tgz
        self.cni_version = cni_version  # "v1.5.1"
        self.arch = arch  # amd64 | arm64
        self.sha256 = dict(sha256)  # asset file name -> lowercase hex

    @property
    def crictl_asset(self) -> str:
        """The crictl archive's file name."""
        return "crictl-{}-linux-{}.tar.gz".format(self.crictl_version, self.arch)

    @property
    def cni_asset(self) -> str:
        """The CNI plugins archive's file name."""
        return "cni-plugins-linux-{}-{}.tgz".format(self.arch, self.cni_version)

    def assets(self, kubernetes_release: str) -> List[Tuple[str, str]]:
        """(file name, URL) of the five assets for Kubernetes `kubernetes_release` ("1.31.4"); each has its
        published digest at URL + ".sha256"."""
        kube = "{}/v{}/bin/linux/{}/".format(self.kube_url.rstrip("/"), kubernetes_release, self.arch)
        return [(tool, kube + tool) for tool in KUBE_BINARIES] + [
            (self.crictl_asset, "{}/{}/{}".format(self.crictl_url.rstrip("/"), self.crictl_version,
                                                  self.crictl_asset)),
            (self.cni_asset, "{}/{}/{}".format(self.cni_url.rstrip("/"), self.cni_version, self.cni_asset))]

    def to_json(self) -> Dict[str, Any]:
        data: Dict[str, Any] = {name: getattr(self, name) for name in self.__slots__}
        data["sha256"] = dict(self.sha256)
        return data

    @classmethod
    def from_json(cls, data: object, kubernetes_release: str, where: str) -> "ReleaseSettings":
        """node.json's release checked against the assets of `kubernetes_release`: a ConfigError naming the key."""
        if not isinstance(data, dict):
            raise ConfigError("{}: release must be an object".format(where))
        for key in _RELEASE_TEXT:
            _check(where, "release." + key, data.get(key), str, "a string")
            if not data.get(key):
                raise ConfigError("{}: missing key release.{}: rebuild the image".format(where, key))
        for key in _RELEASE_URLS:
            if not data[key].startswith(("http://", "https://")):
                raise ConfigError("{}: release.{} must be an http(s):// URL, not {!r}".format(where, key, data[key]))
        for key in _RELEASE_VERSIONS:
            if not _TAG.match(data[key]):
                raise ConfigError("{}: release.{} must look like v1.2.3, not {!r}".format(where, key, data[key]))
        if data["arch"] not in RELEASE_ARCHES:
            raise ConfigError("{}: release.arch must be one of {}, not {!r}".format(
                where, ", ".join(RELEASE_ARCHES), data["arch"]))
        digests = data.get("sha256")
        if not isinstance(digests, dict):
            raise ConfigError("{}: release.sha256 must be an object of asset name -> SHA-256".format(where))
        settings = cls(sha256=digests, **{key: data[key] for key in _RELEASE_TEXT})
        missing = [name for name, _ in settings.assets(kubernetes_release) if name not in digests]
        if missing:
            raise ConfigError("{}: release.sha256 has no digest for {}: rebuild the image".format(
                where, ", ".join(missing)))
        for name, digest in sorted(digests.items()):
            if not isinstance(digest, str) or not _SHA256.match(digest):
                raise ConfigError("{}: release.sha256.{} must be 64 lowercase hex digits, not {!r}".format(
                    where, name, digest))
        return settings


class NodeConfig(_Record):
    """node.json, typed: one node's identity and what its first boot needs (the keys: see the module docstring).

    A field that is None (False for unstamped, empty for kubelet) is a key node.json does not have."""

    __slots__ = ("node", "role", "kubernetes_version", "runtime", "runtime_packages", "built_at", "kubelet",
                 "kubernetes_release", "package_manager", "kube_install", "kube_repo", "release", "api_server",
                 "node_subnet",
                 "generation", "endpoint", "endpoint_fingerprint", "credential", "fallback_endpoints", "control_plane",
                 "unstamped")

    def __init__(self, *, node: str, kubernetes_version: str, runtime: str, role: str = "worker",
                 runtime_packages: Sequence[str] = (), built_at: Optional[float] = None,
                 kubelet: Optional[Dict[str, Any]] = None, kubernetes_release: Optional[str] = None,
                 package_manager: str = "apt", kube_install: str = "packages", kube_repo: Optional[str] = None,
                 release: Optional[ReleaseSettings] = None, api_server: Optional[str] = None,
                 node_subnet: Optional[str] = None, generation: Optional[int] = None, endpoint: Optional[str] = None,
                 endpoint_fingerprint: Optional[str] = None, credential: Optional[str] = None,
                 fallback_endpoints: Sequence[str] = (), control_plane: Optional[ControlPlaneSettings] = None,
                 unstamped: bool = False) -> None:
        self.node = node  # the hostname and Kubernetes node name
        self.role = role
        self.kubernetes_version = kubernetes_version  # "1.31": the pinned minor
        self.runtime = runtime  # containerd | docker: picks kubeadm's CRI socket (runtime.py)
        self.runtime_packages = tuple(runtime_packages)
        self.built_at = built_at
        self.kubelet = dict(kubelet or {})
        self.kubernetes_release = kubernetes_release  # "1.31.4"
        self.package_manager = package_manager  # apt | pacman: installs runtime_packages (localsetup.py)
        self.kube_install = kube_install  # packages | release (release.py)
        self.kube_repo = kube_repo  # "https://pkgs.k8s.io/core:/stable:/v{version}/deb/" (packages path)
        self.release = release  # with kube_install release: where the assets are and their digests
        self.api_server = api_server  # "HOST:6443"; a worker routes to it to find its node-ip if none in the subnet
        self.node_subnet = node_subnet  # CIDR: the node-ip is this node's address inside it
        self.generation = generation
        self.endpoint = endpoint  # "HOST:PORT" of the token endpoint
        self.endpoint_fingerprint = endpoint_fingerprint  # "sha256:<hex>": the only certificate the agent talks to
        self.credential = credential  # hex HMAC-SHA256(enrollment key, node name, generation): the node's secret
        self.fallback_endpoints = tuple(fallback_endpoints)  # asked in order when `endpoint` does not answer
        self.control_plane = control_plane
        self.unstamped = unstamped

    def to_json(self) -> Dict[str, Any]:
        """node.json's object (the build writes it with sorted keys)."""
        data: Dict[str, Any] = {"node": self.node, "role": self.role, "kubernetes_version": self.kubernetes_version,
                                "runtime": self.runtime, "runtime_packages": list(self.runtime_packages)}
        for key in ("built_at", "kubernetes_release", "kube_repo", "api_server", "node_subnet", "generation",
                    "endpoint", "endpoint_fingerprint", "credential"):
            if getattr(self, key) is not None:
                data[key] = getattr(self, key)
        if self.kubelet:
            data["kubelet"] = dict(self.kubelet)
        if self.fallback_endpoints:
            data["fallback_endpoints"] = list(self.fallback_endpoints)
        if self.package_manager != "apt":
            data["package_manager"] = self.package_manager
        if self.kube_install != "packages":
            data["kube_install"] = self.kube_install
        if self.release is not None:
            data["release"] = self.release.to_json()
        if self.api_server is not None:
            data["cluster"] = {"api_server": self.api_server, "node_subnet": self.node_subnet}
        if self.control_plane is not None:
            data["control_plane"] = self.control_plane.to_json()
        if self.unstamped:
            data["unstamped"] = True
        return data

    @classmethod
    def from_json(cls, data: object, where: str = "node.json") -> "NodeConfig":
        """node.json's object checked: the local keys always, a worker's cluster keys all or none, a control
        plane's settings whole, the release path's settings whole (with its exact kubernetes_release); a ConfigError
        naming `where` and the key. Keys it does not know are ignored."""
        if not isinstance(data, dict):
            raise ConfigError("{}: expected a JSON object".format(where))
        missing = [key for key in _LOCAL_KEYS if not data.get(key)]
        if data.get("endpoint"):
            missing += [key for key in _WORKER_KEYS if not data.get(key)]
        control_plane = data.get("control_plane")
        if control_plane is not None:
            if not isinstance(control_plane, dict):
                raise ConfigError("{}: control_plane must be an object".format(where))
            missing += [key for key in _CONTROL_PLANE_KEYS if not data.get(key)]
            missing += ["control_plane." + key for key in ("pod_subnet", "service_subnet")
                        if not control_plane.get(key)]
        if missing:
            raise ConfigError("{}: missing key(s) {}".format(where, ", ".join(dict.fromkeys(missing))))
        for key in _TEXT_KEYS:
            _check(where, key, data.get(key), str, "a string")
        for key in ("pod_subnet", "service_subnet", "admin_user", "vip"):
            _check(where, "control_plane." + key, (control_plane or {}).get(key), str, "a string")
        if not isinstance((control_plane or {}).get("may_initialize", True), bool):
            raise ConfigError("{}: control_plane.may_initialize must be true or false".format(where))
        fallbacks = data.get("fallback_endpoints", [])
        if not isinstance(fallbacks, list) or not all(isinstance(item, str) and item for item in fallbacks):
            raise ConfigError("{}: fallback_endpoints must be a list of HOST:PORT".format(where))
        _check(where, "generation", data.get("generation"), int, "a whole number")
        _check(where, "built_at", data.get("built_at"), (int, float), "a Unix time")
        try:
            minor_version(data["kubernetes_version"])
        except ValueError:
            raise ConfigError("{}: kubernetes_version must look like 1.31, not {!r}".format(
                where, data["kubernetes_version"])) from None
        if data["runtime"] not in RUNTIMES:
            raise ConfigError("{}: runtime must be one of {}, not {!r}".format(where, ", ".join(sorted(RUNTIMES)),
                                                                             data["runtime"]))
        role = data.get("role", "worker")
        if role not in ROLES:
            raise ConfigError("{}: role must be one of {}, not {!r}".format(where, ", ".join(ROLES), role))
        kubelet = data.get("kubelet", {})
        if not isinstance(kubelet, dict):
            raise ConfigError("{}: kubelet must be an object of KubeletConfiguration fields".format(where))
        packages = data.get("runtime_packages", [])
        if not isinstance(packages, list) or not all(isinstance(name, str) and name for name in packages):
            raise ConfigError("{}: runtime_packages must be a list of package names".format(where))
        package_manager = _choice(where, data, "package_manager", PACKAGE_MANAGERS)
        kube_install = _choice(where, data, "kube_install", KUBE_INSTALLS)
        release = _release(where, data, kube_install)
        return cls(
            node=data["node"], role=role, kubernetes_version=data["kubernetes_version"], runtime=data["runtime"],
            runtime_packages=packages, built_at=data.get("built_at"), kubelet=kubelet,
            kubernetes_release=data.get("kubernetes_release"), package_manager=package_manager,
            kube_install=kube_install, kube_repo=data.get("kube_repo"), release=release,
            api_server=data.get("api_server"),
            node_subnet=data.get("node_subnet"), generation=data.get("generation"), endpoint=data.get("endpoint"),
            endpoint_fingerprint=data.get("endpoint_fingerprint"), credential=data.get("credential"),
            fallback_endpoints=fallbacks,
            control_plane=None if control_plane is None else ControlPlaneSettings(
                pod_subnet=control_plane["pod_subnet"], service_subnet=control_plane["service_subnet"],
                admin_user=control_plane.get("admin_user"), vip=control_plane.get("vip"),
                may_initialize=control_plane.get("may_initialize", True)),
            unstamped=bool(data.get("unstamped")))


def _check(where: str, key: str, value: object, kind: Any, what: str) -> None:
    """A ConfigError unless `value` is None or of `kind` (never a bool: true is no number)."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, kind)):
        raise ConfigError("{}: {} must be {}, not {!r}".format(where, key, what, value))


def _choice(where: str, data: Dict[str, Any], key: str, choices: Sequence[str]) -> str:
    """data[key] if it is one of `choices` (absent: the first), else a ConfigError."""
    value = data.get(key, choices[0])
    if value not in choices:
        raise ConfigError("{}: {} must be one of {}, not {!r}".format(where, key, ", ".join(choices), value))
    return value


def _release(where: str, data: Dict[str, Any], kube_install: str) -> Optional[ReleaseSettings]:
    """The release settings, present iff kube_install is release, which also needs the exact kubernetes_release of
    the image's minor."""
    if kube_install != "release":
        if data.get("release") is not None:
            raise ConfigError("{}: release is set but kube_install is {!r}: rebuild the image".format(
                where, kube_install))
        return None
    version = data.get("kubernetes_release")
    if data.get("release") is None or not version:
        raise ConfigError("{}: kube_install release needs the keys release and kubernetes_release: rebuild the "
                          "image".format(where))
    if not _PATCH.match(version) or minor_version(version) != minor_version(data["kubernetes_version"]):
        raise ConfigError("{}: kubernetes_release must be the exact release (1.31.4) of kubernetes_version {}, not "
                          "{!r}".format(where, data["kubernetes_version"], version))
    return ReleaseSettings.from_json(data["release"], version, where)


def load_node_config(path: str) -> NodeConfig:
    """node.json at `path`, read and checked (NodeConfig.from_json)."""
    try:
        with open(path) as handle:
            data = json.load(handle)
    except OSError as err:
        raise ConfigError("{}: cannot read: {}".format(path, err.strerror)) from None
    except ValueError as err:
        raise ConfigError("{}: not valid JSON: {}".format(path, err)) from None
    return NodeConfig.from_json(data, path)


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
        self.kube_vip_manifest = os.path.join(self.root, KUBE_VIP_MANIFEST)
        self.certificate_key = os.path.join(self.cluster_dir, SECRETS_DIR, CERTIFICATE_KEY)

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
