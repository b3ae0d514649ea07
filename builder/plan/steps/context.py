"""What every build step is given: the target, the profile, the node's identity and the plan being built."""

from __future__ import annotations

import hashlib
import ipaddress
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict

from firstboot.nodeconfig import NodeConfig

from ...config.addresses import DEFAULT_POD_SUBNET, DEFAULT_SERVICE_SUBNET
from ...config.profiles import Profile
from ...errors import UserError
from ...targets import Target
from .. import FileOp, Plan, PlanView
from ..bundle.images import pause_image
from ..release import RELEASE, Fetch, install_method


class StaticNetwork(TypedDict):
    """The cluster interface's fixed settings (BuildContext.static_network()): a plain dict, as templates see it
    (`static_network.address` in the cloud-init seed's network-config) and the manifest records it."""

    interface: str  # eth0 unless the profile names another
    address: str  # CIDR: 192.168.6.15/24
    gateway: str
    dns: list[str]


@dataclass(frozen=True, kw_only=True)
class NodeIdentity:
    """Who this image becomes: its hostname (= Kubernetes node name) and optional fixed address."""

    name: str
    role: str = "worker"
    address: str | None = None  # 192.168.6.15 or 192.168.6.15/24
    mac: str | None = None
    subnet: str | None = None  # the cluster's node subnet: gives a bare address its prefix
    gateway: str | None = None  # the node subnet's gateway (cluster.yaml)
    dns: tuple[str, ...] = ()  # its name servers (cluster.yaml)
    cluster: str | None = None  # the cluster directory's name, for reports


