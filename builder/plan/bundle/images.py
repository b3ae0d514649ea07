"""The container images a node runs before anything is deployed, and fetching them for its platform with skopeo.

What kubeadm pulls is data (`data/kubeadm-images.yaml`, with its source), flannel's images are read from the manifest
the control plane applies (its tags can differ from its release), and a profile's `extra_images` add the user's own.
Each image is copied by `skopeo copy --override-os/arch` into an OCI archive whose reference annotation is the full
image name, so that `ctr images import` on the node files it under the name kubeadm and the kubelet ask for.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tarfile
from pathlib import Path
from typing import Any

import yaml

from ... import DATA_DIR
from ...config.references import DIGEST, mirror_host, parse_reference
from ...errors import UserError
from ...run import run

IMAGES_DATA = DATA_DIR / "kubeadm-images.yaml"
USER_IMAGES_ENV = "PI_IMAGE_KUBEADM_IMAGES"
CONTROL_PLANE_COMPONENTS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler")
# dpkg's architecture -> the OCI platform of its images (32-bit Raspberry Pi OS is armhf: linux/arm/v7)
PLATFORMS = {"arm64": ("arm64", ""), "amd64": ("amd64", ""), "armhf": ("arm", "v7")}
MAX_ARCHIVE_INDEX = 1 << 20
SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's, where PyYAML has it: 8x as fast

def _versions_table() -> dict[str, Any]:
    """The shipped table with the user's file (PI_IMAGE_KUBEADM_IMAGES or ~/.config/pi-image/kubeadm-images.yaml)
    merged over it, minor by minor."""
    table = yaml.load(IMAGES_DATA.read_text(), Loader=SAFE_LOADER)
    user = Path(os.environ.get(USER_IMAGES_ENV) or Path.home() / ".config" / "pi-image" / "kubeadm-images.yaml")
    if user.is_file():
        try:
            extra = yaml.load(user.read_text(), Loader=SAFE_LOADER) or {}
        except (OSError, yaml.YAMLError) as err:
            raise UserError(f"{user}: cannot read it as YAML: {err}") from None
        if not isinstance(extra, dict) or not isinstance(extra.get("minors", {}), dict):
            raise UserError(f"{user}: expected `minors: {{\"1.31\": [{{from: 5, to: 9, etcd: ...}}]}}` as in "
                            f"{IMAGES_DATA}")
        for minor, entries in extra.get("minors", {}).items():
            if not isinstance(entries, list) or not all(_is_range(entry) for entry in entries):
                raise UserError(f"{user}: minors.{minor} must be a list of {{from: N, to: N, pause: ..., coredns: "
                                f"..., etcd: ...}} (whole numbers from <= to), as in {IMAGES_DATA}")
            table["minors"][str(minor)] = list(table["minors"].get(str(minor), [])) + entries
    return table


def _is_range(entry: Any) -> bool:
    """One entry of the table: a range of patch releases and the tags it sets."""
    return (isinstance(entry, dict) and all(isinstance(entry.get(key), int) for key in ("from", "to"))
            and entry["from"] <= entry["to"] and all(isinstance(entry.get(key, ""), str)
                                                     for key in ("pause", "coredns", "etcd")))


def kubeadm_versions(release: str, table: dict[str, Any] | None = None) -> dict[str, str]:
    """{pause, coredns, etcd} tags kubeadm of `release` ("1.31.4") uses, from `table` (default: the versions table,
    read now); UserError for a release not recorded."""
    minor, _, patch = release.rpartition(".")
    entries = (_versions_table() if table is None else table)["minors"].get(minor, [])
    found: dict[str, str] = {}
    covered = False
    for entry in sorted(entries, key=lambda entry: int(entry["from"])):  # each range overrides what it names
        if int(entry["from"]) <= int(patch):
            found.update({key: str(entry[key]) for key in ("pause", "coredns", "etcd") if key in entry})
            covered = covered or int(patch) <= int(entry["to"])
    if not covered or len(found) != 3:
        raise UserError(f"the images of kubeadm v{release} are not recorded in {IMAGES_DATA.name} (etcd and coredns "
                        f"change within patch releases): add `minors: {{\"{minor}\": [{{from: {patch}, to: {patch}, "
                        "pause: ..., coredns: ..., etcd: ...}]}` to ~/.config/pi-image/kubeadm-images.yaml from "
                        f"`kubeadm config images list --kubernetes-version v{release}`")
    return found


def kubeadm_images(release: str, control_plane: bool) -> list[str]:
    """What `kubeadm config images list --kubernetes-version v{release}` prints, for the images a node of this role
    runs: a control plane all of them; a worker kube-proxy, pause and coredns (it may be scheduled there)."""
    table = _versions_table()
    registry, tags = table["registry"], kubeadm_versions(release, table)
    components = (*CONTROL_PLANE_COMPONENTS, "kube-proxy") if control_plane else ("kube-proxy",)
    images = [f"{registry}/{name}:v{release}" for name in components]
    images += [f"{registry}/coredns/coredns:{tags['coredns']}", f"{registry}/pause:{tags['pause']}"]
    if control_plane:
        images.append(f"{registry}/etcd:{tags['etcd']}")
    return images


def pause_image(version: str) -> str | None:
    """kubeadm's pause image for a release ("1.31.4") or a minor ("1.31": its newest recorded release), or None for
    a minor not recorded: containerd's sandbox image is set to it, so that one image serves both."""
    table = _versions_table()
    if version.count(".") == 1:
        entries = table["minors"].get(version)
        if not entries:
            return None
        version = f"{version}.{max(int(entry['to']) for entry in entries)}"
    return f"{table['registry']}/pause:{kubeadm_versions(version, table)['pause']}"


