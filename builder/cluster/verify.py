"""`pi-image cluster verify`: does the running cluster hold every node of the inventory, as it was built?

What the seed's author checked by hand with `kubectl get nodes -o wide` once every card had joined, per inventory node:

    Ready          the Ready condition is True (NotReady says why: no CNI yet, or a kubelet gone quiet)
    INTERNAL-IP    the first InternalIP is the node's inventory address; a DHCP node's lies in the node subnet
                   (the two-NIC trap: a board with Wi-Fi and Ethernet up registers the other interface's address)
    kubelet        within Kubernetes' version-skew policy (builder/cluster/versions.py): never newer than the API
                   server, at most three minors older — the API server taken as cluster.yaml's upgrade_to while an
                   upgrade is recorded, else its kubernetes_version; a kubelet of the cluster's minor is its
                   kubernetes_release exactly (v1.31.4) once one is recorded; one of another minor inside the policy
                   (a worker an upgrade left behind, a control plane upgraded already) passes, with a note
    architecture   what its profile's target runs: amd64 for ubuntu-x86 and arch, arm64 for every board target
                   (Raspberry Pi, Kali, Jetson); not checked for a profile that names no target (any base, so any
                   architecture)
    OS             linux
    runtime        the profile's runtime as the kubelet reports it: containerd://… or docker://… (cri-dockerd)

and every node the API has but the inventory does not: a stale NotReady namesake left by a reflash under another name,
or a machine pi-image did not build. Before any of it, the inventory's control planes are checked as a build checks
them (builder.cluster.several: 1, 3 or 5; several at a free virtual IP, each with a fixed address). The expectations
come from the inventory and the profiles as they are now, not from each card's build manifest: a `--set
runtime=docker` given at build time reads as a mismatch.
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from .. import cluster as clusters
from ..config.profiles import load_profile
from ..errors import ToolError, UserError
from ..run import run
from ..targets import MACHINE_TARGETS, targets_of
from ..targets.x86 import ARCHITECTURE as X86_ARCHITECTURE
from .several import check_control_planes
from .versions import kubelet_skew, minor_text

BOARD_ARCHITECTURE = "arm64"  # every board target pi-image edits (the catalog's images are all arm64)
OPERATING_SYSTEM = "linux"
_VERSION_RE = re.compile(r"^v?(\d+\.\d+)\.(\d+)")
_MESSAGE_LIMIT = 120


@dataclass(frozen=True)
class Expected:
    """What one inventory node should look like in the API."""

    address: str | None  # its fixed address (no prefix length), or None for DHCP
    subnet: str  # the node subnet, which holds a DHCP node's address
    kubelet: str  # "1.31.4" (the recorded release) or "1.31" (any patch of the minor)
    architecture: str | None  # None: its profile names no target
    runtime: str  # containerd | docker
    remake: str  # how to give it a new card: "reflash it with a new card (`pi-image build ...`)"


def expectations(cluster: clusters.Cluster) -> dict[str, Expected]:
    """Each inventory node's Expected, from the inventory, cluster.yaml and its profile (loaded once per profile)."""
    profiles: dict[str, Any] = {}
    result = {}
    for node in cluster.nodes:
        profile = profiles.setdefault(node.profile, load_profile(node.profile, {}))
        result[node.name] = Expected(
            address=node.address.split("/")[0] if node.address else None, subnet=cluster.node_subnet,
            kubelet=cluster.kubernetes_release or cluster.kubernetes_version,
            architecture=target_architecture(profile["target"]), runtime=profile["runtime"],
            remake=_remake(cluster, node.name, profile["target"]))
    return result


def target_architecture(target: str | None) -> str | None:
    """The Kubernetes architecture (GOARCH) of the machines a profile's `target` builds for; None for no target."""
    if not target:
        return None
    return X86_ARCHITECTURE if _is_x86(target) else BOARD_ARCHITECTURE


def _is_x86(target: str | None) -> bool:
    return bool(target) and any(name in MACHINE_TARGETS for name in targets_of(str(target)))


def _remake(cluster: clusters.Cluster, name: str, target: str | None) -> str:
    """How a node gets a new card of this cluster: an x86 machine a new seed ISO, a board a new image."""
    if _is_x86(target):
        return f"reinstall it with a new seed (`pi-image seed-iso --cluster {cluster.directory} --node {name}`)"
    return f"reflash it with a new card (`pi-image build --cluster {cluster.directory} --node {name}`)"


