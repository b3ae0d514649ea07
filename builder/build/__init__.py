"""`pi-image build`: plan the edits against the (read-only) base, then make the output atomically.

    base (never written) --plan--> ops ------------------------> temp output --apply+verify+fsck--> rename to OUTPUT
                         --sparse copy (meanwhile, a thread)--^

A cluster build has one step more, before the edits are applied: it saves its recipe (how the image was made) in the
cluster directory, and the manifest names it, so that `pi-image flash` can stamp a node onto the image later.
Anything that fails, or an interruption, removes the temporary output: either a complete, checked image appears
at OUTPUT, or nothing does.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from firstboot.nodeconfig import ConfigError, NodeConfig, ReleaseSettings

from .. import __version__
from ..bases.catalog import default_base, resolve_base
from ..bases.download import Failed, NotFound, get_small
from ..bases.kubekey import kube_keyring
from ..cluster import (
    Cluster,
    Node,
    check_writable,
    load_cluster,
    local_node_config,
    master_files,
    node_config,
    record_generation,
    record_release,
    same_profile,
)
from ..config import values
from ..config.profiles import Profile, check_value, load_profile
from ..config.runtimes import RELEASE_DEPENDENCIES, runtime_packages
from ..errors import UserError
from ..image import DirectoryFilesystem, DiskImage, open_medium
from ..image.bmap import write_bmap
from ..image.copy import BackgroundCopy, chunk_digest, sha256_sparse, size_on_disk
from ..image.dirty import output_chunk_digest, track_writes, written_ranges
from ..image.ext4 import Ext4Filesystem
from ..image.fsck import check_partition
from ..image.grow import grow_root
from ..image.inputs import cached_sha256, raw_image
from ..image.usage import usage_map
from ..outputs import (
    COMPRESSORS,
    check_image_output,
    check_tree_output,
    create_private,
    publish,
    remove_stale_temporaries,
    swap_in_tree,
    temporary,
)
from ..plan import FileOp, Plan, apply
from ..plan.kubelet import kubelet_settings
from ..plan.release import RELEASE, install_method, release_arch, resolve_release
from ..plan.steps import BuildContext, NodeIdentity, make_plan
from ..plan.steps.layers import overlays
from ..progress import progress
from ..run import run, run_filter
from ..targets import Target, detect, targets_of
from ..targets.x86 import SEED_ISO_COMMAND, UbuntuX86
from .recipes import Recipe, save_recipe

MANIFEST_PATH = "/etc/pi-image/build.json"
ROOM_MARGIN = 256 << 20  # free space an offline node keeps for its first boot (logs, containerd's unpacked layers)


@dataclass(frozen=True, kw_only=True)
class Stamp:
    """What an image's own build used, when `pi-image flash` stamps a node onto it (from its recipe,
    builder.build.recipes): with the same apt keyring and base record (and time: BuildRequest.epoch) the card gets
    the bytes a build of that node would have."""

    keyring: bytes | None
    base: dict[str, Any]
    release: dict[str, Any] | None = None  # node.json's `release` of the image: stamping fetches nothing


@dataclass(kw_only=True)
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
    ssh_keys: list[str] = field(default_factory=list)  # public key lines from --ssh-key files
    password_hash: str | None = None  # from --password / --password-file, hashed on the host
    no_login: bool = False  # the admin user is meant to have no way in
    replace_overlays: bool = False  # --overlay directories may shadow shipped overlays of the same name
    bmap: bool = False  # also write OUTPUT.bmap (bmaptool's format: the ranges that matter, with SHA-256s)
    dry_run: bool = False  # plan only: nothing is downloaded (base, apt key), nothing written
    epoch: int | None = None  # the build's time (every date written); default SOURCE_DATE_EPOCH, else the base's mtime
    stamp: Stamp | None = None  # set when `pi-image flash` stamps a node onto an image (request_from_recipe)


@dataclass(kw_only=True)
class BuildResult:
    """What a build did (or, for a dry run, would do)."""

    target: Target
    profile: Profile
    node: NodeIdentity
    ops: list[FileOp]
    changed: list[FileOp] = field(default_factory=list)
    output: Path | None = None
    manifest: dict[str, Any] = field(default_factory=dict)
    bmap: Path | None = None


def prepare(request: BuildRequest, *, plan: bool = True) -> BuildContext:
    """Load the profile, node and base; detect the target; plan every edit. Nothing is written."""
    profile = _with_login(load_profile(_profile_name(request), request.sets), request)
    cluster = load_cluster(request.cluster) if request.cluster else None
    if cluster:
        profile = _with_cluster_version(profile, cluster)
        check_writable(cluster.directory)
        if request.bmap and not request.node:
            raise UserError("--bmap: a profile image becomes a node only when `pi-image flash` stamps it (bmaptool "
                            "would write a card with no identity): drop --bmap, or build one node's image with "
                            "--node NAME")
    spec = (request.base or (cluster.node(request.node).base if cluster and request.node else None) or profile["base"]
            or (default_base(targets_of(profile["target"])) if profile["target"] else None))
    if not spec:
        raise UserError(f"profile '{profile.name}' names no base image: pass --base NAME (`pi-image bases` lists "
                        "them), URL or FILE")
    base = resolve_base(str(spec), download=not request.dry_run)
    target = detect(open_medium(base))
    if request.in_place and not isinstance(target.medium, DirectoryFilesystem):
        raise UserError(f"--in-place edits directory targets only; {base} is a disk image, which is never written: "
                        "drop --in-place (the output is a new image)")
    if profile["target"] and target.name not in targets_of(profile["target"]):
        if UbuntuX86.name in targets_of(profile["target"]):
            raise UserError(f"profile '{profile.name}' is for {profile['target']} but {base} is {target.name}: an x86 "
                            "machine gets no card, a seed ISO makes its node: `pi-image seed-iso --cluster "
                            f"{request.cluster or 'DIR'} --node {request.node or 'NAME'}`")
        raise UserError(f"profile '{profile.name}' is for {profile['target']} but {base} is {target.name}: "
                        f"pick a profile for {target.name} (see `pi-image profiles`)")
    _check_login(profile, target, request.no_login)
    node, config = _node(request, profile, cluster, profile["user"] or target.default_user)
    epoch = request.epoch if request.epoch is not None else _epoch(base)
    kube_install = install_method(profile, target)
    config = config.replace(
        runtime_packages=_runtime_packages(profile, target, kube_install), package_manager=target.package_manager,
        kube_install=kube_install, kube_repo=None if kube_install == RELEASE else profile["kube_repo_url"],
        kubelet=kubelet_settings(profile["memory_gb"], profile["cpus"], profile["max_pods"]),
        built_at=epoch)  # a floor for the device's clock (a Pi has no RTC)
    keyring = None if kube_install == RELEASE else (request.stamp.keyring if request.stamp else None) or kube_keyring(
        profile["kubernetes_version"], request.kube_key, download=not request.dry_run)
    ctx = BuildContext(target=target, profile=profile, node=node, node_config=config, kube_keyring=keyring,
                       overlays=list(request.overlays), epoch=epoch, replace_overlays=request.replace_overlays,
                       base=base, base_name=str(spec), fetch=not request.dry_run,
                       download=None if request.dry_run else fetch_small)
    if cluster:
        ctx.subnets = (cluster.service_subnet, cluster.pod_subnet)
        ctx.kubernetes_release = cluster.kubernetes_release
        ctx.cluster_files = tuple(master_files(cluster, config.control_plane)) if config.control_plane else ()
    if ctx.from_release and request.stamp and request.stamp.release and ctx.kubernetes_release:
        settings = _stamp_release(request.stamp.release, ctx.kubernetes_release)  # stamped with no network
        ctx.node_config = ctx.node_config.replace(kubernetes_release=ctx.kubernetes_release, release=settings)
    elif ctx.from_release:  # the exact patch (the cluster's, else the newest) and its files' digests, for node.json
        ctx.kubernetes_release, settings = resolve_release(profile, release_arch(target),
                                                           ctx.kubernetes_release, ctx.download)
        ctx.node_config = ctx.node_config.replace(kubernetes_release=ctx.kubernetes_release, release=settings)
    if plan:
        make_plan(ctx)
    return ctx


def _runtime_packages(profile: Profile, target: Target, kube_install: str) -> list[str]:
    """What the node installs with its package manager: its runtime (builder.config.runtimes), and on the release path
    the kubelet's dependencies, which no kubelet package pulls in then."""
    packages = runtime_packages(
        profile["runtime"], profile["cri_dockerd"], profile["kubernetes_version"], target.os.id,
        target.os.version_id or "", target.name, profile["containerd_config_version"], profile["default_runtime"])
    if kube_install == RELEASE:
        packages += [name for name in RELEASE_DEPENDENCIES[target.package_manager] if name not in packages]
    return packages


