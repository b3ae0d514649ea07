"""What an image is and how far it is from a ready Kubernetes node — read only, never written."""

from __future__ import annotations

import json
import re
from typing import Any

from .cmdline import has_cgroup_flags
from .image import DiskImage, Filesystem
from .systemd import unit_enabled
from .targets import Target

SYSCTLS = ("net.bridge.bridge-nf-call-iptables", "net.bridge.bridge-nf-call-ip6tables", "net.ipv4.ip_forward")
MODULES = ("overlay", "br_netfilter")
KUBE_REPO = re.compile(r"pkgs\.k8s\.io/core:/stable:/v(\d+\.\d+)/deb")
SWAP_SERVICES = ("dphys-swapfile.service", "nvzramconfig.service")
FIRSTBOOT_UNIT = "pi-image-firstboot.service"
NODE_CONFIG = "/etc/pi-image/node.json"


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
    node = _node_name(root)
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
        "firstboot": {"installed": unit_enabled(root, FIRSTBOOT_UNIT), "node": node},
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


def _sysctl_ok(root: Filesystem) -> bool:
    values: dict[str, str] = {}
    for text in [root.read_text("/etc/sysctl.conf") or ""] + _files(root, "/etc/sysctl.d", ".conf"):
        for line in text.splitlines():
            key, sep, value = line.partition("=")
            if sep and not key.strip().startswith(("#", ";")):
                values[key.strip().replace("/", ".")] = value.strip()
    return all(values.get(k) == "1" for k in SYSCTLS)


def _modules_ok(root: Filesystem) -> bool:
    listed = {line.split("#")[0].strip() for text in _files(root, "/etc/modules-load.d", ".conf")
              for line in text.splitlines()}
    return all(m in listed for m in MODULES)


def _kube_repo(root: Filesystem) -> str | None:
    for text in _files(root, "/etc/apt/sources.list.d", ".list") + _files(root, "/etc/apt/sources.list.d", ".sources"):
        for line in text.splitlines():
            m = KUBE_REPO.search(line)
            if m and not line.lstrip().startswith("#"):
                return m.group(1)
    return None


def _swap_disabled(root: Filesystem) -> bool:
    fstab = root.read_text("/etc/fstab", "") or ""
    swap_in_fstab = any(len(f := line.split()) >= 3 and f[2] == "swap" and not f[0].startswith("#")
                        for line in fstab.splitlines())
    return not swap_in_fstab and not any(unit_enabled(root, s) for s in SWAP_SERVICES)


def _node_name(root: Filesystem) -> str | None:
    try:
        config = json.loads(root.read_text(NODE_CONFIG) or "null")
    except ValueError:
        return None
    return config.get("node") if isinstance(config, dict) else None