def verify(cluster: clusters.Cluster, node_objects: list[dict]) -> list[dict]:
    """Compare the API's Node objects (the `items` of `kubectl get nodes -o json`) with the inventory.

    One dict per inventory node (inventory order), then one per API node the inventory lacks (by name): node, role
    (the inventory's, None for an extra), result (ok | mismatch | missing | extra), what the API reports (ready:
    True/False/Unknown, internal_ip, kubelet_version, architecture, operating_system, container_runtime, os_image;
    None where absent), problems: [{check, message, fix}] — empty exactly when result is ok — and note (a kubelet
    of another minor within the skew policy: what moves it; else None).
    """
    found = {obj.get("metadata", {}).get("name"): obj for obj in node_objects}
    expected = expectations(cluster)
    rows = []
    for node in cluster.nodes:
        obj = found.pop(node.name, None)
        if obj is None:
            rows.append(_row(node.name, node.role, "missing", {}, [_missing(cluster, expected[node.name])]))
            continue
        facts = node_facts(obj)
        problems = _compare(cluster, node, expected[node.name], facts)
        rows.append(_row(node.name, node.role, "mismatch" if problems else "ok", facts, problems,
                         _kubelet_note(cluster, expected[node.name], facts["kubelet_version"])))
    for name in sorted(found):
        facts = node_facts(found[name])
        rows.append(_row(name, None, "extra", facts, [_extra(cluster, name, facts)]))
    return rows


def node_facts(obj: dict) -> dict[str, str | None]:
    """What a Node object says about the checked fields (None where the kubelet has not reported it)."""
    status = obj.get("status") or {}
    info = status.get("nodeInfo") or {}
    ready: dict = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), {})
    internal = [a.get("address") for a in status.get("addresses") or [] if a.get("type") == "InternalIP"]
    return {"ready": ready.get("status"), "ready_reason": ready.get("reason"), "ready_message": ready.get("message"),
            "internal_ip": internal[0] if internal else None, "kubelet_version": info.get("kubeletVersion"),
            "architecture": info.get("architecture"), "operating_system": info.get("operatingSystem"),
            "container_runtime": info.get("containerRuntimeVersion"), "os_image": info.get("osImage")}


def _row(name: str, role: str | None, result: str, facts: dict, problems: list[dict],
         note: str | None = None) -> dict:
    shown = {key: facts.get(key) for key in ("ready", "internal_ip", "kubelet_version", "architecture",
                                             "operating_system", "container_runtime", "os_image")}
    return {"node": name, "role": role, "result": result, **shown, "problems": problems, "note": note}


def _problem(check: str, message: str, fix: str) -> dict:
    return {"check": check, "message": message, "fix": fix}


def _compare(cluster: clusters.Cluster, node: clusters.Node, expected: Expected, facts: dict) -> list[dict]:
    """The node's problems, in the order an operator fixes them (a node that is not Ready first)."""
    problems = []
    if facts["ready"] != "True":
        problems.append(_not_ready(node.name, facts))
    ip_problem = _internal_ip_problem(expected, facts["internal_ip"])
    if ip_problem:
        problems.append(_problem("internal-ip", ip_problem, (
            f"the kubelet registered another interface (Wi-Fi and Ethernet both up?): {expected.remake}, whose agent "
            f"takes the node-ip from {expected.subnet}, or set --node-ip={expected.address or 'ADDRESS'} in "
            "/var/lib/kubelet/kubeadm-flags.env on the node and restart the kubelet")))
    kubelet = _kubelet_problem(cluster, expected, facts["kubelet_version"])
    if kubelet:
        problems.append(kubelet)
    if expected.architecture and facts["architecture"] != expected.architecture:
        problems.append(_problem(
            "architecture", f"architecture {facts['architecture']}, not {expected.architecture} (profile "
            f"{node.profile})", f"another machine holds the name {node.name}: rename it, or fix its inventory profile"))
    if facts["operating_system"] != OPERATING_SYSTEM:
        problems.append(_problem("os", f"operating system {facts['operating_system']}, not {OPERATING_SYSTEM}",
                                 f"another machine holds the name {node.name}: rename it"))
    runtime = facts["container_runtime"] or ""
    if not runtime.startswith(f"{expected.runtime}://"):
        problems.append(_problem("runtime", f"container runtime {runtime or None}, not {expected.runtime} (profile "
                                 f"{node.profile})",
                                 f"the node runs another runtime than its card set up: {expected.remake}"))
    return problems


def _internal_ip_problem(expected: Expected, internal_ip: str | None) -> str | None:
    """Why the node's INTERNAL-IP is wrong, or None."""
    if internal_ip is None:
        return "no INTERNAL-IP reported"
    if expected.address:
        if internal_ip == expected.address:
            return None
        return f"INTERNAL-IP {internal_ip}, not its inventory address {expected.address}"
    try:
        inside = ipaddress.ip_address(internal_ip) in ipaddress.ip_network(expected.subnet)
    except ValueError:
        inside = False
    return None if inside else f"INTERNAL-IP {internal_ip} is outside the node subnet {expected.subnet} (DHCP node)"


