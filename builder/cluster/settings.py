"""`pi-image cluster show DIR` and `pi-image cluster set DIR KEY=VALUE...`: a cluster's settings after `init`.

What may change depends on whether cards exist (a node of the inventory built at least once): a card carries the
token endpoint, the API server, the subnets and the Kubernetes version it was built with, so those are refused
once one does. The rest (gateway, dns, mirrors, offline, approval mode, the host's paths) only shape cards built
later and the token endpoint run from the directory. Values are checked by builder.cluster.check_settings, the
check load_cluster() makes of cluster.yaml, and written under the inventory lock like every change of DIR.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import re
from pathlib import Path
from typing import Any

import click
import yaml

from .. import cluster as clusters
from ..errors import UserError
from .versions import minor_text

# In the order `show` lists them.
ORDER = ("api_server", "endpoint", "endpoint_fingerprint", "kubernetes_version", "kubernetes_release", "node_subnet",
         "pod_subnet", "service_subnet", "gateway", "dns", "approval_mode", "offline", "registry_mirrors",
         "package_mirrors", "ca_cert", "kubeconfig", "api_server_vip", "upgrade_to")
# Keys whose value is taken as typed ("1.30" stays a string); the others are YAML (lists, maps, true/false).
TEXT_KEYS = {"api_server", "endpoint", "kubernetes_version", "kubernetes_release", "node_subnet", "pod_subnet",
             "service_subnet", "gateway", "ca_cert", "kubeconfig"}
CARDS_KEEP = "the {built} card(s) already built keep the old value until rebuilt and reflashed"
# Safe once cards exist: what each change reaches.
SAFE = {
    "gateway": "cards with a fixed address built from now on route through it; " + CARDS_KEEP,
    "dns": "cards with a fixed address built from now on use these name servers; " + CARDS_KEEP,
    "registry_mirrors": "every node's default for cards built from now on (a profile's own wins); " + CARDS_KEEP,
    "package_mirrors": "used by --offline builds from now on; cards already built are not affected",
    "offline": "every node's default for cards built from now on (a profile's own wins); " + CARDS_KEEP,
    "approval_mode": "a `pi-image token-server --cluster DIR` run here applies it at once, a master card built from "
                     "now on carries it; a running master keeps the one its card was built with",
    "api_server_vip": "only what add-node and build check of a control plane's address changes (and, with more "
                      "than one control plane, whether kube-vip holds the API server)",
    "ca_cert": "used by `pi-image token-server --cluster DIR` run here (cards use kubeadm's own path)",
    "kubeconfig": "used by `pi-image token-server --cluster DIR` run here (cards use kubeadm's own path)",
}
# Refused once cards exist, and why.
PINNED = {
    "endpoint": "every card built pins the token endpoint it asks for a join token (node.json): those cards would "
                "never reach another",
    "api_server": "every card built pins the API server (node.json) and the control plane's certificates name it: "
                  "those cards would dial the old one for ever",
    "node_subnet": "every card built chose its node-ip in it (node.json)",
    "pod_subnet": "the control plane's kubeadm configuration and flannel's network were fixed by its card",
    "service_subnet": "the control plane's kubeadm configuration was fixed by its card",
    "kubernetes_version": "every card built pins the Kubernetes repository and packages to it; a running cluster "
                          "moves by a kubeadm upgrade, not a setting",
    "kubernetes_release": "every card built carries that exact Kubernetes patch; a running cluster moves by a "
                          "kubeadm upgrade, not a setting",
}
# How to change a pinned key all the same: a running cluster's version moves by `cluster upgrade` (its skew checks)
UPGRADE_FIX = ("upgrade the running cluster one minor at a time with `pi-image cluster upgrade DIR --to 1.NN`, "
               "which checks Kubernetes' version-skew policy and records the new version here once the control "
               "plane runs it")
PINNED_FIX = {"kubernetes_version": UPGRADE_FIX, "kubernetes_release": UPGRADE_FIX}
NEVER = {"endpoint_fingerprint": "it is the fingerprint of the endpoint certificate `cluster init` made "
                                 "(secrets/endpoint.crt) and every card pins it: not a setting",
         "upgrade_to": "`pi-image cluster upgrade DIR --to 1.NN` records it when it starts an upgrade and removes it "
                       "when the control plane runs that version: not a setting"}
SETTABLE = tuple(key for key in ORDER if key not in NEVER)
HOST_ONLY = {"approval_mode", "ca_cert", "kubeconfig"}  # only the token endpoint run from DIR reads them


@click.command("show")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def show_command(directory: Path, as_json: bool) -> None:
    """Show DIRECTORY's settings (cluster.yaml, defaults filled in; never a secret) and how many nodes it has.

    \b
    Examples:
      pi-image cluster show lab
      pi-image cluster show lab --json | jq .settings.gateway
    """
    cluster = clusters.load_cluster(directory)
    settings = public_settings(cluster)
    counts = node_counts(cluster)
    if as_json:
        click.echo(json.dumps({"directory": str(directory), "settings": settings, "nodes": counts}, indent=2))
        return
    click.echo(f"cluster {directory}")
    for key in ORDER:
        click.echo(f"  {key:<21} {_shown(settings[key])}")
    roles = ", ".join(f"{counts[role]} {role}" + ("s" if counts[role] > 1 else "")
                      for role in ("control-plane", "worker") if counts[role])
    click.echo(f"nodes: {counts['total']}" + (f" ({roles}; {counts['built']} built)" if counts["total"] else "")
               + (f", {counts['retired']} retired" if counts["retired"] else ""))
    click.echo(f"change one with: pi-image cluster set {directory} KEY=VALUE")


@click.command("set")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.argument("assignments", nargs=-1, required=True, metavar="KEY=VALUE...")
def set_command(directory: Path, assignments: tuple[str, ...]) -> None:
    """Change DIRECTORY's settings. Values are YAML like `build --set`; `KEY=` goes back to the default.

    Once a card is built, the token endpoint, the API server, the subnets and the Kubernetes version are refused
    (cards pin them; `pi-image cluster upgrade` moves a running cluster's version); gateway, dns, registry_mirrors,
    package_mirrors, offline, approval_mode, ca_cert and kubeconfig reach cards built from then on.

    \b
    Examples:
      pi-image cluster set lab gateway=192.168.6.1 dns=192.168.6.1,1.1.1.1
      pi-image cluster set lab 'registry_mirrors={registry.k8s.io: http://192.168.6.2:5000}' offline=true
    """
    changes = parse_assignments(assignments)
    changed = change_settings(directory, changes)
    if not changed:
        click.echo(f"nothing changed in {directory / 'cluster.yaml'}: every value was already so")
        return
    cluster = clusters.load_cluster(directory)
    built = len(built_nodes(cluster))
    for key, (old, new) in changed.items():
        click.echo(f"{key}: {_shown(old)} -> {_shown(new)}")
        if built and key in SAFE:
            click.echo(f"  {SAFE[key].format(built=built).replace('DIR', str(directory))}")
    click.echo(f"wrote {directory / 'cluster.yaml'}")
    if set(changed) - HOST_ONLY:
        click.echo(f"next: pi-image build --cluster {directory} --node NAME (or --all), then flash the cards")
    else:
        click.echo(f"next: restart `pi-image token-server --cluster {directory}` if it runs here")


def parse_assignments(assignments: tuple[str, ...]) -> dict[str, Any]:
    """{key: value} of KEY=VALUE arguments (None for `KEY=`: back to the default); unknown keys refused."""
    changes: dict[str, Any] = {}
    for item in assignments:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UserError(f"cluster set: {item!r} is not KEY=VALUE (like gateway=192.168.6.1)")
        if key in NEVER:
            raise UserError(f"cluster set: {key} cannot be set: {NEVER[key]}")
        if key not in SETTABLE:
            close = difflib.get_close_matches(key, SETTABLE, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise UserError(f"cluster set: unknown key {key!r}{hint}; the keys are {', '.join(SETTABLE)}")
        changes[key] = _value(key, raw.strip(), item)
    return changes


def _value(key: str, raw: str, item: str) -> Any:
    if raw in ("", "null", "~"):
        return None
    if key in TEXT_KEYS:
        return raw
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as err:
        raise UserError(f"cluster set: {item}: not a YAML value ({getattr(err, 'problem', err)}); quote it, like "
                        f"'{key}={{registry.k8s.io: http://192.168.6.2:5000}}'") from None
    if key == "dns" and isinstance(value, str):  # dns=192.168.6.1,1.1.1.1 as `cluster init --dns` takes it
        return [server.strip() for server in value.split(",") if server.strip()]
    return value


def change_settings(directory: Path, changes: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Apply `changes` ({key: value, None for the default}) to DIR's settings under the inventory lock, as checked
    as load_cluster() checks cluster.yaml; {key: (old, new)} of what changed. A UserError, and nothing written,
    for a value that is wrong, would leave an inventory node out of place, or would strand cards already built."""
    with clusters.changing(directory) as cluster:
        before = settings_of(cluster)
        merged = {**cluster.settings(), **changes}
        for key, value in changes.items():
            if value is None and key in clusters.REQUIRED_KEYS:
                raise UserError(f"cluster set: {key} cannot be empty: give it a value (it is {_shown(before[key])})")
            if value is None or value in ([], {}):
                del merged[key]
        if minor_text(changes.get("kubernetes_version")) not in (None, cluster.kubernetes_version):
            merged.pop("kubernetes_release", None)  # a patch of the old minor: the new one's is resolved afresh
        checked = clusters.check_settings(merged, "cluster set")
        after = {key: checked.get(key, value) for key, value in settings_of(None).items()}
        changed = {key: (before[key], after[key]) for key in ORDER if before[key] != after[key]}
        _refuse_stranding(cluster, changed)
        for key, value in after.items():
            setattr(cluster, key, value)
        clusters.check_inventory(cluster, "cluster set")
    return changed


def _refuse_stranding(cluster: clusters.Cluster, changed: dict[str, tuple[Any, Any]]) -> None:
    built = built_nodes(cluster)
    pinned = [key for key in changed if key in PINNED]
    if not built or not pinned:
        return
    key = pinned[0]
    names = ", ".join(built[:3]) + (f" and {len(built) - 3} more" if len(built) > 3 else "")
    fix = PINNED_FIX.get(key, f"keep it (a cluster with another {key} is a new cluster directory: "
                                  "`pi-image cluster init`)").replace("DIR", str(cluster.directory))
    raise UserError(f"cluster set: {key} cannot change from {_shown(changed[key][0])}: {len(built)} card(s) are "
                    f"built ({names}) and {PINNED[key]}; {fix}")


def built_nodes(cluster: clusters.Cluster) -> list[str]:
    """The inventory nodes with a card (built at least once)."""
    return [node.name for node in cluster.nodes if node.generation > 0]


def settings_of(cluster: clusters.Cluster | None) -> dict[str, Any]:
    """Every setting of `cluster` by ORDER, defaults filled in; with None, the defaults (None where there is none)."""
    if cluster is not None:
        return {key: getattr(cluster, key) for key in ORDER}
    defaults = {item.name: item.default_factory() if item.default_factory is not dataclasses.MISSING else item.default
                for item in dataclasses.fields(clusters.Cluster)}
    return {key: None if defaults[key] is dataclasses.MISSING else defaults[key] for key in ORDER}


def public_settings(cluster: clusters.Cluster) -> dict[str, Any]:
    """settings_of(cluster) as `show` prints them. cluster.yaml holds no secret (those are in secrets/), but a
    mirror's URL may carry a user:password: never shown."""
    settings = settings_of(cluster)
    for key in ("package_mirrors", "registry_mirrors"):
        settings[key] = {_no_credentials(k): _no_credentials(v) for k, v in settings[key].items()}
    return settings


def node_counts(cluster: clusters.Cluster) -> dict[str, int]:
    """How many nodes the inventory has, by role, built at least once, and retired (removed)."""
    return {"total": len(cluster.nodes),
            "control-plane": sum(node.role == "control-plane" for node in cluster.nodes),
            "worker": sum(node.role == "worker" for node in cluster.nodes),
            "built": len(built_nodes(cluster)), "retired": len(cluster.retired)}


def _no_credentials(url: str) -> str:
    return re.sub(r"^([a-zA-Z][a-zA-Z0-9+.-]*://)[^/@]*@", r"\1(credentials hidden)@", str(url))


def _shown(value: Any) -> str:
    """A setting as `show` and `set` print it."""
    if value is None or value in ([], {}):
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ",".join(map(str, value))
    if isinstance(value, dict):
        return ", ".join(f"{_no_credentials(k)}={_no_credentials(v)}" for k, v in value.items())
    return str(value)