def manifest_images(manifest: bytes) -> list[str]:
    """Every container image a Kubernetes manifest (a multi-document YAML) names, in order, once each."""
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "image" and isinstance(value, str):
                    found.append(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    for document in yaml.safe_load_all(manifest):
        walk(document)
    return list(dict.fromkeys(found))


def platform(dpkg_arch: str) -> tuple[str, str]:
    """(architecture, variant) of the OCI images for a dpkg architecture; UserError for one with no images."""
    if dpkg_arch not in PLATFORMS:
        raise UserError(f"the image's architecture is {dpkg_arch}, for which Kubernetes publishes no images "
                        f"(there are images for {', '.join(PLATFORMS)}): --offline cannot bundle them")
    return PLATFORMS[dpkg_arch]


def archive_name(reference: str, dpkg_arch: str) -> str:
    """A file name for an image's archive: readable, and unique per reference and platform."""
    slug = re.sub(r"[^A-Za-z0-9.]+", "_", reference.split("/", 1)[-1])[:60]
    return f"{slug}-{hashlib.sha256(f'{reference}|{dpkg_arch}'.encode()).hexdigest()[:12]}.oci.tar"


def fetch(reference: str, dpkg_arch: str, dest: Path, mirrors: dict[str, str]) -> str:
    """Copy `reference` for linux/`dpkg_arch` into the OCI archive `dest` (from its registry's mirror when one is
    set); return the manifest digest the archive holds. skopeo verifies every blob's digest as it copies."""
    ref = parse_reference(reference)
    arch, variant = platform(dpkg_arch)
    copied = dest.with_name(dest.name + ".skopeo")
    source, insecure = str(ref), False
    if ref.registry in mirrors:
        host, insecure = mirror_host(mirrors[ref.registry])
        source = ref.on(host)
    argv = ["skopeo", "--override-os", "linux", "--override-arch", arch, *(["--override-variant", variant]
                                                                          if variant else []),
            "copy", "--retry-times", "2", "--preserve-digests", *(["--src-tls-verify=false"] if insecure else []),
            f"docker://{source}", f"oci-archive:{copied}:{ref}"]
    try:
        run(argv)
        repack(copied, dest)
    except UserError as err:
        where = f" through the mirror {mirrors[ref.registry]}" if ref.registry in mirrors else ""
        raise UserError(f"cannot fetch the image {ref} for linux/{arch}{where}: {err} — check the network or set "
                        f"registry_mirrors ({ref.registry}: URL) in cluster.yaml or the profile") from None
    finally:
        copied.unlink(missing_ok=True)
    return archive_digest(dest)


def repack(source: Path, dest: Path) -> None:
    """`source` (skopeo's OCI archive) as a tar of the same content with nothing of when or by whom it was made:
    members sorted by name, owner root, mtime 0, modes 0644/0755. The same image gives the same bytes, so that a
    card's bundle is reproducible even when an image is fetched again."""
    try:
        with tarfile.open(source) as tar, tarfile.open(dest, "w", format=tarfile.PAX_FORMAT) as out:
            for member in sorted(tar.getmembers(), key=lambda m: m.name):
                if not (member.isfile() or member.isdir()):
                    raise UserError(f"{source}: unexpected member {member.name!r} in an OCI archive")
                clean = tarfile.TarInfo(member.name)
                clean.type, clean.size = member.type, member.size if member.isfile() else 0
                clean.mode = 0o644 if member.isfile() else 0o755
                out.addfile(clean, tar.extractfile(member) if member.isfile() else None)
    except (OSError, tarfile.TarError) as err:
        raise UserError(f"{source}: not an OCI archive ({err})") from None


def combine(archives: list[Path], dest: Path) -> None:
    """One OCI archive holding the images of every archive in `archives` (their index entries in that order, each
    blob once), so that the node imports them all with one `ctr images import` (each ctr run costs a second or two of
    a small board's first boot). Written as `repack` writes: the same archives give the same bytes."""
    manifests: list[Any] = []
    blobs: dict[str, tuple[tarfile.TarFile, tarfile.TarInfo]] = {}
    tars = []
    try:
        for archive in archives:
            tar = tarfile.open(archive)
            tars.append(tar)
            for member in tar.getmembers():
                if member.isfile() and member.name.startswith("blobs/"):
                    blobs.setdefault(member.name, (tar, member))  # named by its digest: the same name, the same bytes
            index = tar.extractfile("index.json")
            manifests += json.loads(index.read(MAX_ARCHIVE_INDEX)).get("manifests", []) if index else []
        files = {name: (tar.extractfile(member), member.size) for name, (tar, member) in blobs.items()}
        index_json = json.dumps({"schemaVersion": 2, "manifests": manifests}, separators=(",", ":")).encode()
        layout = json.dumps({"imageLayoutVersion": "1.0.0"}).encode()
        with tarfile.open(dest, "w", format=tarfile.PAX_FORMAT) as out:
            for name in ("blobs", "blobs/sha256"):
                directory = tarfile.TarInfo(name)
                directory.type, directory.mode = tarfile.DIRTYPE, 0o755
                out.addfile(directory)
            for name, (handle, size) in sorted(files.items()):
                _add_file(out, name, handle, size)
            _add_file(out, "index.json", io.BytesIO(index_json), len(index_json))
            _add_file(out, "oci-layout", io.BytesIO(layout), len(layout))
    except (OSError, tarfile.TarError, ValueError, KeyError, AttributeError) as err:  # AttributeError: not an object
        raise UserError(f"cannot put the bundle's images into one archive ({err}): run `pi-image cache prune` and "
                        "build again") from None
    finally:
        for tar in tars:
            tar.close()


def _add_file(out: tarfile.TarFile, name: str, handle: Any, size: int) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode = size, 0o644
    out.addfile(info, handle)


def archive_digest(archive: Path) -> str:
    """The manifest digest an OCI archive's index.json names (the one image skopeo wrote)."""
    try:
        with tarfile.open(archive) as tar:
            member = tar.extractfile("index.json")
            data = json.loads(member.read(MAX_ARCHIVE_INDEX)) if member else {}
    except (OSError, tarfile.TarError, ValueError, KeyError) as err:
        raise UserError(f"{archive}: not an OCI archive ({err})") from None
    manifests = data.get("manifests") or [{}]
    digest = str(manifests[0].get("digest", ""))
    if not DIGEST.match(digest):
        raise UserError(f"{archive}: its index.json names no sha256 manifest digest")
    return digest
