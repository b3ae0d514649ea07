"""What an image is and how far it is from a ready Kubernetes node — read only, never written."""

from __future__ import annotations

import json
import re
from typing import Any

from firstboot.bundle import BUNDLE_DIR, BUNDLE_MANIFEST
from firstboot.nodeconfig import ENDPOINT_UNIT
from firstboot.localsetup import is_fstab_swap

from .cmdline import has_cgroup_flags
from .image import DiskImage, Filesystem
from .build import MANIFEST_PATH
from .bundle.apt import KUBE_PIN
from .profiles import DATA_DIR
from .steps.firstboot import NODE_CONFIG, UNIT as FIRSTBOOT_UNIT
from .steps.swap import SWAP_SERVICES
from .systemd import unit_enabled
from .targets import Target

KUBE_PIN_LINE = re.compile(r"^Pin:\s*version\s+(\d+\.\d+)(?:\.\*|\.\d+-\*)", re.M)  # a minor, or a release
# What a node needs is what the build writes: read from the shipped overlay, the one definition of both.
KERNEL_OVERLAY = DATA_DIR / "overlays" / "k8s-kernel" / "etc"


def inspect(target: Target) -> dict[str, Any]:
    """The inspection report of a detected target (see `pi-image inspect --help` for the fields)."""
    root = target.root
    args = target.kernel_args()
    medium = target.medium
    partitions = [
        {"number": p.number, "start": p.start, "size": p.size, "fs": p.fs, "label": p.label, "name": p.name}
        for p in medium.partitions
    ] if isinstance(medium, DiskImage) else []
    runtime = ("containerd" if root.exists("/etc/containerd/config.toml")
               else "docker" if root.exists("/etc/docker/daemon.json") else None)
    return {
        "target": target.name,
        "os": {"id": target.os.id, "version_id": target.os.version_id, "pretty_name": target.os.pretty_name},
        "partitions": partitions,
        "boot_cmdline": " ".join(args),
        "k8s": {
            "cgroup_flags": has_cgroup_flags(args),
            "runtime": runtime,
            "systemd_cgroup": _systemd_cgroup(root, runtime),
            "sysctl": _sysctl_ok(root),
            "modules": _modules_ok(root),
            "kube_repo": _kube_repo(root),
            "swap_disabled": _swap_disabled(root),
        },
        "firstboot": {"installed": unit_enabled(root, FIRSTBOOT_UNIT), **_node_facts(root),
                      "token_endpoint": unit_enabled(root, ENDPOINT_UNIT)},
    }


def _files(root: Filesystem, directory: str, suffix: str) -> list[str]:
    """Texts of the files in `directory` ending in `suffix`, in the order the tools read them (by name)."""
    return [root.read_text(f"{directory}/{n}") or "" for n in root.listdir(directory) if n.endswith(suffix)]


def _systemd_cgroup(root: Filesystem, runtime: str | None) -> bool:
    if runtime == "containerd":
        table = ""
        for line in (root.read_text("/etc/containerd/config.toml") or "").splitlines():
            line = line.split("#", 1)[0].strip()
            if line.startswith("["):
                table = line
            elif table.endswith("runtimes.runc.options]") and re.fullmatch(r"SystemdCgroup\s*=\s*true", line):
                return True
        return False
    if runtime == "docker":
        try:
            config = json.loads(root.read_text("/etc/docker/daemon.json") or "{}")
        except ValueError:
            return False
        return "native.cgroupdriver=systemd" in (config.get("exec-opts") or [])
    return False


def _sysctls(texts: list[str]) -> dict[str, str]:
    """sysctl.d(5) files as key -> value, later files winning."""
    values: dict[str, str] = {}
    for text in texts:
        for line in text.splitlines():
            key, sep, value = line.partition("=")
            if sep and not key.strip().startswith(("#", ";")):
                values[key.strip().replace("/", ".")] = value.strip()
    return values


def _modules(texts: list[str]) -> set[str]:
    return {line.split("#")[0].strip() for text in texts for line in text.splitlines()} - {""}


def _sysctl_ok(root: Filesystem) -> bool:
    wanted = _sysctls([(KERNEL_OVERLAY / "sysctl.d" / "k8s.conf").read_text()])
    found = _sysctls([root.read_text("/etc/sysctl.conf") or ""] + _files(root, "/etc/sysctl.d", ".conf"))
    return all(found.get(key) == value for key, value in wanted.items())


def _modules_ok(root: Filesystem) -> bool:
    wanted = _modules([(KERNEL_OVERLAY / "modules-load.d" / "k8s.conf").read_text()])
    return wanted <= _modules(_files(root, "/etc/modules-load.d", ".conf"))


def _kube_repo(root: Filesystem) -> str | None:
    """The Kubernetes minor the image's apt pin holds kubelet/kubeadm/kubectl at."""
    match = KUBE_PIN_LINE.search(root.read_text(KUBE_PIN) or "")
    return match.group(1) if match else None


def _swap_disabled(root: Filesystem) -> bool:
    fstab = root.read_text("/etc/fstab", "") or ""
    swap_in_fstab = any(is_fstab_swap(line) for line in fstab.splitlines())
    return not swap_in_fstab and not any(unit_enabled(root, s) for s in SWAP_SERVICES)


def _node_facts(root: Filesystem) -> dict[str, Any]:
    """Who the image becomes (node.json, 0600 in the image) and its network (the build record)."""
    config, record = _json(root, NODE_CONFIG), _json(root, MANIFEST_PATH)
    cluster = config.get("cluster") or {}
    return {"node": config.get("node"), "role": config.get("role"),
            "kubernetes_version": config.get("kubernetes_version"),
            "cluster": cluster.get("api_server") or config.get("api_server"), "endpoint": config.get("endpoint"),
            "initializes_cluster": "control_plane" in config,
            # a profile image: `pi-image flash` stamps a node onto each card; without a cluster it joins nothing
            "stamp_at_flash": bool(config.get("unstamped")), "joins": bool(config.get("endpoint")
                                                                          or "control_plane" in config),
            "network": record.get("network", "dhcp") if record else None,
            "kubernetes_release": record.get("kubernetes_release") if record else None,
            "offline": _bundle_facts(root)}


def _bundle_facts(root: Filesystem) -> dict[str, Any] | None:
    """What an --offline card carries (its bundle.json), or None: it installs from the network."""
    bundle = _json(root, f"{BUNDLE_DIR}/{BUNDLE_MANIFEST}")
    if not bundle:
        return None
    return {"kubernetes": bundle.get("kubernetes"), "platform": bundle.get("platform"),
            "packages": len(bundle.get("packages") or []), "images": len(bundle.get("images") or []),
            "size": sum(int(entry.get("size") or 0) for entry in (bundle.get("packages") or [])
                        + (bundle.get("images") or []))}


def _json(root: Filesystem, path: str) -> dict[str, Any]:
    try:
        data = json.loads(root.read_text(path) or "null")
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}