def _stamp_release(recorded: dict[str, Any], kubernetes_release: str) -> ReleaseSettings:
    """The release settings an image's recipe recorded, checked as node.json's are."""
    try:
        return ReleaseSettings.from_json(recorded, kubernetes_release, "the image's recipe")
    except ConfigError as err:
        raise UserError(f"{err}: rebuild the image with `pi-image build --cluster`") from None


def fetch_small(url: str, limit: int, what: str) -> bytes | None:
    """A small file whole through the bounded client (builder.bases.download), or None when the server has none:
    how the plan's steps fetch (builder.plan.release.Fetch)."""
    try:
        return get_small(url, limit, what)
    except NotFound:
        return None
    except Failed as err:  # its own advice is about bases: this fetch has another fix
        raise UserError(f"{url}: {err.reason}: the build needs this {what} (the release's SHA-256s go into node.json): "
                        "check the network, or point kube_release_url / crictl_url / cni_plugins_url (or "
                        "package_mirrors) at a reachable mirror") from None


def _with_login(profile: Profile, request: BuildRequest) -> Profile:
    """The profile with --ssh-key keys added and the --password hash set."""
    settings = dict(profile.values)
    for key in request.ssh_keys:
        check_value("ssh_authorized_keys", [key], "--ssh-key")
    settings["ssh_authorized_keys"] = list(dict.fromkeys(list(settings["ssh_authorized_keys"]) + request.ssh_keys))
    if request.password_hash:
        settings["password_hash"] = request.password_hash
    return dataclasses.replace(profile, values=settings)


