"""Merging a cluster's admin kubeconfig into one the user already has (k3sup's `--merge --context` habit): the
cluster, user and context are named after the cluster directory, entries of those names are replaced, everything
else in the file is kept, and the current context changes only when the file had none."""

from __future__ import annotations

from typing import Any

import yaml

from ..errors import UserError

SECTIONS = {"clusters": "cluster", "users": "user", "contexts": "context"}


def merge_kubeconfig(existing: str, fetched: str, name: str, where: str) -> str:
    """`existing` (the user's kubeconfig text) with the first cluster, user and context of `fetched` added under
    `name` (user `name`-admin), replacing entries of those names; UserError if `existing` is not a kubeconfig."""
    try:
        current = yaml.safe_load(existing) or {}
        new = yaml.safe_load(fetched) or {}
    except yaml.YAMLError as err:
        raise UserError(f"{where} is not a kubeconfig ({err}): pick another -o FILE, or --force to replace it") \
            from None
    if not isinstance(current, dict) or not isinstance(new, dict) or current.get("kind", "Config") != "Config":
        raise UserError(f"{where} is not a kubeconfig: pick another -o FILE, or --force to replace it")
    user = f"{name}-admin"
    entries = {
        "clusters": {"name": name, "cluster": _first(new, "clusters", "cluster")},
        "users": {"name": user, "user": _first(new, "users", "user")},
        "contexts": {"name": name, "context": {"cluster": name, "user": user}},
    }
    merged: dict[str, Any] = {"apiVersion": "v1", "kind": "Config", **current}
    for section, entry in entries.items():
        kept = [item for item in merged.get(section) or [] if not (isinstance(item, dict) and item.get("name") ==
                                                                    entry["name"])]
        merged[section] = kept + [entry]
    if not merged.get("current-context"):
        merged["current-context"] = name
    return yaml.safe_dump(merged, sort_keys=False)


def _first(config: dict[str, Any], section: str, key: str) -> dict[str, Any]:
    items = config.get(section) or []
    if not items or not isinstance(items[0], dict) or not isinstance(items[0].get(key), dict):
        raise UserError(f"the master's admin kubeconfig has no {section}: fetch it again")
    return items[0][key]
