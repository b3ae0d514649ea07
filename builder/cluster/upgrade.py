"""`pi-image cluster upgrade DIR --to 1.32`: a running cluster moves one Kubernetes minor up, its control planes in
place (issue 31; the device side: firstboot/upgrade.py, the endpoint's POST /v1/admin/upgrade).

    1. checked before anything changes (prepare_upgrade): a minor pi-image knows, one above the cluster's
       (builder/cluster/versions.py), no other upgrade recorded or running, the packages path (the release path and
       offline clusters: not yet), every node's kubelet inside the skew policy under the new version (the master's
       status answer says each one's), and the master answers (every endpoint tried is named when none does)
    2. `apply` pushed to the first control plane's endpoint (inventory order; the next when one cannot be reached,
       as `pi-image status` asks), then upgrade_to recorded in cluster.yaml; with several control planes, `node`
       pushed to each other one in turn once the one before is done
    3. waited for (unless --no-wait): each phase as the answering master's status reports it, up to WAIT_SECONDS
       per control plane; a failure is its phase, its line and its fix (exit 1); when every control plane runs the
       new minor, cluster.yaml's kubernetes_version becomes it (finish_upgrade; `pi-image status` does the same
       when it sees it first)

Run again, the same command resumes: a control plane that is done answers "done", one still running is waited for,
one that failed is pushed again (its agent goes on from the phase that failed). Workers stay at their version until
reflashed (a kubelet may trail the API server by three minors).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from firstboot import protocol
from firstboot.client import Answer, EndpointClient

from ..config.profiles import load_profile
from ..errors import UserError
from ..targets import target_class, targets_of
from . import Cluster, Node, finish_upgrade, record_upgrade
from .several import control_planes, endpoint_port, several_control_planes
from .status import MasterUnreachable, Refused, admin_request, ask_master, master_addresses
from .versions import check_step, kubelet_skew, minor_text

WAIT_SECONDS = 30 * 60  # per control plane: kubeadm's apply alone may take ten minutes on a Raspberry Pi
POLL_SECONDS = 5.0
STARTED, DONE = 202, 200  # the endpoint's answers to a push
Say = Callable[[str], None]


@dataclass
class Step:
    """One control plane's part: `mode` apply (the first) or node, the endpoint(s) it is pushed to, and what came
    back: state started | done | running (pushed before and still going), the record its endpoint reported last."""

    node: str
    mode: str
    addresses: list[str]
    state: str = "waiting"
    address: str | None = None
    record: dict = field(default_factory=dict)
    took: float | None = None

    def to_dict(self) -> dict:
        return {"node": self.node, "mode": self.mode, "address": self.address, "state": self.state,
                "release": self.record.get("release"), "phases": self.record.get("phases") or {}}


@dataclass
class Upgrade:
    """A checked upgrade of `cluster` from its kubernetes_version to `to`: the control planes' steps in order, each
    node's kubelet as the master reported it, and whether it resumes one cluster.yaml records."""

    cluster: Cluster
    to: str
    steps: list[Step]
    kubelets: dict[str, str | None]
    cluster_version: str | None
    resumed: bool

    @property
    def start(self) -> str:
        return self.cluster.kubernetes_version

    def to_dict(self, done: bool) -> dict:
        return {"directory": str(self.cluster.directory), "from": self.start, "to": self.to,
                "state": "done" if done else "started", "cluster_version": self.cluster_version,
                "control_planes": [step.to_dict() for step in self.steps], "nodes": outlook(self)}


def prepare_upgrade(cluster: Cluster, to: str | None, endpoint: str | None = None) -> Upgrade:
    """The upgrade `cluster upgrade DIR [--to 1.NN] [--endpoint HOST:PORT]` asks for, checked (see the module
    docstring); nothing changed. Without `to`, the one cluster.yaml records (resumed); `endpoint`: the only one asked
    for the first control plane (and the only control plane's)."""
    directory = cluster.directory
    target = to or cluster.upgrade_to
    if target is None:
        raise UserError(f"cluster upgrade: --to 1.NN is needed: {directory} runs Kubernetes "
                        f"{cluster.kubernetes_version} (the next minor is {_next(cluster.kubernetes_version)})")
    if cluster.upgrade_to and minor_text(target) != cluster.upgrade_to:
        raise UserError(f"cluster upgrade: the upgrade to {cluster.upgrade_to} recorded in "
                        f"{directory / 'cluster.yaml'} is not finished: finish it first (`pi-image cluster upgrade "
                        f"{directory}`; `pi-image status --cluster {directory}` shows where it is)")
    resumed = cluster.upgrade_to is not None
    target = cluster.upgrade_to or check_step(cluster.kubernetes_version, target, f"--to {target}")
    _refuse_not_yet(cluster)
    masters = control_planes(cluster)
    if not any(node.generation for node in masters):
        raise UserError(f"cluster upgrade: no control plane of {directory / 'inventory.yaml'} has a card yet: nothing "
                        f"runs to upgrade; the cards to build take `pi-image cluster set {directory} "
                        f"kubernetes_version={target}` while none is built")
    first = apply_addresses(cluster, endpoint)
    answered = ask_master(cluster, None, lambda client: client.admin_status(), addresses=first)
    payload = answered.answer.payload
    kubelets = {str(row.get("name")): row.get("kubelet_version") for row in payload.get("nodes") or []
                if isinstance(row, dict)}
    _refuse_running(cluster, target, payload.get("upgrade"), answered.address)
    _refuse_skew(cluster, target, kubelets)
    steps = [Step(masters[0].name, "apply", first)]
    steps += [Step(node.name, "node", [own_address(cluster, node, endpoint)]) for node in masters[1:]]
    return Upgrade(cluster, target, steps, kubelets, payload.get("cluster_version"), resumed)


