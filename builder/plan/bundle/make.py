"""Making a bundle: its packages from the cache or apt, its images from the cache or skopeo (see __init__)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...errors import UserError
from ...image.inputs import default_cache_dir
from .. import PlanView
from ..release import Fetch
from . import images as oci
from .apt import DPKG_STATUS, KUBE_PACKAGES, KUBE_PIN, AptTree, Deb, remove_tree
from .debs import decompress_data

MAX_RELEASE_ASSET = 512 << 20  # bytes: the largest release asset (the kubelet, the CNI plugins) is under 100 MiB
DEB_FORMAT = "plain data.tar"  # how a cached .deb is kept (debs.py): part of the cache key, so none made before is used


@dataclass(frozen=True)
class BundleRequest:
    """What a node's bundle must hold."""

    minor: str  # the cluster's Kubernetes minor, "1.31"
    release: str | None  # the exact patch the cluster's cards agree on ("1.31.4"), None: the newest the pin allows
    runtime_packages: tuple[str, ...]
    control_plane: bool
    manifest_images: tuple[str, ...] = ()  # what the manifests the node applies name (flannel)
    extra_images: tuple[str, ...] = ()
    registry_mirrors: dict[str, str] = field(default_factory=dict)
    package_mirrors: dict[str, str] = field(default_factory=dict)
    source_placeholders: dict[str, str] = field(default_factory=dict)  # the target's (Jetson's <SOC>)
    # kube_install: release: {asset file name: (URL this host fetches it from, its SHA-256)}; the node's kubeadm,
    # kubelet and kubectl are these (with crictl and the CNI plugins), so apt fetches the runtime's closure only
    release_assets: dict[str, tuple[str, str]] = field(default_factory=dict)
    # bundle.json's package entries of a bundle the build host already unpacked into this image (an image built
    # with --offline, being stamped): nothing to resolve, they are there
    unpacked: tuple[dict[str, Any], ...] = ()


@dataclass
class Bundle:
    """A made bundle: its files (relative name -> host path) and its manifest (bundle.json's content)."""

    release: str
    files: dict[str, Path]
    manifest: dict[str, Any]
    grown_by: int = 0  # bytes the image's root filesystem was grown by to hold it
    unpacked: int = 0  # bytes of its packages' files, unpacked into the image on the build host (unpack.py)

    @property
    def size(self) -> int:
        """Bytes the bundle adds to the image."""
        return self.unpacked + sum(path.stat().st_size for path in self.files.values())


def make_bundle(view: PlanView, request: BundleRequest, where: str, cache_dir: Path | None = None,
                log: Callable[[str], None] = lambda line: None, fetch: Fetch | None = None) -> Bundle:
    """The bundle for the image seen through `view` (its plan so far: sources, pins, keyrings), from the cache or
    made now; `log` hears what is fetched, `fetch` gets the release assets (the build's bounded client)."""
    cache = (cache_dir or default_cache_dir()) / "bundles"
    work = cache / f".work-{os.getpid()}"
    _remove_dead_work(cache)
    work.mkdir(parents=True, exist_ok=True)
    try:
        tree = AptTree(work / "apt", view, request.package_mirrors, where, request.source_placeholders)
        oci.platform(tree.arch)  # an architecture with no images is refused before anything is fetched
        if request.unpacked:
            assert request.release, "an image's unpacked bundle names its release"
            release, debs = request.release, dict[str, Path]()
        else:
            release, debs = _packages(tree, request, cache / "packages" / _tree_key(tree, request), work, log)
        archives = _images(request, release, tree.arch, cache / "images", work, log)
        combined = _combined(archives, cache / "images" / "sets", work)
        assets = _release_assets(request, cache / "release", work, fetch, log)
    finally:
        remove_tree(work)
    files = {f"debs/{name}": path for name, path in debs.items()}
    files[f"images/{combined.name}"] = combined
    files.update({f"release/{name}": path for name, path in assets.items()})
    manifest = {
        "kubernetes": release, "architecture": tree.arch,
        "platform": "linux/" + "/".join(filter(None, oci.platform(tree.arch))),
        "sandbox_image": oci.pause_image(release),
        "packages": list(request.unpacked) or [{"file": f"debs/{name}", **_deb_fields(name), **_listed_digest(path)}
                                               for name, path in sorted(debs.items())],
        "images": [{"reference": reference, "digest": digest, "file": f"images/{combined.name}",
                    **_listed_digest(combined)} for reference, (_, digest) in archives.items()],
    }
    if assets:
        manifest["release"] = [{"file": f"release/{name}", **_digest(path)} for name, path in sorted(assets.items())]
    return Bundle(release, files, manifest)


