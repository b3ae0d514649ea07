"""Every node's story as the workstation sees it: `pi-image status|approve`, `cluster sync`, the inventory pushed after
`cluster add-node|remove-node`, and the rows of the fleet page (`fleet_status`).

The master's token endpoint is asked over TLS pinned by the cluster's fingerprint, with the admin credential
(POST /v1/admin/status, approve, inventory: firstboot.protocol). In a cluster of several control planes every one
serves it: cluster.yaml's endpoint (the virtual IP) is asked first, then each control plane's own address in inventory
order (builder.cluster.several.fallback_endpoints), the one that answered last in this process first (`ask_master`);
what is printed names the one that answered, and one line names every one tried when none did. Its last answer is
kept in
DIR/state/last-status.json (0600), so that a master that cannot be reached still shows what it said, and how long
ago. The endpoint's state is read directly instead (`local_state_dir`) where the workstation serves the cluster
itself (`pi-image token-server --cluster DIR` runs here), where --state-dir or --local says so, and before any card of
the master exists (nothing to ask yet). Whichever it comes from, a node is one NodeRow.

Versions (issue 31): the master's answer says the API server's version, each node's kubelet version and its own
upgrade record; the view shows them against cluster.yaml's, and when cluster.yaml records an upgrade that every
control plane has finished, cluster.yaml moves to the new minor (settle_upgrade; builder/cluster/upgrade.py).
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from firstboot import protocol
from firstboot.client import (
    Answer,
    EndpointClient,
    EndpointUnreachable,
    PinMismatch,
    split_fix,
)
from firstboot.endpoint.state import NodeStore, database_path
from firstboot.endpoint.tokend import is_serving
from firstboot.protocol import PHASES

from ..config import addresses
from ..errors import UserError
from ..outputs import write_atomic
from . import Cluster, Node, finish_upgrade, inventory_lock, load_cluster, server_config
from .several import control_planes, fallback_endpoints
from .versions import kubelet_skew, minor_text

CACHE_NAME = "last-status.json"  # in the cluster's state directory
ADMIN_TIMEOUT = 20.0  # seconds for one admin exchange (a status may wait for kubectl on a slow master)
PUSH_TIMEOUT = 5.0  # `cluster add-node` does not wait longer for a master that is down
SOURCES = ("master", "local", "cache")


class MasterUnreachable(UserError):
    """No token endpoint asked answered (down, booting, another network): what it said last may help. `tried`:
    (HOST:PORT, why) of each endpoint asked, in order."""

    def __init__(self, tried: list[tuple[str, str]]) -> None:
        self.tried = list(tried)
        self.address = ", ".join(address for address, _ in tried)
        self.reason = "; ".join(reason for _, reason in tried)
        if len(tried) == 1:
            super().__init__(f"the master's token endpoint at {self.address} cannot be reached ({self.reason}): is "
                             "the master up (its first boot takes a few minutes)? Try again later")
        else:
            super().__init__(f"none of the cluster's token endpoints answered ({self.each()}): are the control planes "
                             "up (a first boot takes a few minutes)? Try again later")

    def each(self) -> str:
        """'192.168.6.5:8443 (No route to host), 192.168.6.11:8443 (Connection refused)'."""
        return ", ".join(f"{address} ({reason})" for address, reason in self.tried)

    def summary(self, now: str = "") -> str:
        """The master{now} cannot be reached, and why: the part of a line the callers build around it."""
        if len(self.tried) == 1:
            return f"the master {self.address} cannot be reached{now} ({self.reason})"
        return f"no control plane's token endpoint answered{now} ({self.each()})"


@dataclass
class Answered:
    """The answer of the first token endpoint that gave one (`address`), and those asked before it in vain."""

    answer: Answer
    address: str
    passed: list[tuple[str, str]] = field(default_factory=list)

    def note(self) -> list[str]:
        """A line for the reader when the answer did not come from the first endpoint asked."""
        if not self.passed:
            return []
        silent = ", ".join(f"{address} ({reason})" for address, reason in self.passed)
        return [f"{silent} did not answer: asked the control plane {self.address}"]


class Refused(UserError):
    """The token endpoint at `address` answered, and not with 200: `status` is its HTTP status."""

    def __init__(self, message: str, status: int, address: str) -> None:
        super().__init__(message)
        self.status = status
        self.address = address


@dataclass
class NodeRow:
    """One node as `pi-image status --json` and the fleet page show it (the one definition of that row).

    phase: the last of firstboot.protocol.PHASES the node reached (phases: each one's Unix time, on the master's
    clock), or "pending" (a node waiting for `pi-image approve`), else the endpoint's state for a node that told no
    story, else "not-seen". generation: the inventory's (its newest card); card_generation: the card the node last
    spoke with; newest_card: the two are the same. last_error and fix: its last failure and what fixes it (None once
    it got further). source: where the row comes from (SOURCES). Besides: state (the endpoint's: not-seen, pending,
    approved, token-issued, joined, failed), installed_from ("bundle" or "network"), network (the inventory's fixed
    address, or "dhcp"), kubelet_version (the Node's, from the API server: "v1.31.4"; None when unknown). Nothing
    secret: no credential, token or hash ever reaches a row.
    """

    node: str
    role: str | None
    address: str | None
    arch: str | None
    os: str | None
    generation: int | None
    card_generation: int | None
    newest_card: bool | None
    phase: str
    phases: dict[str, float]
    last_error: str | None
    fix: str | None
    updated: float | None
    source: str
    state: str = "not-seen"
    installed_from: str | None = None
    network: str | None = None
    kubelet_version: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class FleetView:
    """Rows and where they come from: `origin` for the header ("from the master H:P", "local state in DIR"),
    `fetched_at` (Unix time), `notes` (lines worth saying: the master's inventory is older than the directory's).
    Versions: `kubernetes_version` and `upgrade_to` (cluster.yaml's), `cluster_version` (the API server's, "v1.31.4",
    None when unknown) and `upgrade` (the answering master's upgrade record, firstboot/upgrade.py; None if none)."""

    rows: list[NodeRow]
    origin: str
    fetched_at: float
    notes: list[str] = field(default_factory=list)
    kubernetes_version: str | None = None
    upgrade_to: str | None = None
    cluster_version: str | None = None
    upgrade: dict | None = None


def fleet_status(cluster_dir: Path, endpoint: str | None = None) -> tuple[list[dict], str | None]:
    """Every node's row (NodeRow.to_dict()) as `pi-image status` shows it (select_view: the local state where it
    serves here, else the master, or `endpoint` HOST:PORT, asked now), and the one line to say about the master (None
    when it answered): what the fleet page shows.

    UserError (that line) when nothing is known: the master cannot be reached and never answered here, or refuses.
    """
    cluster = load_cluster(cluster_dir)
    view, away = select_view(cluster, local_state_dir(cluster, None, False, endpoint), endpoint)
    if view is None:
        raise UserError(str(away))
    return [row.to_dict() for row in view.rows], away


def select_view(cluster: Cluster, here: tuple[Path, str] | None,
                endpoint: str | None) -> tuple[FleetView | None, str | None]:
    """The rows to show (`here`: local_state_dir's answer, else the master's) and the one line to say when the
    master cannot be reached or predates `pi-image status` over the network: what it said last is then shown, if it
    ever answered here. Other refusals raise (UserError)."""
    if here is not None:
        return local_view(cluster, *here), None
    try:
        return remote_view(cluster, endpoint), None
    except MasterUnreachable as err:
        away = err.summary()
        never = "never answered here: nothing is known yet; is it up (its first boot takes a few minutes)?"
    except Refused as err:
        if err.status != 404:
            raise
        away = ("the master's card predates `pi-image status` over the network: rebuild and reflash it (or run "
                "`pi-image status --local` on it)")
        never = ""
    kept = cached_view(cluster, master_addresses(cluster, endpoint))
    if kept is None:
        return None, f"{away} and {never}" if never else away
    ago = duration(max(0.0, time.time() - kept.fetched_at))
    return kept, f"{away}: showing what it said {ago} ago" if never else f"{away}; showing what it said {ago} ago"


def master_address(cluster: Cluster, endpoint: str | None) -> str:
    """HOST:PORT of the token endpoint to ask first: --endpoint, else cluster.yaml's."""
    return addresses.host_port(endpoint, "--endpoint") if endpoint else cluster.endpoint


def master_addresses(cluster: Cluster, endpoint: str | None) -> list[str]:
    """Every token endpoint to ask, in order: --endpoint alone; else cluster.yaml's, then each other control plane's
    of several (none for one control plane), the one that answered last in this process moved first."""
    if endpoint:
        return [master_address(cluster, endpoint)]
    found = list(dict.fromkeys([cluster.endpoint, *fallback_endpoints(cluster)]))
    last = _answered.get(str(cluster.directory))
    return sorted(found, key=lambda address: address != last)


_answered: dict[str, str] = {}  # cluster directory -> the endpoint that answered last (status --watch, the dashboard)


def ask_master(cluster: Cluster, endpoint: str | None, request: Callable[[EndpointClient], Answer],
               timeout: float = ADMIN_TIMEOUT, addresses: list[str] | None = None,
               accept: tuple[int, ...] = (200,)) -> Answered:
    """admin_request() of each of `addresses` (else master_addresses()) in turn, until one answers; MasterUnreachable
    naming every one tried when none does (any other refusal is raised at once: an endpoint that answers speaks for
    the cluster). `accept`: the HTTP statuses that are answers."""
    tried: list[tuple[str, str]] = []
    for address in addresses or master_addresses(cluster, endpoint):
        try:
            answer = admin_request(cluster, address, request, timeout, accept)
        except MasterUnreachable as err:
            tried += err.tried
            continue
        _answered[str(cluster.directory)] = address
        return Answered(answer, address, tried)
    raise MasterUnreachable(tried)


def local_state_dir(cluster: Cluster, state_dir: Path | None, local: bool,
                    endpoint: str | None) -> tuple[Path, str] | None:
    """The endpoint state to read here instead of asking the master, and why (for the header), or None to ask it:
    --state-dir, --local, a token endpoint serving from DIR/state on this machine, or no master card built yet
    (unless --endpoint names one)."""
    if state_dir is not None:
        return state_dir, "--state-dir"
    if local:
        return cluster.state_dir, "--local"
    if endpoint is None and is_serving(str(cluster.state_dir)):
        return cluster.state_dir, "its token endpoint serves from there on this machine"
    if endpoint is None and not master_built(cluster):
        return cluster.state_dir, "no card of the master is built yet: there is no master to ask"
    return None


def master_built(cluster: Cluster) -> bool:
    """True once a card that serves join tokens may exist: a control plane's (or, where the inventory has none and
    `token-server` serves an existing cluster, any node's)."""
    masters = [node for node in cluster.nodes if node.role == "control-plane"]
    return any(node.generation for node in masters or cluster.nodes)


def remote_view(cluster: Cluster, endpoint: str | None = None) -> FleetView:
    """The master's answer now (kept in DIR/state/last-status.json); MasterUnreachable or UserError."""
    answered = ask_master(cluster, endpoint, lambda client: client.admin_status())
    fetched_at = time.time()
    _keep(cluster, {"endpoint": answered.address, "fetched_at": fetched_at, "answer": answered.answer.payload})
    view = _view(cluster, answered.answer.payload, f"from the master {answered.address}", fetched_at, "master")
    view.notes[:0] = answered.note() + settle_upgrade(cluster, view)
    return view


def settle_upgrade(cluster: Cluster, view: FleetView) -> list[str]:
    """When cluster.yaml records an upgrade and the master's answer shows every control plane (and the API server)
    running its minor: cluster.yaml moves to it (finish_upgrade, under the inventory lock). A note saying so, or
    what is left: the control planes still to upgrade, and the command that does it."""
    to = cluster.upgrade_to
    if to is None or minor_text(view.cluster_version) != to:
        return []
    kubelets = {row.node: minor_text(row.kubelet_version) for row in view.rows}
    behind = [node.name for node in control_planes(cluster) if kubelets.get(node.name) != to]
    if behind and (view.upgrade or {}).get("state") == "running":
        return []
    if behind:
        return [f"the API server runs {view.cluster_version}; control plane(s) {', '.join(behind)} not yet at {to}: "
                f"`pi-image cluster upgrade {cluster.directory}` upgrades them"]
    if not finish_upgrade(cluster.directory, to):
        return []
    view.kubernetes_version, view.upgrade_to = to, None
    cluster.kubernetes_version, cluster.upgrade_to, cluster.kubernetes_release = to, None, None
    return [f"every control plane runs {to}: {cluster.directory / 'cluster.yaml'} now says kubernetes_version {to} "
            "(cards built from now on get it)"]


def cached_view(cluster: Cluster, endpoints: list[str]) -> FleetView | None:
    """What one of the token endpoints `endpoints` said last (rows with source "cache"), or None if none of them
    ever answered here."""
    try:
        kept = json.loads((cluster.state_dir / CACHE_NAME).read_text())
        if kept["endpoint"] not in endpoints:
            return None
        return _view(cluster, kept["answer"], f"from the master {kept['endpoint']}", float(kept["fetched_at"]),
                     "cache")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def local_view(cluster: Cluster, state_dir: Path, why: str = "") -> FleetView:
    """The endpoint's state in `state_dir` (nothing created where none is: every node is then not-seen)."""
    records = list(recorded_nodes(state_dir).values())
    origin = f"local state in {state_dir}" + (f" ({why})" if why else "")
    return _view(cluster, {"nodes": records}, origin, time.time(), "local")


@contextlib.contextmanager
def node_store(state_dir: Path) -> Iterator[NodeStore]:
    """The endpoint's state in `state_dir`, closed afterwards; a directory that cannot be used is a UserError."""
    try:
        store = NodeStore(str(state_dir))
    except (OSError, sqlite3.Error) as err:
        raise _unusable_state(state_dir, err) from None
    try:
        yield store
    except sqlite3.Error as err:
        raise UserError(f"{database_path(str(state_dir))}: {err}") from None
    finally:
        store.close()


def recorded_nodes(state_dir: Path) -> dict[str, dict]:
    """The endpoint's row of every node it has seen or an operator approved, by name; none (and nothing created)
    where no endpoint or approval wrote yet."""
    try:
        seen = Path(database_path(str(state_dir))).exists()
    except OSError as err:
        raise _unusable_state(state_dir, err) from None
    if not seen:
        return {}
    with node_store(state_dir) as store:
        return {row["name"]: row for row in store.all()}


def _unusable_state(state_dir: Path, err: Exception) -> UserError:
    reason = getattr(err, "strerror", None) or err
    return UserError(f"cannot use the token endpoint's state in {state_dir}: {reason}; fix its permissions (or run "
                     "as the user the endpoint runs as), or pass --state-dir DIR")


def _view(cluster: Cluster, answer: dict, origin: str, fetched_at: float, source: str) -> FleetView:
    records = {str(record["name"]): record for record in answer.get("nodes") or [] if isinstance(record, dict)}
    inventory = {node.name: node for node in cluster.nodes}
    rows = [_row(name, records.get(name), inventory.get(name), source)
            for name in sorted(set(records) | set(inventory))]
    upgrade = answer.get("upgrade")
    return FleetView(rows, origin, fetched_at, _drift(cluster, answer.get("inventory")), cluster.kubernetes_version,
                     cluster.upgrade_to, _text(answer.get("cluster_version")),
                     upgrade if isinstance(upgrade, dict) else None)


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _row(name: str, record: dict | None, node: Node | None, source: str) -> NodeRow:
    record = record or {}
    facts = record.get("facts") or {}
    told = record.get("phases") or {}
    phases = {phase: float(told[phase]) for phase in PHASES if isinstance(told.get(phase), (int, float))}
    role = node.role if node else None
    state = record.get("state") or "not-seen"
    last_error, fix = record.get("last_error"), None
    if last_error:
        problem, embedded = split_fix(last_error)
        last_error, fix = (problem if embedded else last_error), record.get("fix") or embedded
    generation = node.generation if node else None
    card = record.get("card_generation")
    fixed = node.address.split("/")[0] if node and node.address else None
    return NodeRow(
        node=name, role=role, address=facts.get("node_ip") or fixed, arch=facts.get("arch"), os=facts.get("os"),
        generation=generation, card_generation=card,
        newest_card=None if generation is None or card is None else card == generation,
        phase=current_phase(state, phases, role), phases=phases, last_error=last_error, fix=fix,
        updated=record.get("updated_at"), source=source, state=state, installed_from=record.get("installed_from"),
        network=(node.address or "dhcp") if node else None, kubelet_version=_text(record.get("kubelet_version")))


def current_phase(state: str, phases: dict[str, float], role: str | None) -> str:
    """The row's phase (see NodeRow)."""
    if state == "pending" and role != "control-plane":  # a control plane's row is made before it can be approved
        return "pending"
    reached = [phase for phase in PHASES if phase in phases]
    return reached[-1] if reached else state


def _drift(cluster: Cluster, master: object) -> list[str]:
    """A note when the inventory the master goes by lacks nodes of the directory's or knows older cards."""
    if not isinstance(master, dict):
        return []
    behind = sorted(node.name for node in cluster.nodes
                    if not isinstance(master.get(node.name), int) or master[node.name] < node.generation)
    extra = sorted(set(master) - {node.name for node in cluster.nodes})
    if not behind and not extra:
        return []
    what = ", ".join([f"{name} missing or older there" for name in behind] + [f"{name} removed here" for name in extra])
    note = (f"the master's inventory is not {cluster.directory / 'inventory.yaml'} ({what}): "
            f"`pi-image cluster sync {cluster.directory}` pushes it")
    return [note]


def _keep(cluster: Cluster, record: dict) -> None:
    """Best effort: the master's answer, for when it cannot be reached (a directory we cannot write keeps none)."""
    try:
        cluster.state_dir.mkdir(mode=0o700, exist_ok=True)
        write_atomic(cluster.state_dir / CACHE_NAME, json.dumps(record, sort_keys=True) + "\n")
    except OSError:
        pass


def admin_request(cluster: Cluster, address: str, request: Callable[[EndpointClient], Answer],
                  timeout: float = ADMIN_TIMEOUT, accept: tuple[int, ...] = (200,)) -> Answer:
    """One admin request to the token endpoint at `address`; its answer if its status is one of `accept`, else one
    line that says why:
    MasterUnreachable (down or booting), the card and the directory disagree (another certificate), a stale admin
    credential (the master's card was built from another copy of the directory), the endpoint's own refusal."""
    client = EndpointClient(address, cluster.endpoint_fingerprint, protocol.ADMIN_NAME, cluster.admin_credential(),
                            timeout=timeout)
    try:
        answer = request(client)
    except PinMismatch as err:
        presented = str(err).split(" presented certificate ", 1)[-1].split(" ", 1)[0]
        raise UserError(f"the master at {address} presents certificate {presented} but "
                        f"{cluster.directory / 'cluster.yaml'} pins {cluster.endpoint_fingerprint}: the card and the "
                        "directory disagree (the master was built from another cluster directory, or this one was "
                        "made again); use the directory its card was built from, or build and flash the master again "
                        "from this one") from None
    except EndpointUnreachable as err:
        raise MasterUnreachable([(address, _why(err))]) from None
    if answer.status == 401 and "nonce" not in answer.error:
        raise UserError(f"the master at {address} refused the admin credential of {cluster.directory} (its "
                        f"secrets/enrollment.key is not the one the master's card was built with): use the directory "
                        "the master was built from, or build and flash the master again from this one")
    if answer.status == 429:
        raise UserError(f"the master at {address} is answering too many admin requests: ask again in "
                        f"{int(answer.retry_after or 30)} s")
    if answer.status not in accept:
        raise Refused(f"the token endpoint at {address} refused: {answer.error}", answer.status, address)
    return answer


def _why(err: Exception) -> str:
    """'Connection refused' of 'cannot reach 10.0.2.2:8443: [Errno 111] Connection refused'."""
    reason = str(err).rsplit(": ", 1)[-1]
    return reason.split("] ", 1)[-1]


def approve(cluster: Cluster, name: str, replace: bool, endpoint: str | None) -> tuple[str, str]:
    """Approve `name` on the master (telling it whether this directory's inventory lists it); the endpoint's state
    of it afterwards, and the endpoint that answered. A name it never heard of and the inventory does not list: one
    line saying how to add it."""
    listed = any(node.name == name for node in cluster.nodes)
    try:
        answered = ask_master(cluster, endpoint, lambda client: client.admin_approve(name, replace, listed))
    except Refused as err:
        if err.status != 404:
            raise
        raise UserError(f"node {name!r} is in no inventory and has not asked to join the master at "
                        f"{err.address}: nothing to approve; add it with `pi-image cluster add-node "
                        f"{cluster.directory} {name} --profile PROFILE`, or approve it once `pi-image status` shows it "
                        "pending") from None
    return str(answered.answer.payload.get("state")), answered.address


def push_inventory(cluster: Cluster, endpoint: str | None = None) -> str:
    """Push the inventory as saved in the cluster directory to the master when it answers (`cluster sync`); one line
    that says it was pushed, or why not and exactly what to run later. Never raises for a master that is away.

    Read and pushed under the inventory's lock (the push waits PUSH_TIMEOUT at most): two pushes reach the master
    in the order their inventories were saved, so the last one it keeps is the newest."""
    with inventory_lock(cluster.directory):
        return _push_inventory(load_cluster(cluster.directory), endpoint)


def _push_inventory(cluster: Cluster, endpoint: str | None) -> str:
    later = f"`pi-image cluster sync {cluster.directory}`"
    if is_serving(str(cluster.state_dir)):
        return f"the token endpoint serving from {cluster.state_dir} here reads {cluster.directory} itself"
    if not master_built(cluster):
        return "no card of the master is built yet: it will carry this inventory"
    nodes = server_config(cluster)["nodes"]
    try:
        answered = ask_master(cluster, endpoint, lambda client: client.admin_sync_inventory(nodes), PUSH_TIMEOUT)
    except MasterUnreachable as err:
        if len(err.tried) == 1:
            return f"the master at {err.address} cannot be reached now ({err.reason}): run {later} once it is up"
        return f"{err.summary(' now')}: run {later} once one is up"
    except Refused as err:
        if err.status == 409:  # an endpoint run from a cluster directory reads that inventory itself
            return f"the token endpoint at {err.address} reads its cluster directory's own inventory: nothing to push"
        return f"the inventory was not pushed: {err}; then run {later}"
    except UserError as err:
        return f"the inventory was not pushed: {err}; then run {later}"
    return (f"pushed the inventory to the master at {answered.address}: it knows "
            f"{answered.answer.payload.get('nodes')} node(s)" + "".join(f" ({line})" for line in answered.note()))


def status_lines(view: FleetView, now: float) -> list[str]:
    """What `pi-image status` prints: where the rows come from and when, the cluster's versions and its upgrade's
    phase (versions_lines), a line per node (its phase, address, architecture, OS, card, kubelet, last news), and
    under it its story (each phase with how long it took to get there from the one before) and its last error with
    the fix."""
    when = time.strftime("%H:%M:%S", time.localtime(view.fetched_at))
    lines = [f"{view.origin}, at {when}" + (f" ({_age(view.fetched_at, now)})" if now - view.fetched_at > 5 else "")]
    lines += versions_lines(view, now) + view.notes
    table = [("NODE", "ROLE", "PHASE", "ADDRESS", "ARCH", "OS", "CARD", "KUBELET", "UPDATED")]
    table += [(row.node, row.role or "-", row.phase + (", failed" if row.state == "failed" else ""),
               row.address or "-", row.arch or "-", row.os or "-", _card(row), _kubelet(view, row),
               _age(row.updated, now))
              for row in view.rows]
    widths = [max(len(cells[column]) for cells in table) for column in range(len(table[0]))]
    for index, cells in enumerate(table):
        lines.append("  ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True)).rstrip())
        row = view.rows[index - 1] if index else None
        if row and row.phases:
            lines.append("    " + story_text(row.phases, row.installed_from))
        if row and row.last_error:
            lines.append(f"    error: {row.last_error}")
            lines.extend([f"    fix: {row.fix}"] if row.fix else [])
    return lines


def versions_lines(view: FleetView, now: float) -> list[str]:
    """'Kubernetes 1.31 (cluster.yaml), API server v1.31.4, upgrading to 1.32' and, while the answering master has an
    upgrade record, its node, phase and state, with its error and fix when it failed."""
    if view.kubernetes_version is None:
        return []
    line = f"Kubernetes {view.kubernetes_version} (cluster.yaml)"
    line += f", API server {view.cluster_version}" if view.cluster_version else ""
    line += f", upgrading to {view.upgrade_to}" if view.upgrade_to else ""
    lines = [line]
    record = view.upgrade
    if record:
        lines.append(f"upgrade of {record.get('node')} to {record.get('to')} ({record.get('mode')}): "
                     f"{record.get('state')}, phase {record.get('phase')}"
                     + (f", release {record['release']}" if record.get("release") else "")
                     + f", updated {_age(record.get('updated_at'), now)}")
        if record.get("state") == "failed":
            lines.append(f"    error: {record.get('error')}")
            lines.extend([f"    fix: {record['fix']}"] if record.get("fix") else [])
    return lines


def _kubelet(view: FleetView, row: NodeRow) -> str:
    """The row's kubelet version against the API server's (else cluster.yaml's minor): 'v1.31.4', '-',
    'v1.27.3 (outside the skew policy)'."""
    if row.kubelet_version is None:
        return "-"
    reference = minor_text(view.cluster_version) or view.kubernetes_version
    outside = reference and kubelet_skew(row.kubelet_version, reference)
    return row.kubelet_version + (" (outside the skew policy)" if outside else "")


def story_text(phases: dict[str, float], installed_from: str | None = None) -> str:
    """'booted 14:00:01, local-setup 3s, runtime-installed 2m10s (bundle), ...': each phase with the time it took
    to get there from the one before."""
    parts, before = [], None
    for phase in (name for name in PHASES if name in phases):
        at = phases[phase]
        took = time.strftime("%H:%M:%S", time.localtime(at)) if before is None else duration(at - before)
        parts.append(f"{phase} {took}" + (f" ({installed_from})" if phase == "runtime-installed" and installed_from
                                            else ""))
        before = at
    return ", ".join(parts)


def duration(seconds: float) -> str:
    """3s, 2m10s, 1h05m, 2d03h ('?' for a time clearly negative: a clock that jumped; the API server says its times
    to the second)."""
    if seconds <= -2:
        return "?"
    whole = max(0, round(seconds))
    for unit, size, small, small_size in (("d", 86400, "h", 3600), ("h", 3600, "m", 60), ("m", 60, "s", 1)):
        if whole >= size:
            return f"{whole // size}{unit}{(whole % size) // small_size:02d}{small}"
    return f"{whole}s"


def _age(at: float | None, now: float) -> str:
    return "-" if at is None else f"{duration(max(0.0, now - at))} ago"


def _card(row: NodeRow) -> str:
    """The card the node spoke with against the newest made: '2 newest', '1, newest 3', '-'."""
    if row.card_generation is None:
        return "not built" if row.generation == 0 else "-"
    if row.newest_card is None:
        return str(row.card_generation)
    return f"{row.card_generation} newest" if row.newest_card else f"{row.card_generation}, newest {row.generation}"