def _next(minor: str) -> str:
    major, number = protocol.minor_version(minor)
    return f"{major}.{number + 1}"


def _refuse_not_yet(cluster: Cluster) -> None:
    """This round upgrades nodes that get Kubernetes from the apt repository: not an offline cluster, not a node
    of the release path (its profile's kube_install, else its target's)."""
    fix = "upgrade it by hand with kubeadm (kubernetes.io/docs/tasks/administer-cluster/kubeadm/kubeadm-upgrade)"
    if cluster.offline:
        raise UserError(f"cluster upgrade: not yet: {cluster.directory} is an offline cluster (its cards carry their "
                        f"packages; `cluster upgrade` moves the apt repository of online nodes only): {fix}")
    for node in cluster.nodes:
        profile = load_profile(node.profile, {})
        target = profile["target"]
        defaults = {getattr(target_class(name), "kube_install", "packages") for name in targets_of(target or "")}
        method = profile["kube_install"] or ("release" if target and defaults == {"release"} else "packages")
        if method == "release" or profile["offline"]:
            what = "the upstream release (kube_install: release)" if method == "release" else "an offline bundle"
            raise UserError(f"cluster upgrade: not yet: node {node.name} (profile {node.profile}) gets Kubernetes "
                            f"from {what}, and `cluster upgrade` moves the apt repository of online nodes only: {fix}")


def _refuse_running(cluster: Cluster, to: str, record: object, address: str) -> None:
    """Another upgrade running on the master that answered (its record, firstboot/upgrade.py)."""
    if not isinstance(record, dict) or record.get("state") != "running" or record.get("to") == to:
        return
    raise UserError(f"cluster upgrade: an upgrade to {record.get('to')} is running on {record.get('node')} (phase "
                    f"{record.get('phase')}, its endpoint {address}): wait for it (`pi-image status --cluster "
                    f"{cluster.directory} --watch`)")


def _refuse_skew(cluster: Cluster, to: str, kubelets: dict[str, str | None]) -> None:
    """A node whose kubelet would be outside the skew policy once the API server runs `to`."""
    for name, version in kubelets.items():
        problem = kubelet_skew(version, to)
        if problem:
            raise UserError(f"cluster upgrade: node {name}: under Kubernetes {to}, {problem}: reflash it with a card "
                            f"of the cluster's {cluster.kubernetes_version} first (`pi-image build --cluster "
                            f"{cluster.directory} --node {name}`), then upgrade")


def apply_addresses(cluster: Cluster, endpoint: str | None = None) -> list[str]:
    """Where `apply` goes: --endpoint alone; else every control plane's own endpoint in inventory order where there
    are several, else the cluster's endpoint (master_addresses)."""
    if endpoint or not several_control_planes(cluster):
        return master_addresses(cluster, endpoint)
    return [own_address(cluster, node) for node in control_planes(cluster)]


def own_address(cluster: Cluster, node: Node, endpoint: str | None = None) -> str:
    """The token endpoint on control plane `node` itself: ADDRESS:PORT (for a single one: --endpoint, else the
    cluster's)."""
    if not several_control_planes(cluster) or not node.address:
        return master_addresses(cluster, endpoint)[0]
    return f"{node.address.split('/')[0]}:{endpoint_port(cluster)}"


def outlook(upgrade: Upgrade) -> list[dict]:
    """What happens to each inventory node: {node, role, kubelet_version, action}."""
    directory, to, first = upgrade.cluster.directory, upgrade.to, upgrade.steps[0].node
    rows = []
    for node in upgrade.cluster.nodes:
        if node.role == "control-plane":
            action = (f"upgraded in place to {to} (kubeadm upgrade apply; drained, kubelet restarted, uncordoned)"
                      if node.name == first else
                      f"upgraded in place to {to} after {first} (kubeadm upgrade node; drained, kubelet restarted)")
        else:
            action = (f"stays at {upgrade.start} (a kubelet may trail the API server by three minors); to move it, "
                      f"reflash it once the control plane runs {to}: `pi-image build --cluster {directory} --node "
                      f"{node.name}`")
        rows.append({"node": node.name, "role": node.role, "kubelet_version": upgrade.kubelets.get(node.name),
                     "action": action})
    return rows