def _packages(tree: AptTree, request: BundleRequest, key_dir: Path, work: Path,
              log: Callable[[str], None]) -> tuple[str, dict[str, Path]]:
    """(release, {deb file name: cached path}): the cached closure for the wanted release, else resolved now. A node
    installed from the release (the release is known then) needs no kube package: its runtime's closure only."""
    if request.release and _valid(key_dir / request.release):
        return request.release, _listed(key_dir / request.release)
    if request.release_assets:
        assert request.release, "the release path's patch is resolved before the bundle is made"
        log(f"resolving and downloading the runtime's packages ({tree.arch}) with apt")
        tree.update()
        return request.release, _store(tree.download(list(request.runtime_packages)), work, key_dir / request.release)
    try:
        tree.update()
    except UserError:
        cached = sorted((d for d in key_dir.glob("*") if _valid(d)), key=lambda d: _release_key(d.name))
        if request.release is None and cached:
            log(f"the package archives cannot be reached: using the cached bundle of Kubernetes {cached[-1].name}")
            return cached[-1].name, _listed(cached[-1])
        raise
    versions = tree.kube_versions()
    if request.release:
        version = next((v for v in versions if _upstream(v) == request.release), None)
        if version is None:
            raise UserError(f"the cluster's cards run Kubernetes {request.release}, which the archive no longer "
                            f"offers (it has {', '.join(_upstream(v) for v in versions[:3])}): keep building "
                            "from a warm cache, or move the cluster on (kubernetes_release in cluster.yaml)")
        newest = max((_upstream(v) for v in versions), key=_release_key)
        if newest != request.release:
            log(f"the archive offers Kubernetes {newest}; the cluster's cards run {request.release}, so this one "
                f"does too (kubernetes_release in cluster.yaml moves the cluster on)")
    else:
        version = versions[0]
    release = _upstream(version)
    if _valid(key_dir / release):
        return release, _listed(key_dir / release)
    if (key_dir / release).exists():
        log(f"the cached packages of Kubernetes {release} do not match their SHA-256s: downloading them again")
    log(f"resolving and downloading the packages for Kubernetes {release} ({tree.arch}) with apt")
    debs = tree.download([*request.runtime_packages, *(f"{name}={version}" for name in KUBE_PACKAGES)])
    return release, _store(debs, work, key_dir / release)


def _store(debs: list[Deb], work: Path, final: Path) -> dict[str, Path]:
    """The downloaded `debs`, their data decompressed (debs.py), listed with their digests and published in the cache
    at `final`."""
    staged = work / "packages"
    staged.mkdir()
    listed = {}
    for deb in debs:
        shutil.move(str(deb.path), staged / deb.path.name)
        decompress_data(staged / deb.path.name)
        listed[deb.path.name] = _digest(staged / deb.path.name)
    _write_json(staged / "packages.json", listed)
    final.parent.mkdir(parents=True, exist_ok=True)
    _publish(staged, final)
    return _listed(final)


def _images(request: BundleRequest, release: str, arch: str, cache: Path, work: Path,
            log: Callable[[str], None]) -> dict[str, tuple[Path, str]]:
    """{reference: (cached archive, manifest digest)} of every image the node needs, fetched when not cached."""
    references = [*oci.kubeadm_images(release, request.control_plane), *request.manifest_images,
                  *request.extra_images]
    cache.mkdir(parents=True, exist_ok=True)
    found = {}
    for reference in dict.fromkeys(str(oci.parse_reference(ref)) for ref in references):
        archive = cache / oci.archive_name(reference, arch)
        sidecar = archive.with_name(archive.name + ".json")
        if not (archive.is_file() and sidecar.is_file() and _matches(archive, _read_json(sidecar).get("file"))):
            damaged = " again: the cached copy does not match its SHA-256" if archive.exists() else ""
            log(f"fetching {reference} ({arch}){damaged}")
            staged = work / archive.name
            digest = oci.fetch(reference, arch, staged, request.registry_mirrors)
            _write_json(work / sidecar.name, {"reference": reference, "digest": digest, "file": _digest(staged)})
            os.replace(staged, archive)
            os.replace(work / sidecar.name, sidecar)
        found[reference] = (archive, str(_read_json(sidecar)["digest"]))
    return found


def _combined(archives: dict[str, tuple[Path, str]], cache: Path, work: Path) -> Path:
    """The cached archive holding every image of `archives` (images.combine: one import at first boot), made when
    missing or damaged; named by the archives' own digests, so a set made once serves every build that needs it."""
    parts = [path for path, _ in archives.values()]
    key = hashlib.sha256(json.dumps([_listed_digest(path)["sha256"] for path in parts]).encode()).hexdigest()[:24]
    combined = cache / f"images-{key}.oci.tar"
    sidecar = combined.with_name(combined.name + ".json")
    if not (sidecar.is_file() and _matches(combined, _read_json(sidecar).get("file"))):
        cache.mkdir(parents=True, exist_ok=True)
        staged = work / combined.name
        oci.combine(parts, staged)
        _write_json(work / sidecar.name, {"file": _digest(staged)})
        os.replace(staged, combined)
        os.replace(work / sidecar.name, sidecar)
    return combined


