"""The exact .deb closure a node must install, resolved by apt itself on the build host for the image.

A private apt tree (`Dir`) holds a copy of the image's dpkg status, its sources, its keyrings, its preferences (the
pin that holds kubelet/kubeadm/kubectl at the cluster's minor) and its architecture: `apt-get update` and
`apt-get install --download-only` then fetch exactly what the image lacks, checked against the archives' signatures
by apt. No chroot, no qemu, no root; none of the image's apt.conf.d is read (its hooks must never run on this host).

apt does not prefix `signed-by=` paths with `Dir`, so each keyring a source names is copied into the tree and the
source rewritten to name the copy. `package_mirrors` ({archive URL: mirror URL}) are applied to the sources here
only: the build host may reach the archives through another address than the node would.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

from ...errors import UserError
from ...run import run
from .. import PlanView

SOURCES = "/etc/apt/sources.list"
SOURCES_DIR = "/etc/apt/sources.list.d"
TRUSTED = "/etc/apt/trusted.gpg"
TRUSTED_DIR = "/etc/apt/trusted.gpg.d"
PREFERENCES = "/etc/apt/preferences"
PREFERENCES_DIR = "/etc/apt/preferences.d"
DPKG_STATUS = "/var/lib/dpkg/status"
KUBE_PACKAGES = ("kubelet", "kubeadm", "kubectl")
KUBE_PIN = "/etc/apt/preferences.d/kubernetes"  # the kube-repo overlay's pin of KUBE_PACKAGES
_SIGNED_BY_OPTION = re.compile(r"signed-by=([^\s\]]+)")
_SIGNED_BY_FIELD = re.compile(r"^(Signed-By:[ \t]*)(/\S+)[ \t]*$", re.MULTILINE | re.IGNORECASE)
_UNREACHABLE = ("Failed to fetch", "Could not resolve", "Temporary failure resolving", "Could not connect",
                "Connection refused", "Unable to connect", "Network is unreachable", "timed out")


@dataclass(frozen=True)
class Deb:
    """One .deb of the closure."""

    package: str
    version: str
    path: Path


def status_stanzas(status: str) -> list[dict[str, str]]:
    """dpkg's status file as one {field: value} per package (continuation lines left out)."""
    return [dict(line.split(": ", 1) for line in stanza.splitlines() if ": " in line and not line[0].isspace())
            for stanza in status.split("\n\n")]


def dpkg_architecture(status: str, where: str) -> str:
    """The image's native architecture: that of its dpkg package."""
    for fields in status_stanzas(status):
        if fields.get("Package") == "dpkg" and fields.get("Architecture"):
            return fields["Architecture"]
    raise UserError(f"{where}: its dpkg status names no dpkg package, so its architecture is unknown: is this a "
                    "Debian-family image?")