def run_upgrade(upgrade: Upgrade, wait: bool, say: Say) -> bool:
    """Push each control plane's step in turn (see the module docstring); True once every one is done and
    cluster.yaml moved to the new minor, False when --no-wait left one started or running."""
    for index, step in enumerate(upgrade.steps):
        _push(upgrade, step)
        if index == 0:
            record_upgrade(upgrade.cluster.directory, upgrade.to)
        if step.state != "done":
            if not wait:
                return False
            _wait(upgrade, step, say)
        say(f"{step.node}: runs {upgrade.to}" + (f" ({step.record['release']})" if step.record.get("release") else ""))
    finish_upgrade(upgrade.cluster.directory, upgrade.to)
    return True


def _push(upgrade: Upgrade, step: Step) -> None:
    """POST /v1/admin/upgrade for `step`: started (202), done (200), or running when the endpoint refuses because
    this very upgrade runs there (409 and its record says so); any other refusal is the endpoint's line."""

    def request(client: EndpointClient) -> Answer:
        return client.admin_upgrade(upgrade.to, step.mode)

    try:
        answered = ask_master(upgrade.cluster, None, request, addresses=step.addresses, accept=(STARTED, DONE))
    except Refused as err:
        record = _record_or_none(upgrade, err.address) if err.status == 409 else None
        if record is None or record.get("state") != "running":
            if err.status == 404:
                raise UserError(f"the token endpoint at {err.address} has no upgrade request (its card predates "
                                "`pi-image cluster upgrade`): upgrade that control plane by hand with kubeadm "
                                "(kubernetes.io/docs/tasks/administer-cluster/kubeadm/kubeadm-upgrade)") from None
            raise
        step.state, step.address, step.record = "running", err.address, record
        step.node = str(record.get("node") or step.node)
        return
    payload = answered.answer.payload
    step.state = "done" if answered.answer.status == DONE else "started"
    step.address, step.node = answered.address, str(payload.get("node") or step.node)


def _record_or_none(upgrade: Upgrade, address: str) -> dict | None:
    """_record(), None too when the endpoint cannot say."""
    try:
        return _record(upgrade, address)
    except UserError:
        return None


def _wait(upgrade: Upgrade, step: Step, say: Say) -> None:
    """Until `step`'s control plane records its upgrade done: a progress line for each phase it reports (and when
    its endpoint stops answering); UserError when it failed, or after WAIT_SECONDS."""
    assert step.address is not None
    began, shown = time.monotonic(), ""
    while True:
        try:
            record = _record(upgrade, step.address)
        except (MasterUnreachable, Refused) as err:  # a master restarting its kubelet or API server: transient
            reason = err.reason if isinstance(err, MasterUnreachable) else str(err)
            record, line = None, f"{step.node}: its endpoint {step.address} does not answer ({reason}); waiting"
        else:
            line = _progress(step.node, record, upgrade.to) if record else ""
        took = time.monotonic() - began
        if line and line != shown:
            say(f"{line} ({int(took)}s)")
            shown = line
        if record and record.get("state") == "done":
            step.state, step.record, step.took = "done", record, took
            return
        if record and record.get("state") == "failed":
            fix = record.get("fix") or f"see `journalctl -u pi-image-upgrade` on {step.node}"
            raise UserError(f"{step.node}: the upgrade to {upgrade.to} failed in phase {record.get('phase')}: "
                            f"{record.get('error')}; {fix}; then run `pi-image cluster upgrade "
                            f"{upgrade.cluster.directory}` again (it resumes)")
        if took > WAIT_SECONDS:
            raise UserError(f"{step.node}: the upgrade to {upgrade.to} is not done after {WAIT_SECONDS // 60} min "
                            f"({shown or 'no news'}): `pi-image status --cluster {upgrade.cluster.directory} --watch` "
                            f"follows it, `pi-image cluster upgrade {upgrade.cluster.directory}` waits again")
        time.sleep(POLL_SECONDS)


def _record(upgrade: Upgrade, address: str) -> dict | None:
    """The upgrade record in the status answer of the master at `address` if it is this upgrade's (of another
    minor, or none: None); MasterUnreachable when the endpoint does not answer, UserError when it refuses."""
    answer = admin_request(upgrade.cluster, address, lambda client: client.admin_status())
    record = answer.payload.get("upgrade")
    return record if isinstance(record, dict) and record.get("to") == upgrade.to else None


def _progress(node: str, record: dict, to: str) -> str:
    """'pi-master1: kubeadm (running)'."""
    return f"{record.get('node') or node}: upgrade to {to}, {record.get('phase')} ({record.get('state')})"
