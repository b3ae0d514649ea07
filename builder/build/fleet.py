"""`pi-image build --all` (and `pi-image bundle`): one build per inventory node, each from its own base.

    inventory --plan_fleet--> one BuildRequest per card node (control planes last; x86 nodes skipped: a seed ISO)
              --attempt each--> a BuildResult, or a Failure with its one-line reason; the next node goes on

A node keeps the base its inventory entry names, else its profile's; `--base` fills only the nodes that name none,
and each of them is listed (`FleetMember.filled`), so a Kali node is never built from the Ubuntu file given for the
others. A node that fails bumps no generation (builder.build records it only once the image is complete), and the
control planes are still built: their cards carry the inventory with every built node's newest generation.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from ..bases.catalog import default_base
from ..cluster import Node, load_cluster
from ..config.profiles import load_profile
from ..errors import UserError
from ..targets import MACHINE_TARGETS, targets_of
from . import BuildRequest

T = TypeVar("T")


@dataclass(frozen=True)
class FleetMember:
    """One node's build in a fleet: what it is built from and whether --base chose that."""

    node: Node
    request: BuildRequest
    base: str | None  # as the user would name it: the inventory's, the profile's, --base, or the catalog default
    filled: bool = False  # the node names no base of its own: --base gave it


@dataclass(frozen=True)
class Fleet:
    """Every card node of a cluster, in build order, and the x86 nodes left to `pi-image seed-iso`."""

    directory: Path  # the cluster's
    members: list[FleetMember]
    x86: list[Node]
    base_unused: bool = False  # --base was given, but every node names its own


@dataclass(frozen=True)
class Failure:
    """A node the fleet could not build, and why (the error's one line)."""

    member: FleetMember
    error: str


def plan_fleet(request: BuildRequest, output: Path | None) -> Fleet:
    """One request per inventory node of request.cluster that gets a card, control planes last; OUTPUT is the
    directory every NODE.img goes to. UserError for what stops the whole fleet (no cluster, no nodes, OUTPUT a file);
    a node's own problems (its profile, its base) are its build's failure, found when it is attempted."""
    if not request.cluster:
        raise UserError("--all needs --cluster DIR")
    directory = output or Path(".")
    if directory.exists() and not directory.is_dir():
        raise UserError(f"--output {directory}: with --all it is the directory every NODE.img goes to, and "
                        f"{directory} is a file: pick a directory")
    cluster = load_cluster(request.cluster)
    if not cluster.nodes:
        raise UserError(f"{request.cluster}/inventory.yaml has no nodes: add some with `pi-image cluster add-node`")
    # control planes last: their card carries the endpoint's copy of the inventory, with every node's newest card
    nodes = sorted(cluster.nodes, key=lambda n: n.role == "control-plane")
    members, x86 = [], []
    for node in nodes:
        profile_base, target = _profile_facts(node, request)
        if target in MACHINE_TARGETS:
            x86.append(node)
            continue
        own = node.base or profile_base
        filled = own is None and request.base is not None
        one = dataclasses.replace(request, node=node.name, profile=None, base=request.base if filled else None,
                                  output=directory / f"{node.name}.img")
        members.append(FleetMember(node, one, own or request.base or _default(target), filled))
    if not members:
        raise UserError(f"{request.cluster}/inventory.yaml: every node is an x86 machine, made with `pi-image "
                        f"seed-iso --cluster {request.cluster} --node NAME`: no card to build")
    unused = request.base is not None and not any(m.filled for m in members)
    return Fleet(request.cluster, members, x86, unused)


def _profile_facts(node: Node, request: BuildRequest) -> tuple[str | None, str | None]:
    """The base and the target the node's profile names (None, None for a profile that cannot be loaded: its build
    fails with the reason)."""
    try:
        profile = load_profile(node.profile, request.sets)
    except UserError:
        return None, None
    return profile["base"], profile["target"]


def _default(target: str | None) -> str | None:
    """The catalog's default base for a profile's target (what the build falls back to), for the table."""
    try:
        return default_base(targets_of(target)) if target else None
    except UserError:
        return None


def attempt(member: FleetMember, action: Callable[[BuildRequest], T]) -> T | Failure:
    """Run `action` (a build, a plan) for one node: its result, or its Failure for a UserError or an OSError."""
    try:
        return action(member.request)
    except UserError as err:
        return Failure(member, str(err))
    except OSError as err:  # a full disk, an unreadable file: said as the CLI says it for one build
        where = f"{err.filename}: " if err.filename else ""
        return Failure(member, f"{where}{err.strerror or err}")


def failed_summary(failures: list[Failure], total: int, cluster: Path) -> str:
    """The one line a fleet with failures ends with (exit 1)."""
    names = ", ".join(f.member.node.name for f in failures)
    return (f"{len(failures)} of {total} nodes not built ({names}: each said why above; their cards and generations "
            f"are unchanged): fix that and run the same command again, or build each with `pi-image build --cluster "
            f"{cluster} --node NAME` and then `pi-image cluster sync {cluster}`")