def _with_cluster_version(profile: Profile, cluster: Cluster) -> Profile:
    """One Kubernetes version: the cluster's. A profile or --set that names another one is an error. The cluster's
    node defaults (offline, mirrors) apply where the profile sets none; mirrors merge, the profile's winning."""
    ours, theirs = profile["kubernetes_version"], cluster.kubernetes_version
    if "kubernetes_version" in profile.explicit and ours != theirs:
        raise UserError(f"profile '{profile.name}' (or --set) says kubernetes_version {ours} but cluster "
                        f"{cluster.directory} runs {theirs}: drop the setting (the cluster decides) or change "
                        f"kubernetes_version in {cluster.directory / 'cluster.yaml'}")
    defaults: dict[str, Any] = {"offline": profile["offline"] if "offline" in profile.explicit else cluster.offline,
                                "registry_mirrors": {**cluster.registry_mirrors, **profile["registry_mirrors"]},
                                "package_mirrors": {**cluster.package_mirrors, **profile["package_mirrors"]}}
    return dataclasses.replace(profile, values={**profile.values, "kubernetes_version": theirs, **defaults})


def _check_login(profile: Profile, target: Target, no_login: bool) -> None:
    """A headless node needs a way in: an SSH key or a password, unless --no-login says none is intended."""
    if profile["ssh_authorized_keys"] or profile["password_hash"] or no_login:
        return
    user = profile["user"] or target.default_user or "the admin user"
    raise UserError(f"this build leaves {user} with no SSH key and no password, so nobody could log in to the node: "
                    "pass --ssh-key ~/.ssh/id_ed25519.pub (or --password), or --no-login if that is intended")


