"""`pi-image seed-iso`: an x86 node's setup as a cloud-init NoCloud seed, from the same plan as a card.

    reference tree of the target's stock install --prepare()--> the node's plan (the build's own steps and overlays)
      --> user-data: the seed overlay's user-data.j2 (user, keys, hostname, time zone, locale) + the plan as
          write_files (files), bootcmd (directories, before the files), runcmd (links, removals, starting the units)
      --> an ISO 9660 image (Joliet + Rock Ridge) labelled CIDATA: meta-data, user-data, network-config

Nothing is planned twice: the steps that write a card's files write the seed's, and the seed overlay's templates
give meta-data, network-config and the start of user-data on both. The plan is made against the reference tree of the
profile's target (`REFERENCE_TREES`: builder/samples/data/ubuntu-x86 for Ubuntu, builder/samples/data/arch for Arch
Linux) that holds only what every stock install shares, so no machine's own files (fstab, netplan) are ever
overwritten. A stock system reads the seed at its first boot: Ubuntu's amd64 cloud image or Arch's (cloud-init is live
in both), or Ubuntu's live server installer with `--autoinstall` (user-data wrapped as `autoinstall:`; the installed
system runs the inner user-data at its first boot). A system installed earlier does not read a seed attached later:
the installer limits its cloud-init to the installer's own data (99-installer.cfg: datasource_list [None]; 24.04 also
disables cloud-init after that first boot); an installed Arch machine has no cloud-init: `pi-image enroll` is for it.

The seed holds the node's credential (node.json): the ISO is written 0600, like a card.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import io
import re
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from time import struct_time
from typing import Any, BinaryIO

import pycdlib
import yaml

from ..cluster import load_cluster, record_generation
from ..config.profiles import load_profile
from ..errors import UserError
from ..outputs import create_private, publish, remove_stale_temporaries, temporary
from ..plan import FileOp, Plan
from ..plan.overlays import render_overlay
from ..plan.steps import BuildContext
from ..plan.steps.layers import overlays, target_facts
from ..plan.systemd import UNIT_DIR
from ..plan.users import accounts, groups, owner_ids
from ..samples.catalog import REFERENCE_TREES
from ..samples.tree import stage_tree
from ..targets import MACHINE_TARGETS, targets_of
from ..targets.arch import ArchX86
from ..targets.x86 import UbuntuX86
from . import BuildRequest, prepare

VOLUME_ID = "CIDATA"  # NoCloud's label (cloud-init looks for cidata or CIDATA)
# ISO 9660 level-1 names (8.3, d-characters, version ;1); Joliet and Rock Ridge carry the real ones.
ISO_NAMES = {"meta-data": "META_DAT.;1", "user-data": "USER_DAT.;1", "network-config": "NETWORK_.;1"}
SEED_OVERLAY = "cloud-init-seed"
# cloud-init has no limit of its own, but it parses user-data with PyYAML, keeps several copies on the node (the
# raw file, the processed one, instance data) and the installer more: a seed carries configuration, not payloads.
# The largest node's (a control plane: agent, endpoint, flannel manifest) is about a quarter of this.
MAX_USER_DATA = 1 << 20
PLAN_KEYS = ("write_files", "bootcmd", "runcmd")
WANTS_LINK = re.compile(rf"^{re.escape(UNIT_DIR)}/[^/]+\.(?:wants|requires)/(?P<unit>[^/]+)$")


@dataclass(kw_only=True)
class SeedIsoRequest:
    """What the user asked for (the CLI's options)."""

    profile: str | None  # default: the node's profile in the inventory
    cluster: Path
    node: str
    output: Path | None = None  # default: NODE-seed.iso
    autoinstall: bool = False  # wrapped for the Ubuntu live server installer (Ubuntu only)
    ssh_keys: list[str] = field(default_factory=list)
    password_hash: str | None = None
    no_login: bool = False
    sets: dict[str, Any] = field(default_factory=dict)
    overlays: list[str] = field(default_factory=list)
    kube_key: Path | None = None
    force: bool = False


@dataclass(kw_only=True)
class SeedIsoResult:
    """What seed_iso() wrote."""

    output: Path
    node: str
    role: str
    files: list[str]  # the paths user-data's write_files writes on the node
    size: int  # of the ISO, in bytes
    user_data_bytes: int


def seed_iso(request: SeedIsoRequest) -> SeedIsoResult:
    """Plan the node against its target's reference tree, render its seed, and write the ISO atomically (0600); a
    cluster node's new generation is recorded in the inventory once the ISO is complete, as for a card."""
    output = request.output or Path(f"{request.node}-seed.iso")
    if output.suffix != ".iso":
        raise UserError(f"{output}: a seed is an ISO 9660 image: name it like {output.stem}.iso")
    check_node_output(output, request.force, "node-seed.iso")
    build = BuildRequest(profile=request.profile, cluster=request.cluster, node=request.node, sets=request.sets,
                         overlays=list(request.overlays), kube_key=request.kube_key, ssh_keys=list(request.ssh_keys),
                         password_hash=request.password_hash, no_login=request.no_login)
    with planned_on_reference(_seed_target(request), build) as ctx:
        documents = seed_documents(ctx, autoinstall=request.autoinstall)  # reads the tree (owners, templates)
    publish_node_file(output, ctx, request.cluster, lambda handle: write_iso(documents, handle, ctx.epoch))
    files = [op.path for op in final_ops(ctx.plan) if op.action == "write"]
    return SeedIsoResult(output=output, node=ctx.node.name, role=ctx.node.role, files=files,
                         size=output.stat().st_size, user_data_bytes=len(documents["user-data"]))


def check_node_output(output: Path, force: bool, example: str) -> None:
    """Where a node's file (a seed ISO, an enroll script) goes: not a directory, not an existing file unless
    `force`, in a directory that exists; one line naming the fix otherwise."""
    if output.is_dir():
        raise UserError(f"{output} is a directory: name the file, like {output / example}")
    if output.exists() and not force:
        raise UserError(f"{output} exists: pass --force to replace it")
    if not output.parent.is_dir():
        raise UserError(f"cannot write {output}: {output.parent} is not a directory")


@contextlib.contextmanager
def planned_on_reference(target: str, request: BuildRequest) -> Iterator[BuildContext]:
    """The node's plan (`request` without a base) made against a private copy of `target`'s reference tree, which
    stays while the context is open (rendering reads its passwd, group and templates)."""
    with tempfile.TemporaryDirectory(prefix=f"pi-image-{target}-") as scratch:
        base = Path(scratch) / "root"
        stage_tree(REFERENCE_TREES[target], {}, base)
        yield prepare(dataclasses.replace(request, base=str(base)))


def publish_node_file(output: Path, ctx: BuildContext, cluster: Path, write: Callable[[BinaryIO], object]) -> None:
    """Write a node's file with `write` (0600: it holds the node's credential) and publish it atomically; the node's
    new generation is recorded in the inventory once the file is complete, as for a card."""
    remove_stale_temporaries(output.parent)
    tmp = temporary(output)
    try:
        with create_private(tmp) as handle:
            write(handle)
        assert ctx.node_config.generation is not None  # a node's cluster build gives it its next one
        record_generation(cluster, ctx.node.name, ctx.node_config.generation)
        publish([(tmp, output)])
    finally:
        tmp.unlink(missing_ok=True)


def _seed_target(request: SeedIsoRequest) -> str:
    """The target the node's seed is for (the profile's; Ubuntu for a profile naming none). The node must be in the
    inventory, and its profile must not be for a board (worker-8g is a Raspberry Pi)."""
    name = request.profile or load_cluster(request.cluster).node(request.node).profile
    profile = load_profile(name, request.sets)
    found = [target for target in MACHINE_TARGETS if target in targets_of(profile["target"] or UbuntuX86.name)]
    if not found:
        raise UserError(f"profile '{profile.name}' is for {profile['target']}, not an x86 machine: a seed ISO is for "
                        f"Ubuntu ({UbuntuX86.name}) or Arch Linux ({ArchX86.name}) on x86-64; use --profile "
                        "x86-worker or arch-worker (or a profile for one of them), or build a card with `pi-image "
                        "build` for the board")
    if request.autoinstall and found[0] != UbuntuX86.name:
        raise UserError(f"--autoinstall wraps the seed for Ubuntu's live server installer, and profile "
                        f"'{profile.name}' is for {found[0]}: drop --autoinstall (boot the cloud image with the seed)")
    return found[0]


def seed_documents(ctx: BuildContext, autoinstall: bool = False) -> dict[str, bytes]:
    """The seed's files for a node planned on an x86 target: meta-data, user-data, and network-config when the
    node has a fixed address. `autoinstall` wraps user-data for Ubuntu's live server installer."""
    seed = _render_seed(ctx)
    network = _network_config(ctx, seed["network-config"])
    cloud_config = cloud_config_text(seed["user-data"].decode(), ctx)
    user_data = _autoinstall(ctx, cloud_config, network) if autoinstall else cloud_config.encode()
    if len(user_data) > MAX_USER_DATA:
        raise UserError(f"node {ctx.node.name}: user-data is {len(user_data) >> 10} KiB, over what a seed may hold "
                        f"({MAX_USER_DATA >> 10} KiB: cloud-init parses it whole and keeps copies on the node): "
                        "ship large files (an --overlay's binaries) as packages instead")
    documents = {"meta-data": _meta_data(ctx, seed["meta-data"]), "user-data": user_data}
    if network is not None:
        documents["network-config"] = network
    return documents


def _render_seed(ctx: BuildContext) -> dict[str, bytes]:
    """The seed overlay's files, rendered with the build's own template context (the layers step skips them: this
    target has no boot partition). Another overlay for the boot partition has no place on an x86 node."""
    context = {**ctx.template_context(), **target_facts(ctx)}
    users, group_ids = owner_ids(ctx.view)
    rendered = Plan()
    for overlay in overlays(ctx):
        if overlay.filesystem != "boot" or (overlay.when and not context.get(overlay.when)):
            continue
        if overlay.name != SEED_OVERLAY:
            raise UserError(f"overlay '{overlay.name}' writes to the boot partition, which an x86 node does not "
                            "have: drop it for this node")
        render_overlay(overlay, context, rendered, ctx.view, users, group_ids)
    return {op.path.lstrip("/"): op.content or b"" for op in rendered.ops if op.action == "write"}


def final_ops(plan: Plan) -> list[FileOp]:
    """The last op on each path (what the node ends up with), in the order the plan reaches them."""
    final: dict[str, FileOp] = {}
    for op in plan.ops:
        if op.fs != "root":
            raise UserError(f"step {op.step} writes {op.fs}:{op.path}, but an x86 node has no {op.fs} filesystem")
        final.pop(op.path, None)
        final[op.path] = op
    return list(final.values())


def cloud_config_text(template_text: str, ctx: BuildContext) -> str:
    """The seed template's #cloud-config followed by the plan as write_files, bootcmd and runcmd."""
    base = yaml.safe_load(template_text)
    if not template_text.startswith("#cloud-config\n") or not isinstance(base, dict):
        raise UserError(f"the {SEED_OVERLAY} overlay's user-data is not a #cloud-config mapping")
    clash = sorted(set(base) & set(PLAN_KEYS))
    if clash:
        raise UserError(f"the {SEED_OVERLAY} overlay's user-data sets {', '.join(clash)}, which seed-iso writes from "
                        "the plan: remove it from the template")
    plan = {key: value for key, value in _plan_config(final_ops(ctx.plan), owner_names(ctx)).items() if value}
    return (template_text.rstrip("\n") + "\n# The node's plan, as a card carries it: files, then directories (bootcmd "
            "runs first), links and the units to start (runcmd, after multi-user.target).\n"
            + yaml.dump(plan, Dumper=_SeedDumper, sort_keys=False, allow_unicode=True, width=4096))


def _plan_config(ops: list[FileOp], owner: Any) -> dict[str, list[Any]]:
    """write_files, bootcmd and runcmd that leave the node as apply() leaves a card's root filesystem."""
    write_files, bootcmd, links, units, parents = [], [], [], [], []
    for op in ops:
        mode = f"{op.mode if op.mode is not None else 0o644:04o}"
        if op.action == "write":
            write_files.append(_write_file(op, owner(op.uid, op.gid), mode))
        elif op.action == "mkdir":  # `install -d` also gives an existing directory its mode and owner
            user, _, group = owner(op.uid, op.gid).partition(":")
            bootcmd.append(_Command(["install", "-d", "-m", mode, "-o", user, "-g", group, "--", op.path]))
        elif op.action == "symlink":
            parents.append(op.path.rsplit("/", 1)[0] or "/")
            links.append(_Command(["ln", "-sfn", "--", op.target, op.path]))
            found = WANTS_LINK.match(op.path)
            if found and found["unit"] not in units:
                units.append(found["unit"])
        elif op.action == "remove":
            links.append(_Command(["rm", "-f", "--", op.path]))
    # multi-user.target is already reached when runcmd runs: start now what its new wants links name
    starts = [_Command(["systemctl", "daemon-reload"])] if units else []
    starts += [_Command(["systemctl", "start", "--no-block", unit]) for unit in units]
    made = [_Command(["mkdir", "-p", "--", *dict.fromkeys(parents)])] if parents else []
    return {"write_files": write_files, "bootcmd": bootcmd, "runcmd": made + links + starts}


def _write_file(op: FileOp, owner: str, mode: str) -> dict[str, Any]:
    """One write_files entry: UTF-8 text as a literal block, anything else base64; a file owned by someone other
    than root is written at the final stage (`defer`), once cloud-init has made the users."""
    data = op.content or b""
    text = _text(data)
    entry: dict[str, Any] = {"path": op.path, "owner": owner, "permissions": mode}
    if text is None:
        entry.update(encoding="b64", content=base64.b64encode(data).decode())
    else:
        entry["content"] = _Literal(text)
    if owner != "root:root":
        entry["defer"] = True
    return entry


def _text(data: bytes) -> str | None:
    """`data` as text if it is UTF-8 with no control characters but newlines and tabs (which YAML keeps as is)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return text if all(ch in "\n\t" or ch.isprintable() for ch in text) else None


def owner_names(ctx: BuildContext) -> Any:
    """uid, gid -> "user:group" by the reference tree's passwd and group (cloud-init takes names)."""
    users = {account.uid: name for name, account in reversed(list(accounts(ctx.view).items()))}
    group_names = {gid: name for name, gid in reversed(list(groups(ctx.view).items()))}

    def owner(uid: int, gid: int) -> str:
        if uid not in users or gid not in group_names:
            raise UserError(f"the plan gives a file the owner {uid}:{gid}, which a stock {ctx.target.os.pretty_name} "
                            "install has no name for: an x86 node's files must belong to system accounts")
        return f"{users[uid]}:{group_names[gid]}"
    return owner


def _meta_data(ctx: BuildContext, rendered: bytes) -> bytes:
    """The seed template's meta-data (the per-node instance-id), with local-hostname if it does not say one."""
    if "local-hostname" in (yaml.safe_load(rendered) or {}):
        return rendered
    return rendered + yaml.safe_dump({"local-hostname": ctx.node.name}).encode()


def _network_config(ctx: BuildContext, rendered: bytes) -> bytes | None:
    """The seed template's network-config for a fixed address (None: DHCP, cloud-init's and the installer's own
    default). x86 interfaces have no fixed name like a Pi's eth0: unless the profile names one, the entry matches
    the node's MAC from the inventory, else the target's interface names (`seed_interface_glob`: the first Ethernet
    name systemd gives, en*; none where the interface keeps the template's eth0)."""
    network = ctx.static_network()
    if network is None:
        return None
    glob = ctx.target.seed_interface_glob
    if (ctx.profile["network"] or {}).get("interface") or not (ctx.node.mac or glob):
        return rendered
    config = yaml.safe_load(rendered)
    entry = config["ethernets"].pop(network["interface"])
    match = {"macaddress": ctx.node.mac} if ctx.node.mac else {"name": glob}
    config["ethernets"]["cluster"] = {"match": match, **entry}
    return (b"# netplan v2 for cloud-init (pi-image): the cluster interface, matched by "
            + (b"its MAC" if ctx.node.mac else b"name") + b"\n"
            + yaml.safe_dump(config, sort_keys=False).encode())


def _autoinstall(ctx: BuildContext, cloud_config: str, network: bytes | None) -> bytes:
    """user-data for the Ubuntu live server installer: the whole disk (direct layout, no swap file: the kubelet
    refuses swap), OpenSSH, the network, and the node's cloud-config as the installed system's user-data. The
    identity section needs a password hash; without one the user-data's own user (key only) is the login."""
    keys, password = list(ctx.profile["ssh_authorized_keys"]), ctx.profile["password_hash"]
    user = ctx.profile["user"] or ctx.target.default_user
    autoinstall: dict[str, Any] = {"version": 1}
    if password:
        autoinstall["identity"] = {"hostname": ctx.node.name, "username": user, "password": password}
    autoinstall["ssh"] = {"install-server": True, "authorized-keys": keys, "allow-pw": bool(password)}
    autoinstall["storage"] = {"layout": {"name": "direct"}, "swap": {"size": 0}}
    if network is not None:
        autoinstall["network"] = yaml.safe_load(network)
    autoinstall["user-data"] = yaml.safe_load(cloud_config)
    return ("#cloud-config\n# Ubuntu autoinstall for node " + ctx.node.name + " (pi-image): boot the live server "
            "ISO with `autoinstall` on the kernel command line.\n"
            + yaml.dump({"autoinstall": autoinstall}, Dumper=_SeedDumper, sort_keys=False, allow_unicode=True,
                        width=4096)).encode()


def write_iso(documents: dict[str, bytes], handle: BinaryIO, epoch: int) -> None:
    """An ISO 9660 image with Joliet and Rock Ridge names, volume CIDATA, holding `documents`, into `handle`; every
    date is `epoch` in UTC, so the same documents give the same bytes."""
    iso = pycdlib.PyCdlib()
    with _pycdlib_clock(epoch):
        iso.new(interchange_level=1, vol_ident=VOLUME_ID, joliet=3, rock_ridge="1.09", app_ident_str="PI-IMAGE")
        for name, data in documents.items():
            iso.add_fp(io.BytesIO(data), len(data), f"/{ISO_NAMES[name]}", rr_name=name, joliet_path=f"/{name}",
                       file_mode=0o100444)
        iso.write_fp(handle)
    iso.close()


class _FixedClock:
    """The `time` module as pycdlib sees it during one write: now is `epoch`, and local time is UTC."""

    def __init__(self, epoch: int):
        self.epoch = float(epoch)

    def time(self) -> float:
        return self.epoch

    def localtime(self, seconds: float | None = None) -> struct_time:
        return time.gmtime(self.epoch if seconds is None else seconds)

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


@contextlib.contextmanager
def _pycdlib_clock(epoch: int) -> Iterator[None]:
    """pycdlib stamps volume, directory and Rock Ridge dates with time.time() in local time and takes no date:
    its modules see a fixed clock while the image is made (and the real `time` again after)."""
    modules = [module for name, module in list(sys.modules.items())
               if name.partition(".")[0] == "pycdlib" and getattr(module, "time", None) is time]
    clock = _FixedClock(epoch)
    for module in modules:
        module.time = clock  # type: ignore[attr-defined]
    try:
        yield
    finally:
        for module in modules:
            module.time = time  # type: ignore[attr-defined]


class _Literal(str):
    """Text written as a YAML literal block (`|`), where YAML allows one."""


class _Command(list):
    """A command (argv) written on one line, in YAML flow style."""


class _SeedDumper(yaml.SafeDumper):
    """safe_dump, with file content as literal blocks and commands on one line each."""


_SeedDumper.add_representer(_Literal, lambda dumper, data: dumper.represent_scalar("tag:yaml.org,2002:str", data,
                                                                                   style="|"))
_SeedDumper.add_representer(_Command, lambda dumper, data: dumper.represent_sequence("tag:yaml.org,2002:seq", data,
                                                                                     flow_style=True))