class AptTree:
    """A private apt tree at `root` for the image seen through `view`; `apt(...)` runs apt-get/apt-cache in it."""

    def __init__(self, root: Path, view: PlanView, mirrors: dict[str, str], where: str,
                 placeholders: dict[str, str] | None = None):
        self.root = root
        self.where = where
        status = view.read_text("root", DPKG_STATUS, follow=True)
        if not status:
            raise UserError(f"{where}: cannot read {DPKG_STATUS}, so what the image already has is unknown: "
                            "--offline needs a Debian-family image with a dpkg database")
        self.arch = dpkg_architecture(status, where)
        for sub in ("etc/apt/apt.conf.d", "etc/apt/sources.list.d", "etc/apt/trusted.gpg.d", "etc/apt/preferences.d",
                    "var/lib/apt/lists/partial", "var/cache/apt/archives/partial", "var/lib/dpkg", "keys", "log"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        (root / DPKG_STATUS.lstrip("/")).write_text(status)
        self._copy_sources(view, {**(placeholders or {}), **mirrors})
        self._copy_dir(view, TRUSTED_DIR, (".gpg", ".asc"))
        self._copy_dir(view, PREFERENCES_DIR, ("", ".pref"))
        for single in (TRUSTED, PREFERENCES):
            data = view.read_bytes("root", single, follow=True)
            if data is not None:
                (root / single.lstrip("/")).write_bytes(data)
        self.config = root / "apt.conf"
        sandbox = 'APT::Sandbox::User "root";\n' if os.geteuid() == 0 else ""
        self.config.write_text(
            f'Dir "{root}/";\nDir::State::status "{root}{DPKG_STATUS}";\nDir::Etc::Parts "{root}/etc/apt/apt.conf.d";\n'
            f'Dir::Log "{root}/log";\nAPT::Architecture "{self.arch}";\nAPT::Architectures {{ "{self.arch}"; }};\n'
            'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\nDebug::NoLocking "true";\n'
            'Acquire::Languages "none";\nAcquire::Retries "2";\nAcquire::http::Timeout "30";\n'
            'Acquire::https::Timeout "30";\n' + sandbox)

    def _copy_sources(self, view: PlanView, replacements: dict[str, str]) -> None:
        """The image's .list and .sources files, their keyrings copied here, their URLs mirrored and the
        placeholders its first boot fills in filled."""
        files = [SOURCES] + [f"{SOURCES_DIR}/{name}" for name in view.listdir("root", SOURCES_DIR)
                             if name.endswith((".list", ".sources"))]
        keys: dict[str, str] = {}

        def keyring(path: str) -> str:
            if path not in keys:
                data = view.read_bytes("root", path, follow=True)
                if data is None:
                    raise UserError(f"{self.where}: an apt source names the keyring {path}, which the image lacks: "
                                    "apt could not verify that archive")
                host = self.root / "keys" / f"{len(keys)}-{Path(path).name}"
                host.write_bytes(data)
                keys[path] = str(host)
            return keys[path]

        for path in files:
            text = view.read_text("root", path, follow=True)
            if text is None:
                continue
            text = _SIGNED_BY_OPTION.sub(lambda m: f"signed-by={keyring(m.group(1))}", text)
            text = _SIGNED_BY_FIELD.sub(lambda m: f"{m.group(1)}{keyring(m.group(2))}", text)
            for old, new in replacements.items():
                text = text.replace(old.rstrip("/"), new.rstrip("/"))
            (self.root / path.lstrip("/")).write_text(text)

    def _copy_dir(self, view: PlanView, directory: str, suffixes: tuple[str, ...]) -> None:
        for name in view.listdir("root", directory):
            if Path(name).suffix in suffixes or (not Path(name).suffix and "" in suffixes):
                data = view.read_bytes("root", f"{directory}/{name}", follow=True)
                if data is not None:
                    (self.root / directory.lstrip("/") / name).write_bytes(data)

    def apt(self, *argv: str) -> str:
        """Run apt-get or apt-cache in this tree; its stdout. A failure is a UserError naming the cause."""
        proc = run(list(argv), env={"APT_CONFIG": str(self.config), "DEBIAN_FRONTEND": "noninteractive"},
                   check=False)
        output = (proc.stdout + proc.stderr).decode(errors="replace")
        problem = _problem(output) if proc.returncode or argv[1] == "update" else None
        if problem:
            raise UserError(f"{self.where}: {problem}")
        if proc.returncode:
            raise UserError(f"{self.where}: {argv[0]} {argv[1]} failed: {_last_lines(output)}")
        return proc.stdout.decode(errors="replace")

    def update(self) -> None:
        """apt-get update: the archives' indexes, signatures checked."""
        self.apt("apt-get", "update", "-q")

    def kube_versions(self) -> list[str]:
        """The kubeadm versions the archives offer that the image's pin allows, newest first (`apt-cache madison`)."""
        out = self.apt("apt-cache", "madison", "kubeadm")
        versions = [line.split("|")[1].strip() for line in out.splitlines() if line.count("|") >= 2]
        candidate = self.apt("apt-cache", "policy", "kubeadm")
        match = re.search(r"Candidate: (\S+)", candidate)
        if not match or match.group(1) == "(none)":
            raise UserError(f"{self.where}: no kubeadm the image's pin allows is in its apt sources: check "
                            "kube_repo_url and kubernetes_version")
        return [match.group(1)] + [v for v in versions if v != match.group(1)]

    def download(self, packages: list[str]) -> list[Deb]:
        """`apt-get install --download-only` of `packages` (NAME or NAME=VERSION): the .debs the image lacks."""
        archives = self.root / "var/cache/apt/archives"
        for old in archives.glob("*.deb"):
            old.unlink()
        self.apt("apt-get", "install", "--download-only", "-y", "-q", *packages)
        return sorted((_deb(path) for path in archives.glob("*.deb")), key=lambda deb: deb.package)


def _deb(path: Path) -> Deb:
    """A .deb named as apt names its downloads: NAME_VERSION_ARCH.deb, the epoch's colon as %3a."""
    package, version, _ = path.name[:-len(".deb")].split("_")
    return Deb(package, unquote(version), path)


def _problem(output: str) -> str | None:
    """The reason apt could not use an archive, with its fix, or None."""
    for line in output.splitlines():
        if "NO_PUBKEY" in line or "is not signed" in line or "signatures couldn't be verified" in line or \
                "The following signatures were invalid" in line:
            return (f"apt cannot verify an archive the image uses ({line.strip()}): the image's keyring for it is "
                    "missing or wrong")
        if any(marker in line for marker in _UNREACHABLE):
            return (f"apt cannot reach an archive the image uses ({line.strip()}): build once where it is "
                    "reachable (the bundle is cached), or set package_mirrors {ARCHIVE_URL: MIRROR_URL}")
    return None


def _last_lines(output: str) -> str:
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    return " | ".join(lines[-3:]) or "no output"


def remove_tree(root: Path) -> None:
    """Remove a private apt tree (never the bundle it produced)."""
    shutil.rmtree(root, ignore_errors=True)