def _profile_name(request: BuildRequest) -> str:
    """The profile the inventory gives the node; --profile only where there is none, or where it names the same."""
    if request.cluster and request.node:
        entry = load_cluster(request.cluster).node(request.node)
        if request.profile and not same_profile(request.profile, entry.profile):
            raise UserError(f"--profile {request.profile}: node {entry.name!r} has profile {entry.profile} in "
                            f"{request.cluster / 'inventory.yaml'}: drop --profile (the inventory decides), or give "
                            f"the node that profile (`pi-image cluster remove-node` and `add-node --profile "
                            f"{request.profile}`)")
        return request.profile or entry.profile
    if request.profile:
        return request.profile
    raise UserError("pass --profile NAME (or --cluster DIR --node NAME to use the node's profile from the inventory)")


def _node(request: BuildRequest, profile: Profile, cluster: Cluster | None,
          admin_user: str | None) -> tuple[NodeIdentity, NodeConfig]:
    """The node's identity and who its firstboot config says it is, from the inventory (--cluster --node) or the
    profile; `admin_user` gets the cluster's kubeconfig on a control plane. prepare() adds the build's facts.

    A cluster build's config carries the node's NEXT generation: the inventory records it once the image is made.
    """
    if cluster and not request.node:
        return _profile_image_node(profile, cluster, admin_user)
    if cluster and request.node:
        entry = cluster.node(request.node)
        if entry.role != profile["role"]:
            raise UserError(f"node {entry.name!r} is a {entry.role} in {cluster.directory / 'inventory.yaml'} but "
                            f"profile '{profile.name}' builds a {profile['role']}: use the node's own profile "
                            f"({entry.profile})")
        entry = dataclasses.replace(entry, generation=entry.generation + 1)
        node = NodeIdentity(name=entry.name, role=entry.role, address=entry.address, mac=entry.mac,
                            subnet=cluster.node_subnet, gateway=cluster.gateway, dns=tuple(cluster.dns),
                            cluster=str(cluster.directory))
        return node, node_config(cluster, entry, profile["runtime"], admin_user)
    name = request.node or profile["hostname"] or profile.name
    problem = values.hostname(name)
    if problem:
        raise UserError(f"--node: {problem}" if request.node else f"profile '{profile.name}': the node name is the "
                        f"profile's name when it sets no hostname: {problem}; set hostname in it or pass --node NAME")
    node = NodeIdentity(name=name, role=profile["role"])
    return node, local_node_config(name, profile["kubernetes_version"], profile["runtime"], profile["role"])


def _profile_image_node(profile: Profile, cluster: Cluster, admin_user: str | None) -> tuple[NodeIdentity, NodeConfig]:
    """A cluster image without a node: everything of the profile and the cluster, but no identity and no credential.
    `pi-image flash` stamps a node onto each card written from it; booted as it is, its agent refuses to go on."""
    name = profile["hostname"] or profile.name
    entry = Node(name, profile.name, role=profile["role"])
    config = node_config(cluster, entry, profile["runtime"], admin_user).replace(
        credential=None, endpoint=None, endpoint_fingerprint=None, fallback_endpoints=(), control_plane=None,
        generation=None, unstamped=True)
    node = NodeIdentity(name=name, role=profile["role"], subnet=cluster.node_subnet, gateway=cluster.gateway,
                        dns=tuple(cluster.dns), cluster=str(cluster.directory))
    return node, config