def _kubelet_problem(cluster: clusters.Cluster, expected: Expected, found: str | None) -> dict | None:
    """The kubelet's problem: outside the skew policy (against the newest the API server may run), else, at the
    cluster's minor, not its recorded release; None for a kubelet of another minor inside the policy."""
    newest = cluster.upgrade_to or cluster.kubernetes_version
    skew = kubelet_skew(found, newest)
    if skew and "newer" in skew:
        return _problem("kubelet", f"{skew} (outside Kubernetes' version-skew policy)",
                        f"{expected.remake}, whose card runs the cluster's {cluster.kubernetes_version}, or upgrade "
                        f"the control plane (`pi-image cluster upgrade {cluster.directory}`, one minor at a time)")
    if skew:
        return _problem("kubelet", f"{skew} (outside Kubernetes' version-skew policy)",
                        f"{expected.remake}, whose card runs the cluster's {cluster.kubernetes_version}")
    if minor_text(found) not in (None, cluster.kubernetes_version):
        return None
    if _kubelet_matches(expected.kubelet, found):
        return None
    wanted = expected.kubelet if cluster.kubernetes_release else f"{expected.kubelet}.x"
    return _problem("kubelet", f"kubelet {found}, not the cluster's v{wanted}",
                    f"the node runs another Kubernetes: {expected.remake}")


def _kubelet_note(cluster: clusters.Cluster, expected: Expected, found: str | None) -> str | None:
    """A kubelet of another minor than the cluster's, inside the policy: why that is fine, and what moves it."""
    minor = minor_text(found)
    if minor in (None, cluster.kubernetes_version) or kubelet_skew(found, cluster.upgrade_to or
                                                                    cluster.kubernetes_version):
        return None
    if minor == cluster.upgrade_to:
        return f"upgraded to {minor} already (the cluster's upgrade to {minor} is under way)"
    return (f"trails the cluster's {cluster.kubernetes_version} (a kubelet may trail the API server by three "
            f"minors); to move it: {expected.remake}")


def _kubelet_matches(expected: str, found: str | None) -> bool:
    """True if the kubelet's gitVersion (v1.31.4, v1.31.4+build) is `expected`: a release exactly, a minor's any
    patch."""
    match = _VERSION_RE.match(found or "")
    if not match:
        return False
    minor, patch = match.groups()
    return f"{minor}.{patch}" == expected if expected.count(".") == 2 else minor == expected


def _not_ready(name: str, facts: dict) -> dict:
    """The Ready problem, with the fix for the kind of NotReady the condition shows."""
    reason = facts["ready_reason"] or "no reason given"
    detail = (facts["ready_message"] or "").strip()
    if len(detail) > _MESSAGE_LIMIT:
        detail = detail[: _MESSAGE_LIMIT - 3] + "..."
    said = f"{reason}: {detail}" if detail else reason
    if facts["ready"] is None:
        return _problem("ready", "no Ready condition yet", "the kubelet has not reported: wait a minute and run again")
    if facts["ready"] == "Unknown":
        fix = (f"the node is off or unreachable: power it on and check its network; if it was reflashed under another "
               f"name, this one is stale: `kubectl delete node {name}`")
    elif "cni" in said.lower() or "NetworkPluginNotReady" in said:
        fix = "the pod network is not up: check flannel (`kubectl -n kube-flannel get pods -o wide`)"
    else:
        fix = f"see `kubectl describe node {name}` and, on the node, `journalctl -u kubelet`"
    return _problem("ready", f"NotReady ({said})", fix)


def _missing(cluster: clusters.Cluster, expected: Expected) -> dict:
    return _problem("inventory", "not in the cluster", (
        f"it has not joined: `pi-image status --cluster {cluster.directory}` shows how far it got; never set up? "
        f"{expected.remake} and power it on"))


def _extra(cluster: clusters.Cluster, name: str, facts: dict) -> dict:
    inventory = cluster.directory / "inventory.yaml"
    if facts["ready"] != "True":
        return _problem("inventory", f"not in {inventory}, and NotReady",
                        f"a stale namesake or a removed node: `kubectl delete node {name}`")
    return _problem("inventory", f"not in {inventory}", (
        f"add it (`pi-image cluster add-node {cluster.directory} {name} --profile PROFILE`), or drain and delete it "
        f"(`kubectl drain {name} --ignore-daemonsets && kubectl delete node {name}`)"))


