"""--offline: the node's packages and container images on its card (builder/bundle), so first boot needs no network
but the cluster's (a control plane of several also carries kube-vip's image). The apt pin moves to the exact release
the bundle holds; node.json says which. A node installed from the upstream release (kube_install: release) carries
the release's five files instead of the kube packages."""

from __future__ import annotations

import dataclasses
import json
import sys
from typing import Any

from firstboot.bundle import BUNDLE_DIR, BUNDLE_MANIFEST, EMPTY_SOURCES

from ...errors import UserError
from ..bundle import unpack
from ..bundle.images import manifest_images
from ..bundle.make import Bundle, BundleRequest, make_bundle
from ..cni import FLANNEL_MANIFEST
from ..kube_vip import kube_vip_image
from ..overlays import render_overlay
from ..release import host_url
from ..users import owner_ids
from .context import BuildContext
from .layers import KUBE_REPO, overlays

STEP = "bundle"


def plan(ctx: BuildContext) -> None:
    """Make (or take from the cache) the node's bundle and write it under BUNDLE_DIR."""
    if not ctx.profile["offline"]:
        return
    if ctx.profile["runtime"] != "containerd":
        raise UserError(f"--offline imports the node's images into containerd, and this node runs "
                        f"{ctx.profile['runtime']}: use runtime: containerd, or build without --offline")
    if not ctx.target.carries_bundle:
        _say(f"{ctx.node.name}: a {ctx.target.name} node is set up from a seed ISO, which cannot carry the offline "
             "bundle: it installs its packages and pulls its images from the network (registry_mirrors apply)")
        return
    if not ctx.fetch:
        _say("--dry-run: the build would bundle the node's packages and images under " + BUNDLE_DIR)
        return
    unpacked, release = _unpacked_already(ctx)
    request = BundleRequest(
        minor=ctx.profile["kubernetes_version"], release=release or ctx.kubernetes_release, unpacked=unpacked,
        runtime_packages=ctx.node_config.runtime_packages,
        control_plane=ctx.node.role == "control-plane",
        manifest_images=tuple(manifest_images(FLANNEL_MANIFEST.read_bytes())) + _kube_vip_images(ctx),
        extra_images=tuple(ctx.profile["extra_images"]), registry_mirrors=dict(ctx.profile["registry_mirrors"]),
        package_mirrors=dict(ctx.profile["package_mirrors"]),
        source_placeholders=dict(ctx.target.apt_source_placeholders), release_assets=_release_assets(ctx))
    bundle = make_bundle(ctx.view, request, ctx.base_name or str(ctx.base), log=_say, fetch=ctx.download)
    if not unpacked:
        bundle = _unpack(ctx, bundle)
    for name, path in sorted(bundle.files.items()):
        ctx.write(STEP, "root", f"{BUNDLE_DIR}/{name}", path.read_bytes())
    ctx.write(STEP, "root", f"{BUNDLE_DIR}/{BUNDLE_MANIFEST}", json.dumps(bundle.manifest, indent=2) + "\n")
    ctx.mkdir(STEP, f"{BUNDLE_DIR}/{EMPTY_SOURCES}")
    ctx.write(STEP, "root", f"{BUNDLE_DIR}/{EMPTY_SOURCES}/sources.list", "# empty: apt installs the bundle's files\n")
    ctx.bundle = bundle
    ctx.node_config = ctx.node_config.replace(kubernetes_release=bundle.release)
    if ctx.kubernetes_release != bundle.release:
        ctx.kubernetes_release = bundle.release
        users, groups = owner_ids(ctx.view)
        # the apt source and the pin, rendered again with the release the bundle holds
        overlay = next(overlay for overlay in overlays(ctx) if overlay.name == KUBE_REPO)
        render_overlay(overlay, ctx.template_context(), ctx.plan, ctx.view, users, groups)


def _unpacked_already(ctx: BuildContext) -> tuple[tuple[dict[str, Any], ...], str | None]:
    """The package entries and release of the bundle.json of a bundle the build host already unpacked into this
    image (stamping an image built with --offline), else ((), None)."""
    try:
        manifest = json.loads(ctx.view.read_text("root", f"{BUNDLE_DIR}/{BUNDLE_MANIFEST}") or "{}")
        packages = manifest.get("packages") or []
        if all(isinstance(entry, dict) and entry.get("unpacked") is True for entry in packages) \
                and isinstance(manifest.get("kubernetes"), str) \
                and unpack.already_unpacked(ctx.view, [(entry.get("package"), entry.get("version"))
                                                       for entry in packages]):
            return tuple(packages), manifest["kubernetes"]
    except (ValueError, AttributeError):
        pass  # not a bundle this builder wrote: the bundle is made as for any image
    return (), None


def _unpack(ctx: BuildContext, bundle: Bundle) -> Bundle:
    """The bundle with its .debs unpacked into the image by the host's dpkg (bundle/unpack.py), so that the node only
    configures them; as it is, with the reason said, when they cannot be."""
    debs = {name: path for name, path in bundle.files.items() if name.startswith("debs/")}
    if not debs:
        return bundle
    entries = {entry["file"]: entry for entry in bundle.manifest["packages"]}
    reason = unpack.why_not(ctx.view, {entries[name]["package"]: path for name, path in debs.items()})
    if reason is not None:
        _say(f"the bundle's packages go on the card as .debs, unpacked at first boot: {reason}")
        return bundle
    users, groups = owner_ids(ctx.view)
    changes = unpack.unpack(ctx.view, list(debs.values()), bundle.manifest["architecture"], users, groups)
    for path, (mode, uid, gid) in sorted(changes.directories.items()):
        ctx.mkdir(STEP, path, mode, uid, gid)
    for path, (content, mode, uid, gid) in sorted(changes.files.items()):
        ctx.write(STEP, "root", path, content, mode, uid, gid)
    for path, target in sorted(changes.links.items()):
        ctx.symlink(STEP, path, target)
    packages = [{"package": entry["package"], "version": entry["version"], "unpacked": True}
                for entry in bundle.manifest["packages"]]
    files = {name: path for name, path in bundle.files.items() if name not in debs}
    return dataclasses.replace(bundle, files=files, manifest={**bundle.manifest, "packages": packages},
                               unpacked=changes.size)


def _kube_vip_images(ctx: BuildContext) -> tuple[str, ...]:
    """kube-vip's image for a control plane of several (its static pod: builder/plan/steps/kube_vip.py), else none."""
    settings = ctx.node_config.control_plane
    return (kube_vip_image(),) if settings is not None and settings.several else ()


def _release_assets(ctx: BuildContext) -> dict[str, tuple[str, str]]:
    """{file name: (URL this host fetches it from, SHA-256)} of the release's assets node.json names; none on the
    packages path."""
    release = ctx.node_config.release
    if not ctx.from_release or release is None or ctx.kubernetes_release is None:
        return {}
    mirrors = dict(ctx.profile["package_mirrors"])
    return {name: (host_url(url, mirrors), release.sha256[name])
            for name, url in release.assets(ctx.kubernetes_release)}


def _say(line: str) -> None:
    print(f"pi-image: {line}", file=sys.stderr)