def build(request: BuildRequest) -> BuildResult:
    """Make the output image (or edit a directory target); see the module docstring."""
    ctx = prepare(request, plan=False)  # an image's plan is made while its base is copied
    if ctx.target.name == UbuntuX86.name:
        raise UserError(f"{ctx.base} is an x86 Ubuntu root: its node is made by the stock system's cloud-init from a "
                        f"seed ISO, not by editing a tree: use `{SEED_ISO_COMMAND}`")
    base_path = ctx.base
    assert base_path is not None  # prepare() resolved it
    output = request.output or Path(f"{ctx.node.name}.img")
    remove_stale_temporaries(output.parent)
    if isinstance(ctx.target.medium, DirectoryFilesystem):
        make_plan(ctx)
        result = _build_tree(ctx, base_path, output, request)
    else:
        result = _build_image(ctx, base_path, output, request)
    return result


def _build_image(ctx: BuildContext, base_path: Path, output: Path, request: BuildRequest) -> BuildResult:
    """A disk image: sparse copy, edit, check, compress if asked, then the image and OUTPUT.json appear together."""
    check_image_output(output, request.force)
    raw_base = raw_image(base_path)
    if output.resolve() in (base_path.resolve(), raw_base.resolve()):
        raise UserError(f"{output} is the base image: pick another --output (the base is never written)")
    tmp, manifest_path = temporary(output), _manifest_path(output)
    manifest_tmp = temporary(manifest_path)
    bmap_path = bmap_name(output) if request.bmap else None
    bmap_tmp = temporary(bmap_path) if bmap_path else None
    try:
        _check_space(raw_base, output.parent)
        create_private(tmp).close()
        with track_writes(tmp) as writes:  # what the edits write: the output's digest reads only that again
            with BackgroundCopy(raw_base, tmp) as copying:  # debugfs and publish() fsync it
                make_plan(ctx)  # reads the base only: on the other core while the kernel copies
                with progress(f"{output.name}: copying the base", raw_base.stat().st_size) as advance:
                    copying.finish(advance)
            _make_room(ctx, tmp)
            if ctx.bundle and ctx.bundle.grown_by:
                writes.complete = False  # resize2fs says nothing of what it wrote
            image = DiskImage(tmp, writable=True, fake_time=ctx.epoch)
            base_record = _base_record(request, ctx)
            recipe = _save_recipe(request, ctx, base_record)
            manifest = build_manifest(ctx, base_record, recipe)
            changed = apply_checked(image, ctx.plan.ops + [manifest_op(manifest)], like=ctx.target)
            written = written_ranges(image, writes)
        if bmap_path is not None and bmap_tmp is not None:
            usage = usage_map(tmp)
            with progress(f"{bmap_path.name}: range checksums", usage.mapped_bytes()) as advance:
                write_bmap(tmp, usage, bmap_tmp, advance)
            os.chmod(bmap_tmp, _image_mode(ctx) & 0o644)
        final_tmp = _compress(tmp, output)
        os.chmod(final_tmp, _image_mode(ctx))
        manifest["output"] = _output_digests(final_tmp, output, request.sha256 or final_tmp != tmp,
                                             (raw_base, written) if final_tmp == tmp else None)
        _write_json(manifest_tmp, manifest)
        _record_card(ctx, request)
        publish([(final_tmp, output), (manifest_tmp, manifest_path)]
                + ([(bmap_tmp, bmap_path)] if bmap_tmp and bmap_path else []))
    finally:
        for leftover in (tmp, tmp.with_name(tmp.name + output.suffix), manifest_tmp, bmap_tmp):
            if leftover is not None:
                leftover.unlink(missing_ok=True)
    return BuildResult(target=ctx.target, profile=ctx.profile, node=ctx.node, ops=ctx.plan.ops, changed=changed,
                       output=output, manifest=manifest, bmap=bmap_path)


