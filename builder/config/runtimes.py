"""Where each target's container runtime comes from, and which combinations cannot work (refused at build time).

The first-boot agent installs `packages` with apt when the runtime is missing (none of the stock Pi images ship
one), keeping pi-image's /etc/containerd/config.toml (config version 2, which containerd 1.6, 1.7 and 2.x all read;
2.x converts it). Versions are those the archive installs today (../shared/notes/runtimes.md has the sources):

| OS (target)                         | packages                              | from                    | containerd |
|-------------------------------------|---------------------------------------|-------------------------|------------|
| Ubuntu 18.04 (Jetson L4T R32)       | containerd, nvidia-container-runtime  | bionic-updates + L4T    | 1.6.12     |
| Ubuntu 20.04 (ubuntu-raspi)         | containerd                            | focal-updates           | 1.7.24     |
| Ubuntu 22.04 (ubuntu-raspi, -x86)   | containerd                            | jammy-updates           | 2.2.1      |
| Ubuntu 24.04 (ubuntu-raspi, -x86)   | containerd                            | noble-updates           | 2.2.1      |
| Debian 12 (Raspberry Pi OS bookworm)| containerd                            | bookworm                | 1.6.20     |
| Debian 13 (Raspberry Pi OS trixie)  | containerd                            | trixie                  | 1.7.24     |
| Kali rolling (kali-raspi)           | containerd                            | kali-rolling            | 1.7.24     |
| Arch Linux (arch)                   | containerd, runc                      | extra (rolling)         | 2.1.4      |

Kubernetes >= 1.26 needs CRI v1 (containerd >= 1.6): jammy's release pocket alone (1.5.9) is too old, its -updates
pocket (on in the stock image) is not. The kubelet >= 1.35 refuses cgroup v1, which Ubuntu 18.04 (L4T R32) and
20.04 run by default. bionic's 1.6.12 has CRI v1 but is below containerd's own "1.6.15+ for Kubernetes 1.26+" line.
amd64 (ubuntu-x86, from archive.ubuntu.com) gets the versions arm64 gets from ports.ubuntu.com: one source package,
one version per pocket, so the table holds for both.

On the release path (kube_install: release) the node installs the kubelet's dependencies as well, which the kubelet
packages would have pulled in (RELEASE_DEPENDENCIES: kubeadm's preflight wants conntrack and socat, kube-proxy
iptables, the kubelet ethtool).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from firstboot.runtime import RUNTIMES as DEVICE_RUNTIMES

from ..errors import UserError
from ..targets import TARGETS, target_class

RUNTIMES = tuple(sorted(DEVICE_RUNTIMES))  # the device agent's table is the one list of runtimes


@dataclass(frozen=True)
class RuntimeSource:
    """The runtime packages an OS release installs, where from, and the containerd version they bring."""

    packages: tuple[str, ...]
    origin: str
    containerd: tuple[int, int, int]
    cgroup_v1: bool = False


SOURCES: dict[tuple[str, str], RuntimeSource] = {
    ("ubuntu", "18.04"): RuntimeSource(("containerd", "nvidia-container-runtime"),
                                       "Ubuntu bionic-updates + NVIDIA's L4T repository", (1, 6, 12), cgroup_v1=True),
    ("ubuntu", "20.04"): RuntimeSource(("containerd",), "Ubuntu focal-updates", (1, 7, 24), cgroup_v1=True),
    ("ubuntu", "22.04"): RuntimeSource(("containerd",), "Ubuntu jammy-updates", (2, 2, 1)),
    ("ubuntu", "24.04"): RuntimeSource(("containerd",), "Ubuntu noble-updates", (2, 2, 1)),
    ("debian", "12"): RuntimeSource(("containerd",), "Debian bookworm", (1, 6, 20)),
    ("debian", "13"): RuntimeSource(("containerd",), "Debian trixie", (1, 7, 24)),
    ("kali", ""): RuntimeSource(("containerd",), "Kali rolling", (1, 7, 24)),
    ("arch", ""): RuntimeSource(("containerd", "runc"), "Arch Linux extra", (2, 1, 4)),
}
# The kubelet's dependencies, by the package manager that installs them (Target.package_manager): what the kubelet
# and kubeadm packages depend on, for a node that installs the upstream binaries instead.
RELEASE_DEPENDENCIES: dict[str, tuple[str, ...]] = {
    "apt": ("conntrack", "socat", "ethtool", "iptables"),
    "pacman": ("conntrack-tools", "socat", "ethtool", "iptables"),
}
# A GPU's runtime in the table above is installed only on a target whose GPU it is (`Target.gpu_packages`): not on
# another board that runs the same release.
GPU_PACKAGES = frozenset(package for target in TARGETS for package in target.gpu_packages)
CRI_V1_FROM = (1, 6, 0)
CGROUP_V1_REFUSED_FROM = (1, 35)


def runtime_source(os_id: str, version_id: str, target: str) -> RuntimeSource:
    """The source for an OS release (a rolling one, Kali or Arch, has no version in the table: any version); UserError
    for an OS not in the table."""
    key = (os_id, "" if (os_id, "") in SOURCES else version_id)
    if os_id == "raspbian":
        key = ("debian", version_id)
    source = SOURCES.get(key)
    if source is None:
        known = ", ".join(f"{o or 'kali'} {v}".strip() for o, v in SOURCES)
        raise UserError(f"no known container runtime source for {os_id} {version_id or '(no VERSION_ID)'} "
                        f"({target}, as its /etc/os-release says); supported: {known}")
    ours = _gpu_packages(target)
    return replace(source, packages=tuple(p for p in source.packages if p not in GPU_PACKAGES or p in ours))


def runtime_packages(runtime: str, cri_dockerd: bool, kubernetes: str, os_id: str, version_id: str,
                     target: str, config_version: int = 2, default_runtime: str | None = None) -> list[str]:
    """What first boot must install for `runtime` on this OS, or a UserError for a combination that cannot work."""
    minor = tuple(int(x) for x in kubernetes.split("."))
    if default_runtime == "nvidia" and not _gpu_packages(target):
        raise UserError(f"default_runtime: nvidia needs NVIDIA's container runtime, which only Jetson images have "
                        f"({target} has none): drop default_runtime")
    if runtime == "docker":
        if minor >= (1, 24) and not cri_dockerd:
            raise UserError(
                f"runtime: docker cannot run Kubernetes {kubernetes}: the kubelet talks to Docker only through "
                "cri-dockerd since 1.24, and no archive for this OS carries it. Use runtime: containerd (the "
                "default; on Jetson the nvidia runtime becomes containerd's default), or add cri-dockerd to the "
                "image with --overlay (the static .tgz of github.com/Mirantis/cri-dockerd) and set cri_dockerd: true")
        return []  # docker (and cri-dockerd) come with the image or the user's overlay
    source = runtime_source(os_id, version_id, target)
    if minor >= (1, 26) and source.containerd < CRI_V1_FROM:
        raise UserError(f"{source.origin} has containerd {_dotted(source.containerd)}, which lacks CRI v1: "
                        f"Kubernetes {kubernetes} needs containerd >= 1.6")
    if config_version == 3 and source.containerd < (2, 0, 0):
        raise UserError(f"containerd_config_version: 3 is read by containerd 2.x only, and {source.origin} installs "
                        f"{_dotted(source.containerd)}: use 2 (every containerd reads it)")
    if source.cgroup_v1 and minor >= CGROUP_V1_REFUSED_FROM:
        raise UserError(f"{os_id} {version_id} runs cgroup v1, which the kubelet refuses from Kubernetes 1.35: "
                        f"pin this node's cluster to 1.34 or older")
    return list(source.packages)


def _gpu_packages(target: str) -> tuple[str, ...]:
    """The GPU runtime packages of the target called `target` (none for a name no target has)."""
    cls = target_class(target)
    return cls.gpu_packages if cls else ()


def _dotted(version: tuple[int, ...]) -> str:
    return ".".join(map(str, version))
