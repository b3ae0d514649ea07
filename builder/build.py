"""`pi-image build`: plan the edits against the (read-only) base, then make the output atomically.

    base (never written) --plan--> ops --sparse copy--> temp output --apply+verify+fsck--> rename to OUTPUT

Anything that fails, or an interruption, removes the temporary output: either a complete, checked image appears
at OUTPUT, or nothing does.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import __version__
from .cluster import load_cluster, local_node_config, node_config
from .copy import chunk_digest, sha256_sparse, size_on_disk, sparse_copy
from .errors import UserError
from .fsck import check_partition
from .image import DirectoryFilesystem, DiskImage, open_medium
from .image.inputs import cached_sha256, raw_image
from .kubekey import kube_keyring
from .overlays import find_overlay
from .plan import FileOp, Plan, apply
from .profiles import Profile, load_profile
from .run import run
from .steps import BuildContext, NodeIdentity, make_plan
from .steps.layers import overlay_names
from .targets import Target, detect

MANIFEST_PATH = "/etc/pi-image/build.json"
COMPRESSORS = {".zst": ["zstd", "-q", "-T0", "-f"], ".xz": ["xz", "-T0", "-f", "-k"]}


@dataclass
class BuildRequest:
    """What the user asked for (the CLI's options)."""

    profile: str | None = None  # default: the node's profile in the inventory
    base: str | None = None
    output: Path | None = None
    cluster: Path | None = None
    node: str | None = None
    sets: dict[str, Any] = field(default_factory=dict)
    overlays: list[str] = field(default_factory=list)
    kube_key: Path | None = None
    force: bool = False
    in_place: bool = False
    sha256: bool = False  # full SHA-256 of a raw output (compressed outputs always get one)


@dataclass
class BuildResult:
    """What a build did (or, for a dry run, would do)."""

    target: Target
    profile: Profile
    node: NodeIdentity
    ops: list[FileOp]
    changed: list[FileOp] = field(default_factory=list)
    output: Path | None = None
    manifest: dict[str, Any] = field(default_factory=dict)


def prepare(request: BuildRequest) -> BuildContext:
    """Load the profile, node and base; detect the target; plan every edit. Nothing is written."""
    profile = load_profile(_profile_name(request), request.sets)
    node, config = _node(request, profile)
    base = request.base or profile["base"]
    if not base:
        raise UserError(f"profile '{profile.name}' names no base image: pass --base IMAGE")
    if not Path(base).exists():
        raise UserError(f"base '{base}' is not a file or directory (the image catalog is not available yet): "
                        f"download the image and pass --base PATH")
    target = detect(open_medium(Path(base)))
    if profile["target"] and profile["target"] != target.name:
        raise UserError(f"profile '{profile.name}' is for {profile['target']} but {base} is {target.name}: "
                        f"pick a profile for {target.name} (see `pi-image profiles`)")
    keyring = kube_keyring(profile["kubernetes_version"], request.kube_key)
    ctx = BuildContext(target, profile, node, config, keyring, list(request.overlays))
    make_plan(ctx)
    return ctx


def _profile_name(request: BuildRequest) -> str:
    """--profile, else the profile the inventory gives the node."""
    if request.profile:
        return request.profile
    if request.cluster and request.node:
        return load_cluster(request.cluster).node(request.node).profile
    raise UserError("pass --profile NAME (or --cluster DIR --node NAME to use the node's profile from the inventory)")


def _node(request: BuildRequest, profile: Profile) -> tuple[NodeIdentity, dict[str, Any]]:
    """The node's identity and its firstboot config, from the inventory (--cluster --node) or the profile."""
    if request.cluster:
        if not request.node:
            raise UserError("--cluster needs --node NAME (or --all)")
        cluster = load_cluster(request.cluster)
        entry = cluster.node(request.node)
        node = NodeIdentity(entry.name, entry.role, entry.address, entry.mac, cluster.node_subnet)
        return node, node_config(request.cluster, entry.name, profile["runtime"])
    name = request.node or profile["hostname"] or profile.name
    node = NodeIdentity(name, profile["role"])
    return node, local_node_config(name, profile["kubernetes_version"], profile["runtime"], profile["role"])


def build(request: BuildRequest) -> BuildResult:
    """Make the output image (or edit a directory target); see the module docstring."""
    ctx = prepare(request)
    base_path = Path(request.base or ctx.profile["base"])
    output = request.output or Path(f"{ctx.node.name}.img")
    if isinstance(ctx.target.medium, DirectoryFilesystem):
        return _build_tree(ctx, base_path, output, request)
    if output.exists() and not request.force:
        raise UserError(f"{output} exists: pass --force to replace it")
    raw_base = raw_image(base_path)
    if output.resolve() in (base_path.resolve(), raw_base.resolve()):
        raise UserError(f"{output} is the base image: pick another --output (the base is never written)")
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.parent / f".{output.name}.pi-image-{os.getpid()}.tmp"
    try:
        _check_space(raw_base, output.parent)
        sparse_copy(raw_base, tmp)
        image = DiskImage(tmp, writable=True, fake_time=_epoch(raw_base))
        target = detect(image)
        manifest = _manifest(ctx, base_path)
        ops = ctx.plan.ops + [_manifest_op(manifest)]
        changed = apply(Plan(ops), target)
        image.commit()
        for partition in image.partitions:
            if partition.fs and any(target.filesystem(op.fs) is image.filesystem(partition) for op in changed):
                check_partition(image, partition)
        final_tmp = _compress(tmp, output)
        manifest["output"] = _output_digests(final_tmp, output, request.sha256 or final_tmp != tmp)
        os.replace(final_tmp, output)
    finally:
        for leftover in (tmp, tmp.with_name(tmp.name + output.suffix)):
            leftover.unlink(missing_ok=True)
    _write_json(output.with_name(output.name + ".json"), manifest)
    return BuildResult(ctx.target, ctx.profile, ctx.node, ctx.plan.ops, changed, output, manifest)


def _build_tree(ctx: BuildContext, base: Path, output: Path, request: BuildRequest) -> BuildResult:
    """A directory target: edit a copy of the tree at OUTPUT, or the tree itself with --in-place."""
    if request.in_place:
        dest = base
    else:
        if output.exists() and not request.force:
            raise UserError(f"{output} exists: pass --force to replace it (or --in-place to edit {base})")
        dest = output.parent / f".{output.name}.pi-image-{os.getpid()}.tmp"
        run(["cp", "-a", "--reflink=auto", str(base), str(dest)])  # keeps owners, modes, links, holes
    try:
        target = detect(DirectoryFilesystem(dest, writable=True))
        manifest = _manifest(ctx, base)
        changed = apply(Plan(ctx.plan.ops + [_manifest_op(manifest)]), target)
        target.root.commit()
        if not request.in_place:
            if output.exists():
                shutil.rmtree(output)
            os.replace(dest, output)
    finally:
        if not request.in_place and dest.exists():
            shutil.rmtree(dest)
    final = dest if request.in_place else output
    _write_json(final.with_name(final.name + ".json"), manifest)
    return BuildResult(ctx.target, ctx.profile, ctx.node, ctx.plan.ops, changed, final, manifest)


def _output_digests(path: Path, output: Path, full: bool) -> dict[str, Any]:
    """Size and digests of the finished output: the 4 MiB-chunk digest always, the plain SHA-256 if `full`.

    The plain SHA-256 of a raw image costs CPU for every byte of its holes (~3 s per 4 GiB here), most of a build;
    the chunk digest costs only what the image holds (see builder.copy).
    """
    digests: dict[str, Any] = {"path": output.name, "size": path.stat().st_size, "chunk_sha256": chunk_digest(path)}
    if full:
        digests["sha256"] = sha256_sparse(path)
    return digests


def _check_space(raw_base: Path, directory: Path) -> None:
    """Refuse early when the output's filesystem cannot hold the copy."""
    st = os.statvfs(directory)
    needed, free = size_on_disk(raw_base), st.f_bavail * st.f_frsize
    if needed > free:
        raise UserError(f"not enough space in {directory}: the image needs {needed >> 20} MiB, {free >> 20} MiB free")


def _epoch(base: Path) -> int:
    """Timestamps for everything written: SOURCE_DATE_EPOCH if set, else the base image's mtime."""
    value = os.environ.get("SOURCE_DATE_EPOCH")
    return int(value) if value and value.isdigit() else int(base.stat().st_mtime)


def _compress(raw: Path, output: Path) -> Path:
    """`raw` compressed as OUTPUT's suffix asks (.zst / .xz), beside it; or `raw` itself."""
    tool = COMPRESSORS.get(output.suffix)
    if tool is None:
        return raw
    run([*tool, str(raw)])
    return raw.with_name(raw.name + output.suffix)


def _manifest(ctx: BuildContext, base: Path) -> dict[str, Any]:
    """How this image was made: inputs with hashes, and every file the plan writes (with its hash)."""
    return {
        "pi_image_version": __version__,
        "target": ctx.target.name,
        "node": ctx.node.name,
        "base": {"path": base.name, "sha256": _input_sha256(base)},
        "profile": {"name": ctx.profile.name, "sha256": {p.name: _sha(p.read_bytes()) for p in ctx.profile.sources},
                    "values": ctx.profile.values},
        "overlays": {name: _tree_sha(find_overlay(name).path) for name in overlay_names(ctx)},
        "files": [op.describe() for op in ctx.plan.ops],
    }


def _manifest_op(manifest: dict[str, Any]) -> FileOp:
    inside = {k: v for k, v in manifest.items() if k != "output"}
    data = (json.dumps(inside, indent=2, sort_keys=True, default=str) + "\n").encode()
    return FileOp("write", "root", MANIFEST_PATH, "manifest", content=data, mode=0o644)


def _input_sha256(base: Path) -> str | None:
    return None if base.is_dir() else cached_sha256(base)


def _tree_sha(path: Path) -> str:
    digest = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file() or p.is_symlink()):
        digest.update(f.relative_to(path).as_posix().encode() + b"\0")
        digest.update(os.readlink(f).encode() if f.is_symlink() else f.read_bytes())
    return digest.hexdigest()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)