def _make_room(ctx: BuildContext, image: Path) -> None:
    """An --offline bundle may not fit the vendor image's root filesystem (they are cut to what the OS needs): the
    copy's last partition and its ext4 are grown by what is missing, plus ROOM_MARGIN for the first boot's own
    writes. The summary and the manifest say how much; `pi-image flash` still checks the card is large enough."""
    root = ctx.target.root
    if ctx.bundle is None or not isinstance(root, Ext4Filesystem):
        return
    needed = sum(len(op.content or b"") for op in ctx.plan.ops) + ROOM_MARGIN
    missing = needed - root.superblock.free_bytes
    if missing > 0:
        grow_root(image, missing, f"{ctx.base_name or ctx.base}: the offline bundle needs {missing >> 20} MiB more")
        ctx.bundle.grown_by = missing


def apply_checked(image: DiskImage, ops: list[FileOp], like: Target | None = None) -> list[FileOp]:
    """Carry out `ops` on the disk image (or card) `image` (a copy of the image `like` was detected on, if given),
    commit, and fsck every filesystem they changed; return the ops that changed something."""
    target = detect(image, like)
    changed = apply(Plan(ops), target)
    image.commit()
    for partition in image.partitions:
        if partition.fs and any(target.filesystem(op.fs) is image.filesystem(partition) for op in changed):
            check_partition(image, partition)
    return changed


def _build_tree(ctx: BuildContext, base: Path, output: Path, request: BuildRequest) -> BuildResult:
    """A directory target: edit a copy of the tree and swap it in at OUTPUT, or edit the tree with --in-place."""
    if request.in_place:
        dest = base
    else:
        if output.resolve() == base.resolve():
            raise UserError(f"{output} is the base tree: pick another --output, or pass --in-place to edit it")
        check_tree_output(output, request.force)
        dest = temporary(output)
    final = base if request.in_place else output
    manifest_path = _manifest_path(final)
    manifest_tmp = temporary(manifest_path)
    try:
        if not request.in_place:
            run(["cp", "-a", "--reflink=auto", str(base), str(dest)])  # keeps owners, modes, links, holes
        target = detect(DirectoryFilesystem(dest, writable=True))
        base_record = _base_record(request, ctx)
        recipe = _save_recipe(request, ctx, base_record)
        manifest = build_manifest(ctx, base_record, recipe)
        changed = apply(Plan(ctx.plan.ops + [manifest_op(manifest)]), target)
        target.root.commit()
        _write_json(manifest_tmp, manifest)
        _record_card(ctx, request)
        publish([(manifest_tmp, manifest_path)])
        if not request.in_place:
            swap_in_tree(dest, output)
    finally:
        manifest_tmp.unlink(missing_ok=True)
        if not request.in_place and dest.exists():
            shutil.rmtree(dest, ignore_errors=True)
    return BuildResult(target=ctx.target, profile=ctx.profile, node=ctx.node, ops=ctx.plan.ops, changed=changed,
                       output=final, manifest=manifest)


def _record_card(ctx: BuildContext, request: BuildRequest) -> None:
    """A cluster node's new card is complete: record its generation before it is published (if that fails, nothing
    is published and the node's current card stays valid)."""
    if request.cluster and ctx.kubernetes_release and load_cluster(request.cluster).kubernetes_release is None:
        record_release(request.cluster, ctx.kubernetes_release)  # every later card of the cluster runs this release
    if request.cluster and request.node:
        assert ctx.node_config.generation is not None  # a node's cluster build gives it its next one (_node)
        record_generation(request.cluster, ctx.node.name, ctx.node_config.generation)


def bmap_name(output: Path) -> Path:
    """OUTPUT's bmap: OUTPUT's own name with .bmap added (node.img.xz -> node.img.xz.bmap), never another output's.

    `bmaptool copy IMAGE DEVICE` looks for IMAGE.bmap first, then strips one extension at a time (node.img.bmap,
    node.bmap): named after the exact file, a bmap is found before any other image's. node.img and node.img.xz are
    different files of different builds (their ranges' checksums differ when anything in them does): with one bmap
    for both, writing the older one would fail bmaptool's checksum. The hints name it explicitly (--bmap FILE).
    """
    return output.with_name(output.name + ".bmap")


