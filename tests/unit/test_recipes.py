"""A recipe's id names it without telling what it holds: keyed with the cluster's enrollment key (issue 30)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

from builder.build.recipes import Recipe, load_recipe, save_recipe
from builder.cluster.secrets import ENROLLMENT_KEY, SECRETS_DIR


def _cluster(tmp_path: Path, name: str, key: str) -> Path:
    directory = tmp_path / name
    (directory / SECRETS_DIR).mkdir(parents=True)
    (directory / SECRETS_DIR / ENROLLMENT_KEY).write_text(key + "\n")
    return directory


def test_a_recipe_id_is_keyed_by_the_cluster_so_a_manifest_is_no_oracle_for_its_passphrase(tmp_path: Path) -> None:
    recipe = Recipe("worker-8g", sets={"wifi": {"ssid": "homelab", "psk": "correct horse"}}, epoch=1700000000)
    one, other = _cluster(tmp_path, "one", "11" * 32), _cluster(tmp_path, "other", "22" * 32)
    first = save_recipe(one, recipe)
    assert save_recipe(one, recipe) == first and len(first) == 32  # the same build, the same id
    assert save_recipe(other, recipe) != first  # another cluster's key, another id
    guessed = {**asdict(recipe), "profile": "worker-8g", "overlays": []}
    unkeyed = hashlib.sha256(json.dumps(guessed, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    assert first != unkeyed[:32]
    assert load_recipe(one, first, tmp_path / "node.img") == recipe