def read_node_objects(kubeconfig: Path, directory: Path) -> list[dict]:
    """The items of `kubectl get nodes -o json` run with `kubeconfig`; a UserError naming the fix if kubectl fails."""
    argv = ["kubectl", "--kubeconfig", str(kubeconfig), "--request-timeout", "20s", "get", "nodes", "-o", "json"]
    try:
        output = run(argv).stdout
    except ToolError as err:
        raise UserError(f"cannot list the cluster's nodes: {err}; is the master up? (a stale kubeconfig: fetch it "
                        f"again with `pi-image cluster kubeconfig {directory} -o {kubeconfig}`)") from None
    try:
        items = json.loads(output)["items"]
        if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        start = output.decode(errors="replace").strip()[:80]
        raise UserError(f"`kubectl get nodes -o json` with {kubeconfig} printed no node list ({start!r}): is "
                        "`kubectl` the Kubernetes client?") from None
    return items


def default_kubeconfig(directory: Path) -> Path:
    """DIR/kubeconfig (where `pi-image cluster kubeconfig DIR` puts it), else ~/.kube/config; a UserError if neither."""
    for candidate in (directory / "kubeconfig", Path.home() / ".kube" / "config"):
        if candidate.is_file():
            return candidate
    raise UserError(f"no kubeconfig for cluster {directory}: neither {directory / 'kubeconfig'} nor ~/.kube/config "
                    f"exists; fetch it with `pi-image cluster kubeconfig {directory}` (or pass --kubeconfig FILE)")


@click.command("verify")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--kubeconfig", type=click.Path(dir_okay=False, path_type=Path),
              help="Admin kubeconfig of the cluster [default: DIRECTORY/kubeconfig, as `pi-image cluster kubeconfig "
                   "DIRECTORY` writes it, else ~/.kube/config].")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON list (a dict per node) instead of lines.")
def verify_command(directory: Path, kubeconfig: Path | None, as_json: bool) -> None:
    """Check that every inventory node of DIRECTORY is in the cluster as it was built; exit 1 on any mismatch.

    Per node: Ready, INTERNAL-IP = its inventory address (a DHCP node's: inside the node subnet), kubelet = the
    cluster's release (else its minor), architecture/OS/container runtime = its profile's. Nodes the API has and the
    inventory does not are listed too. Reads `kubectl get nodes -o json`. First, as a build does: 1, 3 or 5 control
    planes, and several of them at a free virtual IP of the node subnet, each with a fixed address.

    \b
    Examples:
      pi-image cluster kubeconfig lab && pi-image cluster verify lab
      pi-image cluster verify lab --kubeconfig ~/.kube/config
      pi-image cluster verify lab --json | jq '.[] | select(.result != "ok")'
    """
    cluster = clusters.load_cluster(directory)
    check_control_planes(cluster, "cluster verify", count=True)
    if kubeconfig is not None and not kubeconfig.is_file():
        raise UserError(f"--kubeconfig {kubeconfig}: no such file; fetch it with "
                        f"`pi-image cluster kubeconfig {directory} -o {kubeconfig}`")
    rows = verify(cluster, read_node_objects(kubeconfig or default_kubeconfig(directory), directory))
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    else:
        width = max([len(row["node"]) for row in rows] + [4])
        for row in rows:
            click.echo(f"{row['node']:<{width}}  {_line(row)}")
        click.echo(_summary(cluster, rows))
    if any(row["result"] != "ok" for row in rows):
        raise SystemExit(1)


def _line(row: dict) -> str:
    """A node's verdict: OK with what it runs, else each problem and its fix."""
    if row["result"] == "ok":
        return (f"OK        {row['internal_ip']}  {row['kubelet_version']}  {row['operating_system']}/"
                f"{row['architecture']}  {row['container_runtime']}" + (f"  ({row['note']})" if row["note"] else ""))
    label = {"mismatch": "MISMATCH", "missing": "MISSING", "extra": "EXTRA"}[row["result"]]
    return f"{label:<8}  " + "; ".join(f"{p['message']}: {p['fix']}" for p in row["problems"])


def _summary(cluster: clusters.Cluster, rows: list[dict]) -> str:
    counts = {result: sum(row["result"] == result for row in rows) for result in ("ok", "mismatch", "missing", "extra")}
    text = (f"{counts['ok']} of {len(cluster.nodes)} inventory node(s) as built; {counts['mismatch']} mismatched, "
            f"{counts['missing']} not in the cluster, {counts['extra']} not in the inventory")
    if cluster.nodes and counts["missing"] == len(cluster.nodes) and counts["extra"]:
        text += " (none of the inventory's nodes is in this cluster: is the kubeconfig this cluster's?)"
    return text