def _release_assets(request: BundleRequest, cache: Path, work: Path, fetch: Fetch | None,
                    log: Callable[[str], None]) -> dict[str, Path]:
    """{asset file name: cached file} of the release path's assets, each at CACHE/bundles/release/SHA256/NAME and
    fetched when missing or damaged: a download whose SHA-256 is not the one the build recorded is refused."""
    found = {}
    for name, (url, sha256) in request.release_assets.items():
        path = cache / sha256 / name
        if not (path.is_file() and _digest(path)["sha256"] == sha256):
            assert fetch is not None, "a bundle of release assets is made with the build's client"
            log(f"fetching {name} from {url}")
            data = fetch(url, MAX_RELEASE_ASSET, "release file")
            if data is None:
                raise UserError(f"{url}: not found, although its checksum is published there: try again later")
            if hashlib.sha256(data).hexdigest() != sha256:
                raise UserError(f"{url}: not the file whose SHA-256 is published beside it: refusing it (try again, "
                                "or check the mirror in package_mirrors)")
            staged = work / name
            staged.write_bytes(data)
            path.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staged, path)
        found[name] = path
    return found


def _tree_key(tree: AptTree, request: BundleRequest) -> str:
    """What decides the closure: the apt tree's inputs (status, sources, keys, pins, architecture) and the packages.
    pi-image's own kube pin is left out: it only picks the release, which names the entry's subdirectory (a card
    stamped at flash time, whose pin names the release its image recorded, finds its image's bundle)."""
    digest = hashlib.sha256(json.dumps([request.minor, sorted(request.runtime_packages), tree.arch,
                                        DEB_FORMAT]).encode())
    for path in sorted(p for p in tree.root.rglob("*") if p.is_file()):
        name = str(path.relative_to(tree.root))
        counts = name.split("/")[0] in ("etc", "keys") or name == DPKG_STATUS.lstrip("/")
        if counts and name != KUBE_PIN.lstrip("/"):
            # sources name their keyrings' copies by path: the tree's own place must not count
            digest.update(name.encode() + b"\0" + path.read_bytes().replace(str(tree.root).encode(), b"TREE"))
    return digest.hexdigest()[:24]


def _digest(path: Path) -> dict[str, Any]:
    sha = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            sha.update(chunk)
    return {"sha256": sha.hexdigest(), "size": path.stat().st_size}


def _matches(path: Path, recorded: Any) -> bool:
    """True if `path` still has the size and SHA-256 recorded for it."""
    return isinstance(recorded, dict) and path.is_file() and path.stat().st_size == recorded.get("size") \
        and _digest(path)["sha256"] == recorded.get("sha256")


def _valid(directory: Path) -> bool:
    """A cached closure whose every .deb matches packages.json."""
    listed = _read_json(directory / "packages.json")
    return bool(listed) and all(_matches(directory / name, recorded) for name, recorded in listed.items())


def _listed_digest(path: Path) -> dict[str, Any]:
    """The SHA-256 and size recorded for a cached file (checked when it was taken from the cache)."""
    record = _read_json(path.with_name("packages.json")).get(path.name) if path.suffix == ".deb" else \
        _read_json(path.with_name(path.name + ".json")).get("file")
    assert isinstance(record, dict), f"{path} was taken from the cache without its record"
    return {"sha256": record["sha256"], "size": record["size"]}


def _listed(directory: Path) -> dict[str, Path]:
    return {name: directory / name for name in _read_json(directory / "packages.json")}


def _deb_fields(name: str) -> dict[str, str]:
    package, version, _ = name[:-len(".deb")].split("_")
    return {"package": package, "version": version.replace("%3a", ":")}


def _upstream(version: str) -> str:
    """The Kubernetes release of a kube package's Debian version: "1.31.4-1.1" -> "1.31.4"."""
    return version.split("-")[0].split(":")[-1]


def _release_key(release: str) -> tuple[int, ...]:
    return tuple(int(part) for part in release.split(".") if part.isdigit())


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_json(path: Path, data: dict[str, Any]) -> None:
    with open(path, "w") as handle:
        json.dump(data, handle, indent=2, sort_keys=True)
        handle.flush()
        os.fsync(handle.fileno())


def _publish(staged: Path, final: Path) -> None:
    """Rename a complete staged directory into the cache (another build may have published it first)."""
    try:
        os.rename(staged, final)
    except OSError:
        if not _valid(final):
            shutil.rmtree(final, ignore_errors=True)
            os.rename(staged, final)


def _remove_dead_work(cache: Path) -> None:
    """Work directories of builds that died (kill -9): their process is gone."""
    for work in cache.glob(".work-*"):
        pid = work.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(work, ignore_errors=True)