@dataclass(kw_only=True)
class BuildContext:
    """Inputs of a build, shared by all steps."""

    target: Target
    profile: Profile
    node: NodeIdentity
    node_config: NodeConfig  # node.json
    kube_keyring: bytes | None = None
    overlays: list[str] = field(default_factory=list)  # extra overlay dirs from --overlay
    epoch: int = 0  # the build's time (SOURCE_DATE_EPOCH or the base's mtime): dates written into the image
    replace_overlays: bool = False  # an --overlay may shadow a shipped overlay of the same name
    subnets: tuple[str, str] = (DEFAULT_SERVICE_SUBNET, DEFAULT_POD_SUBNET)  # the cluster's service and pod networks
    cluster_files: tuple[tuple[str, bytes, int], ...] = ()  # what a control plane carries of its cluster (path,
    # content, mode): settings, inventory, the token endpoint's configuration and secrets
    base: Path | None = None  # the vendor image (or rootfs tree) the build starts from, resolved to a local path
    base_name: str = ""  # what the user named it: a catalog name, a URL or a path
    kubernetes_release: str | None = None  # the exact patch (cluster.yaml's, or what an --offline bundle holds)
    fetch: bool = True  # False for --dry-run: nothing is downloaded (an --offline bundle is only announced)
    download: Fetch | None = None  # how the build host gets a file (the bounded client); None: --dry-run
    bundle: Any = None  # the builder.plan.bundle.make.Bundle an --offline build carries
    plan: Plan = field(default_factory=Plan)

    @property
    def from_release(self) -> bool:
        """True when the node installs Kubernetes from the upstream release (`kube_install: release`), not from
        pkgs.k8s.io's packages: no apt repository, pin or key then; the kubelet's unit comes with the image."""
        return install_method(self.profile, self.target) == RELEASE

    @property
    def view(self) -> PlanView:
        """The target's files as the plan has changed them so far."""
        return PlanView(self.target, self.plan)

    def write(self, step: str, fs: str, path: str, text: str | bytes, mode: int = 0o644, uid: int = 0,
              gid: int = 0) -> None:
        """Add a write op (text is UTF-8 encoded). A private `mode` (nothing for others: the file holds a secret)
        never ends up wider than the file it replaces."""
        content = text.encode() if isinstance(text, str) else text
        there = self.view.file_meta(fs, path)
        if there is not None and not mode & 0o007:
            mode &= there[0]
        self.plan.add(FileOp("write", fs, path, step, content=content, mode=mode, uid=uid, gid=gid))

    def edit(self, step: str, fs: str, path: str, text: str | bytes) -> None:
        """Replace the file at `path` with `text` in place: it keeps its mode and owner (a new file is 0644
        root:root). Read it with `view.read_text`, which never reads through a link."""
        self.write(step, fs, path, text, *(self.view.file_meta(fs, path) or (0o644, 0, 0)))

    def mkdir(self, step: str, path: str, mode: int = 0o755, uid: int = 0, gid: int = 0) -> None:
        """Add a root-filesystem mkdir op (an existing directory gets this mode and owner)."""
        self.plan.add(FileOp("mkdir", "root", path, step, mode=mode, uid=uid, gid=gid))

    def symlink(self, step: str, path: str, target: str) -> None:
        """Add a root-filesystem symlink op."""
        self.plan.add(FileOp("symlink", "root", path, step, target=target))

    def remove(self, step: str, path: str) -> None:
        """Add a root-filesystem remove op."""
        self.plan.add(FileOp("remove", "root", path, step))

    def static_network(self) -> StaticNetwork | None:
        """The cluster interface's fixed settings, or None for DHCP: address from the inventory (else the profile's
        `network.address`), gateway and name servers from the profile's `network`, else the cluster's. A fixed
        address needs a gateway (else apt and the endpoint are unreachable for ever); name servers default to it."""
        network = dict(self.profile["network"] or {})
        address = self.node.address or network.get("address")
        if not address:
            return None
        prefix = ipaddress.ip_network(self.node.subnet).prefixlen if self.node.subnet else 24
        try:
            iface = ipaddress.ip_interface(address if "/" in str(address) else f"{address}/{prefix}")
        except ValueError:
            raise UserError(f"node {self.node.name}: address {address!r} is not an IP address (CIDR like "
                            "192.168.6.15/24)") from None
        gateway = network.get("gateway") or self.node.gateway
        if not gateway:
            fix = (f"set the node subnet's gateway: add `gateway: A.B.C.D` to {self.node.cluster}/cluster.yaml "
                   "(or `pi-image cluster init --gateway`)" if self.node.cluster
                   else "set network.gateway in the profile")
            raise UserError(f"node {self.node.name} has the fixed address {iface} but no gateway is known, so it "
                            f"could reach nothing beyond its subnet: {fix}")
        dns = [str(d) for d in network.get("dns") or self.node.dns or [gateway]]
        return StaticNetwork(interface=network.get("interface") or "eth0", address=str(iface), gateway=str(gateway),
                             dns=dns)

    def template_context(self) -> dict[str, Any]:
        """Values overlays can use: every profile key plus facts about the node and the target."""
        # public values only: meta-data is world-readable, and a short hash of a passphrase could be guessed offline
        # and not where the cluster directory is: the same inputs give the same bytes wherever they are
        identity = {key: value for key, value in self.node.__dict__.items() if key != "cluster"}
        seed = json.dumps([self.profile.public_values(), identity], sort_keys=True, default=str).encode()
        return {
            **self.profile.values,
            "node": self.node.name, "hostname": self.node.name, "role": self.node.role,
            "address": self.node.address, "target": self.target.name, "os_id": self.target.os.id,
            "os_version": self.target.os.version_id, "boot_mount": self.target.boot_mount,
            "admin_user": self.profile["user"] or self.target.default_user,
            "static_network": self.static_network(),
            "node_subnet": self.node.subnet,
            "kube_repo": self.profile["kube_repo_url"].format(version=self.profile["kubernetes_version"]),
            "kubernetes_release": self.kubernetes_release,
            "sandbox_image": pause_image(self.kubernetes_release or self.profile["kubernetes_version"]),
            # never proxied: the node itself, its subnet, and the default service and pod networks
            "no_proxy": ",".join(filter(None, ["localhost", "127.0.0.1", self.node.subnet, *self.subnets,
                                               ".svc", ".cluster.local"])),
            # a new id whenever the node's settings change, so cloud-init applies them again
            "instance_id": f"pi-image-{self.node.name}-{hashlib.sha256(seed).hexdigest()[:12]}",
        }
