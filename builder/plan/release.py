"""Kubernetes from the upstream release (`kube_install: release`): kubeadm, kubelet and kubectl of the cluster's exact
patch, crictl and the CNI plugins of its minor, each pinned by the SHA-256 its publisher puts beside it.

    {kube_release_url}/stable-1.31.txt                         "v1.31.4": the patch, when the cluster has none yet
    {kube_release_url}/v1.31.4/bin/linux/{arch}/{tool}         kubeadm, kubelet, kubectl
    {crictl_url}/{V}/crictl-{V}-linux-{arch}.tar.gz            V: data/kube-release.yaml's crictl of the minor
    {cni_plugins_url}/{V}/cni-plugins-linux-{arch}-{V}.tgz     V: its CNI plugins
    <each asset's URL>.sha256                                  its SHA-256 (hex, maybe followed by the file's name)

The build host fetches the small files (the patch, the checksums) and records every digest in node.json's `release`,
so the device trusts its card, never the network: it downloads the bodies (or takes them from an --offline bundle)
and refuses one that does not match. The profile's package_mirrors ({URL the node uses: URL this host uses}) apply to
what this host fetches. Fetching goes through a `Fetch` the build gives (builder.bases.download's bounded client):
this layer never opens a connection itself.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import yaml

from firstboot.nodeconfig import KUBE_INSTALLS, RELEASE_ARCHES, ReleaseSettings

from .. import DATA_DIR
from ..config.profiles import Profile
from ..errors import UserError
from ..targets import Target
from ..targets.x86 import dpkg_architecture

PACKAGES, RELEASE = KUBE_INSTALLS
DATA = DATA_DIR / "kube-release.yaml"
MAX_STABLE_BYTES = 256  # "v1.31.4\n"
MAX_SHA256_BYTES = 1024  # 64 hex digits, maybe a file name
# How the build host gets a small file whole, at most `limit` bytes (url, limit, what it is): its bytes, or None when
# the server says there is no such file; any other failure is a UserError naming the URL.
Fetch = Callable[[str, int, str], "bytes | None"]


def install_method(profile: Profile, target: Target) -> str:
    """How this node gets Kubernetes: the profile's kube_install, else its target's default."""
    return str(profile["kube_install"] or target.kube_install)


def companions(minor: str) -> tuple[str, str]:
    """(crictl version, CNI plugins version) of Kubernetes `minor` ("1.31"), from data/kube-release.yaml."""
    minors = (yaml.safe_load(DATA.read_text()) or {}).get("minors", {})
    entry = minors.get(minor)
    if not isinstance(entry, dict):
        raise UserError(f"kube_install: release: the crictl and CNI plugins versions of Kubernetes {minor} are not "
                        f"recorded in {DATA} (it knows {', '.join(minors)}): add the minor there, or use "
                        "kube_install: packages")
    return str(entry["crictl"]), str(entry["cni_plugins"])


def release_arch(target: Target) -> str:
    """The architecture of the binaries this image runs: its dpkg's; an image that names none is an Arch Linux system
    (x86-64 only) when it uses pacman, else one of the board targets (all arm64)."""
    arch = dpkg_architecture(target.root) or ("amd64" if target.package_manager == "pacman" else "arm64")
    if arch not in RELEASE_ARCHES:
        raise UserError(f"this {target.name} image runs {arch}, for which Kubernetes publishes no release binaries "
                        f"(only {', '.join(RELEASE_ARCHES)}): use kube_install: packages")
    return arch


def host_url(url: str, mirrors: dict[str, str]) -> str:
    """`url` as this host reaches it: the first package mirror whose device-side prefix it starts with applied."""
    for device, host in mirrors.items():
        if url.startswith(device.rstrip("/") + "/"):
            return host.rstrip("/") + url[len(device.rstrip("/")):]
    return url


def resolve_release(profile: Profile, arch: str, recorded: str | None,
                    fetch: Fetch | None) -> tuple[str | None, ReleaseSettings]:
    """(kubernetes_release, node.json's `release`) of this build: the cluster's recorded patch, else the
    newest of the minor (stable-MINOR.txt). With no `fetch` (--dry-run) nothing is asked: the patch stays the
    recorded one (maybe None) and no digest is known."""
    minor = profile["kubernetes_version"]
    crictl, cni = companions(minor)
    mirrors = dict(profile["package_mirrors"])
    settings = ReleaseSettings(kube_url=profile["kube_release_url"], crictl_url=profile["crictl_url"],
                               crictl_version=crictl, cni_url=profile["cni_plugins_url"], cni_version=cni, arch=arch,
                               sha256={})
    if fetch is None:
        return recorded, settings
    release = recorded or _stable(minor, profile["kube_release_url"], mirrors, fetch)
    digests = {name: _sha256(host_url(url, mirrors), name, release, fetch)
               for name, url in settings.assets(release)}
    return release, settings.replace(sha256=digests)


def _stable(minor: str, base: str, mirrors: dict[str, str], fetch: Fetch) -> str:
    """The newest patch of `minor`, as the release location's stable-MINOR.txt says ("v1.31.4" -> "1.31.4")."""
    url = host_url(f"{base.rstrip('/')}/stable-{minor}.txt", mirrors)
    data = fetch(url, MAX_STABLE_BYTES, "release marker")
    if data is None:
        raise UserError(f"{url}: not found, so the newest Kubernetes {minor} patch is unknown: check "
                        f"kubernetes_version ({minor}) and kube_release_url")
    text = data.decode("ascii", errors="replace").strip()
    if not re.fullmatch(rf"v{re.escape(minor)}\.\d{{1,3}}", text):
        raise UserError(f"{url}: expected the newest {minor} patch like v{minor}.4, not {text[:40]!r}")
    return text[1:]


def _sha256(url: str, name: str, release: str, fetch: Fetch) -> str:
    """The SHA-256 published at `url`.sha256 (hex, maybe followed by a file name)."""
    data = fetch(url + ".sha256", MAX_SHA256_BYTES, "checksum file")
    if data is None:
        raise UserError(f"{url}.sha256: not found: Kubernetes {release} has no {name} there; check kube_release_url, "
                        "crictl_url and cni_plugins_url, or the cluster's kubernetes_release in cluster.yaml")
    words = data.decode("ascii", errors="replace").split()
    if not words or not re.fullmatch(r"[0-9a-fA-F]{64}", words[0]):
        raise UserError(f"{url}.sha256: not a SHA-256 checksum file (expected 64 hex digits)")
    return words[0].lower()

