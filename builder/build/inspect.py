"""What an image is and how far it is from a ready Kubernetes node — read only, never written.

Every string in the report that comes from the image (names, versions, addresses, the kernel command line, partition
labels) goes through `printable`: a hostile image cannot send escape sequences or NULs to the terminal, nor 10 MB of
text. The report (and so `--json`) holds those safe forms; a value from an ordinary image is unchanged.
"""

from __future__ import annotations

import json
import re
from typing import Any

from firstboot.bundle import BUNDLE_DIR, BUNDLE_MANIFEST
from firstboot.localsetup import is_fstab_swap
from firstboot.nodeconfig import ENDPOINT_UNIT

from .. import DATA_DIR
from ..errors import SHOWN_CHARS, printable
from ..image import DiskImage, Filesystem
from ..plan.bundle.apt import KUBE_PIN
from ..plan.steps.firstboot import NODE_CONFIG
from ..plan.steps.firstboot import UNIT as FIRSTBOOT_UNIT
from ..plan.steps.swap import SWAP_SERVICES
from ..plan.systemd import unit_enabled
from ..targets import Target
from ..targets.cmdline import L4T_COMMAND_LINE_SIZE, has_cgroup_flags
from . import MANIFEST_PATH

KUBE_PIN_LINE = re.compile(r"^Pin:\s*version\s+(\d+\.\d+)(?:\.\*|\.\d+-\*)", re.MULTILINE)  # a minor, or a release
# What a node needs is what the build writes: read from the shipped overlay, the one definition of both.
KERNEL_OVERLAY = DATA_DIR / "overlays" / "k8s-kernel" / "etc"
#: how much of one value read from the image the report shows (a name, a version, an address): real ones are shorter
#: how much of the kernel command line it shows: as much as the longest any target's kernel takes
CMDLINE_SHOWN_CHARS = L4T_COMMAND_LINE_SIZE
#: how many items of a list read from the image it shows (name servers)
SHOWN_ITEMS = 16


def _text(value: object, limit: int = SHOWN_CHARS) -> str | None:
    """A value from the image as `printable` text (JSON that is not a string, as JSON); None stays None."""
    if value is None:
        return None
    return printable(value if isinstance(value, str) else json.dumps(value), limit)


def _list(value: object) -> list[Any]:
    """A JSON value that should be a list: itself, or [] when it is anything else."""
    return value if isinstance(value, list) else []


def _dict(value: object) -> dict[str, Any]:
    """A JSON value that should be a mapping: itself, or {} when it is anything else."""
    return value if isinstance(value, dict) else {}


def inspect(target: Target) -> dict[str, Any]:
    """The inspection report of a detected target (see `pi-image inspect --help` for the fields)."""
    root = target.root
    args, problem = target.kernel_cmdline()
    medium = target.medium
    partitions = [
        {"number": p.number, "start": p.start, "size": p.size, "fs": p.fs, "label": _text(p.label),
         "name": _text(p.name)}
        for p in medium.partitions
    ] if isinstance(medium, DiskImage) else []
    runtime = ("containerd" if root.exists("/etc/containerd/config.toml")
               else "docker" if root.exists("/etc/docker/daemon.json") else None)
    return {
        "target": target.name,
        "os": {"id": target.os.id, "version_id": target.os.version_id,  # made safe by OsRelease.parse
               "pretty_name": target.os.pretty_name},
        "partitions": partitions,
        "boot_cmdline": printable(" ".join(args), CMDLINE_SHOWN_CHARS),
        # what a build would refuse in the command-line file (too long, a control byte), or None
        "boot_cmdline_problem": _text(problem),
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
        return "native.cgroupdriver=systemd" in _list(_json(root, "/etc/docker/daemon.json").get("exec-opts"))
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
    cluster = _dict(config.get("cluster"))
    return {"node": _text(config.get("node")), "role": _text(config.get("role")),
            "kubernetes_version": _text(config.get("kubernetes_version")),
            "cluster": _text(cluster.get("api_server") or config.get("api_server")),
            "endpoint": _text(config.get("endpoint")),
            "initializes_cluster": "control_plane" in config,
            # a profile image: `pi-image flash` stamps a node onto each card; without a cluster it joins nothing
            "stamp_at_flash": bool(config.get("unstamped")), "joins": bool(config.get("endpoint")
                                                                          or "control_plane" in config),
            "network": _network(record.get("network", "dhcp")) if record else None,
            "kubernetes_release": _text(record.get("kubernetes_release")) if record else None,
            "offline": _bundle_facts(root)}


def _network(value: object) -> str | dict[str, Any] | None:
    """The build record's `network`: "dhcp", or the fixed settings (interface, address, gateway, name servers)."""
    if not isinstance(value, dict):
        return _text(value)
    return {"interface": _text(value.get("interface")), "address": _text(value.get("address")),
            "gateway": _text(value.get("gateway")), "dns": [_text(s) for s in _list(value.get("dns"))[:SHOWN_ITEMS]]}


def _bundle_facts(root: Filesystem) -> dict[str, Any] | None:
    """What an --offline card carries (its bundle.json), or None: it installs from the network."""
    bundle = _json(root, f"{BUNDLE_DIR}/{BUNDLE_MANIFEST}")
    if not bundle:
        return None
    packages, images = _list(bundle.get("packages")), _list(bundle.get("images"))
    return {"kubernetes": _text(bundle.get("kubernetes")), "platform": _text(bundle.get("platform")),
            "packages": len(packages), "images": len(images),
            "size": sum(_size(entry) for entry in packages + images)}


def _size(entry: object) -> int:
    """The byte size a bundle.json entry records; 0 where it records none that makes sense."""
    size = entry.get("size") if isinstance(entry, dict) else None
    return size if isinstance(size, int) and not isinstance(size, bool) and size > 0 else 0


def _json(root: Filesystem, path: str) -> dict[str, Any]:
    try:
        return _dict(json.loads(root.read_text(path) or "null"))
    except (ValueError, RecursionError):  # not JSON, or nested deeper than Python's stack
        return {}