def _manifest_path(output: Path) -> Path:
    return output.with_name(output.name + ".json")


def _image_mode(ctx: BuildContext) -> int:
    """0600 when the image holds a secret (a node credential: anyone who reads it could join as that node; a
    control plane's cluster secrets; a password hash, a Wi-Fi passphrase), else 0644."""
    holds_cluster_secret = ctx.node_config.credential is not None or ctx.node_config.control_plane is not None
    return 0o600 if holds_cluster_secret or ctx.profile.secret_values() else 0o644


def _output_digests(path: Path, output: Path, full: bool,
                    copied: tuple[Path, list[tuple[int, int]] | None] | None = None) -> dict[str, Any]:
    """Size and digests of the finished output: the 4 MiB-chunk digest always, the plain SHA-256 if `full`.

    The plain SHA-256 of a raw image costs CPU for every byte of its holes (~3 s per 4 GiB here), most of a build;
    the chunk digest costs only what the image holds (see builder.image.copy), and for a raw output, `copied`
    (its base and the ranges the build wrote into its copy), only the chunks written (builder.image.dirty).
    """
    size = path.stat().st_size
    with progress(f"{output.name}: chunk digest", size) as advance:
        chunks = output_chunk_digest(path, *copied, advance) if copied else chunk_digest(path, advance)
    digests: dict[str, Any] = {"path": output.name, "size": size, "chunk_sha256": chunks}
    if full:
        with progress(f"{output.name}: SHA-256", size) as advance:
            digests["sha256"] = sha256_sparse(path, advance)
    return digests


def _check_space(raw_base: Path, directory: Path) -> None:
    """Refuse early when the output's filesystem cannot hold the copy."""
    st = os.statvfs(directory)
    needed, free = size_on_disk(raw_base), st.f_bavail * st.f_frsize
    if needed > free:
        raise UserError(f"not enough space in {directory}: the image needs {needed >> 20} MiB, {free >> 20} MiB free")


def _epoch(base: Path) -> int:
    """Timestamps for everything written: SOURCE_DATE_EPOCH if set, else the mtime of the base as the user gave it
    (never of its unpacked copy in the cache, whose time is when it was unpacked)."""
    value = os.environ.get("SOURCE_DATE_EPOCH")
    return int(value) if value and value.isdigit() else int(base.stat().st_mtime)


def _compress(raw: Path, output: Path) -> Path:
    """`raw` compressed as OUTPUT's suffix asks (.zst / .xz / .gz) into a private file beside it; or `raw` itself.

    The tool reads `raw` as its stdin: the offset of that shared open file is how far it got, for the bar.
    """
    tool = COMPRESSORS.get(output.suffix)
    if tool is None:
        return raw
    packed = raw.with_name(raw.name + output.suffix)
    with open(raw, "rb") as source, create_private(packed) as dest, \
            progress(f"{output.name}: compressing", raw.stat().st_size) as advance:
        run_filter(tool, source, dest, lambda: advance(os.lseek(source.fileno(), 0, os.SEEK_CUR)))
    return packed


def _base_record(request: BuildRequest, ctx: BuildContext) -> dict[str, Any]:
    """The vendor image a build started from: its file's name, its catalog name or URL when it was given by one
    (never a local path: the same inputs give the same bytes wherever they are), and its sha256; a stamped card's
    are its image's."""
    assert ctx.base is not None
    if request.stamp and request.stamp.base:
        return request.stamp.base
    named = {"name": ctx.base_name} if ctx.base_name and not Path(ctx.base_name).exists() else {}
    return {"path": ctx.base.name, **named, "sha256": _input_sha256(ctx.base)}


def _save_recipe(request: BuildRequest, ctx: BuildContext, base: dict[str, Any]) -> str | None:
    """A cluster build's own step: store how the image was made in the cluster directory (builder.build.recipes), so
    that `pi-image flash` can stamp a node onto it later; the id names it in the image's manifest. None for a build
    without a cluster. The file is named by its content: the same build saves it once."""
    if not request.cluster:
        return None
    profile = request.profile or ctx.profile.name
    if Path(profile).is_file():
        profile = str(Path(profile).resolve())
    recipe = Recipe(profile=profile, sets=dict(request.sets),
                    overlays=tuple(str(Path(o).resolve()) for o in request.overlays),
                    replace_overlays=request.replace_overlays, ssh_keys=tuple(request.ssh_keys),
                    password_hash=request.password_hash, no_login=request.no_login,
                    keyring=base64.b64encode(ctx.kube_keyring).decode() if ctx.kube_keyring else None,
                    release=ctx.node_config.release.to_json() if ctx.node_config.release else None,
                    epoch=ctx.epoch, base=base, sources=_sources(ctx))
    return save_recipe(request.cluster, recipe)


def request_from_recipe(recipe: Recipe, image: Path, cluster: Path, node: str) -> BuildRequest:
    """The build of `node` that `recipe`'s image stands for, planned against the image itself."""
    return BuildRequest(profile=recipe.profile, base=str(image), cluster=cluster, node=node, sets=dict(recipe.sets),
                        overlays=list(recipe.overlays), ssh_keys=list(recipe.ssh_keys),
                        password_hash=recipe.password_hash, no_login=recipe.no_login,
                        replace_overlays=recipe.replace_overlays, epoch=recipe.epoch,
                        stamp=Stamp(keyring=recipe.keyring_bytes, base=recipe.base, release=recipe.release))


def build_manifest(ctx: BuildContext, base: dict[str, Any], recipe: str | None) -> dict[str, Any]:
    """How this image was made: inputs with hashes, and every file the plan writes (with its hash, unless it holds a
    secret); for a cluster image the recipe a node is stamped from, and whether it still needs one."""
    secrets = tuple(ctx.profile.secret_values())
    return {
        "recipe": recipe,
        "stamp_at_flash": ctx.node_config.unstamped,
        "pi_image_version": __version__,
        "target": ctx.target.name,
        "node": ctx.node.name,
        "role": ctx.node.role,
        "cluster": ctx.node.cluster and Path(ctx.node.cluster).name,
        "kubernetes_version": ctx.profile["kubernetes_version"],
        "kubernetes_release": ctx.kubernetes_release,
        "bundle": ctx.bundle and {**ctx.bundle.manifest, "size": ctx.bundle.size, "grown_by": ctx.bundle.grown_by},
        "network": ctx.static_network() or "dhcp",
        "base": base,
        **_sources(ctx),
        "files": ctx.plan.describe(secrets),
    }


def _sources(ctx: BuildContext) -> dict[str, Any]:
    """The profile (its files' digests, its public values) and the overlays (their trees' digests) of a build."""
    secrets = tuple(ctx.profile.secret_values())
    return {"profile": {"name": ctx.profile.name, "sha256": {p.name: _source_digest(p.read_bytes(), secrets)
                                                             for p in ctx.profile.sources},
                        "values": ctx.profile.public_values()},
            "overlays": {overlay.name: _tree_sha(overlay.path) for overlay in overlays(ctx)}}


def manifest_op(manifest: dict[str, Any]) -> FileOp:
    """The op writing the build record into the image (everything but the output's own digests)."""
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


def _source_digest(data: bytes, secrets: tuple[str, ...]) -> str:
    """A profile file's SHA-256, or "(holds secrets)" for one that sets a secret value."""
    return "(holds secrets)" if any(s.encode() in data for s in secrets) else hashlib.sha256(data).hexdigest()


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
