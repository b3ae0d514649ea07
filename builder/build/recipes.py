"""How a cluster image was made, kept in the cluster directory so `pi-image flash` can stamp any node onto it later.

    DIR/images/<id>.json   0600 in a 0700 directory: the build's options (profile, --set values and the Wi-Fi
                           passphrase --wifi-psk gave, overlays, SSH keys, password hash, the apt keyring's bytes,
                           the release's URLs and digests (kube_install: release), the build time, the base's name
                           and sha256)

The image names its recipe in its manifest (`recipe` in /etc/pi-image/build.json): the id is an HMAC-SHA256 of
the recipe's canonical JSON under a key derived from the cluster's enrollment key, so the same build gives the same id,
and an id says nothing about what it names, not even to someone guessing (the recipe may hold a password hash or a
passphrase). Stamping re-plans the build for the node from the recipe, against the image itself
(its own edits are already there, so only what differs per node is written), which gives the node's card the files
a per-node build of it would have: "common things early, per-node things late".
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..bases.catalog import resolve_base
from ..cluster.secrets import SECRETS_DIR, read_enrollment_key
from ..errors import UserError
from ..image.inputs import cached_sha256
from ..outputs import write_atomic

RECIPES_DIR = "images"


@dataclass(frozen=True)
class Recipe:
    """The options of one cluster build, minus the node (which stamping chooses) and the output."""

    profile: str  # a profile name, or the absolute path of a profile file
    sets: dict[str, Any] = field(default_factory=dict)
    overlays: tuple[str, ...] = ()  # absolute paths
    replace_overlays: bool = False
    ssh_keys: tuple[str, ...] = ()
    password_hash: str | None = None
    no_login: bool = False
    keyring: str | None = None  # base64 of the apt keyring the image carries
    release: dict[str, Any] | None = None  # node.json's `release` (kube_install: release): URLs and the digests
    epoch: int = 0  # the build's time: every date written, and the device's clock floor
    base: dict[str, Any] = field(default_factory=dict)  # {"path": name, "sha256": hex} of the vendor image
    sources: dict[str, Any] = field(default_factory=dict)  # the profile's and overlays' digests, as the manifest has

    def id(self, key: bytes) -> str:
        """The recipe's name: the first 32 hex digits of the HMAC-SHA256, under the cluster's key `key`, of its
        canonical JSON, with files named by their content (`sources`) rather than where they are, so the same build
        gives the same image bytes anywhere; keyed, so that an image's manifest is no oracle for guessing the
        passphrase or password hash the recipe holds."""
        portable = {**asdict(self), "profile": Path(self.profile).name,
                    "overlays": [Path(o).name for o in self.overlays]}
        if self.release is None:
            del portable["release"]  # a packages-path recipe keeps the id it had before the release path existed
        return hmac.new(key, b"pi-image recipe\0" + _canonical(portable), hashlib.sha256).hexdigest()[:32]

    @property
    def keyring_bytes(self) -> bytes | None:
        """The apt keyring as bytes."""
        return base64.b64decode(self.keyring) if self.keyring else None


def save_recipe(cluster_dir: Path, recipe: Recipe) -> str:
    """Store `recipe` in DIR/images/ (once: the same id is the same content) and return its id."""
    directory = cluster_dir / RECIPES_DIR
    directory.mkdir(mode=0o700, exist_ok=True)
    os.chmod(directory, 0o700)
    recipe_id = recipe.id(_key(cluster_dir))
    path = directory / f"{recipe_id}.json"
    if not path.exists():
        write_atomic(path, _canonical(asdict(recipe)).decode() + "\n")
    return recipe_id


def load_recipe(cluster_dir: Path, recipe_id: object, image: Path) -> Recipe:
    """The recipe `image` names, from DIR/images/; UserError if it is not this cluster's."""
    if not isinstance(recipe_id, str) or not recipe_id.isalnum() or len(recipe_id) != 32:
        raise UserError(f"{image}: its manifest names no valid recipe ({recipe_id!r}): rebuild it with "
                        f"`pi-image build --cluster {cluster_dir}`")
    path = cluster_dir / RECIPES_DIR / f"{recipe_id}.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        recipe = Recipe(**{**data, "overlays": tuple(data["overlays"]), "ssh_keys": tuple(data["ssh_keys"])})
    except FileNotFoundError:
        raise UserError(f"{image} was not built with cluster {cluster_dir} (no {path}): pass the --cluster it was "
                        "built with, or rebuild it with this one") from None
    except (ValueError, TypeError, KeyError) as err:
        raise UserError(f"{path}: not a pi-image recipe ({err}); rebuild the image") from None
    if not hmac.compare_digest(recipe.id(_key(cluster_dir)), recipe_id):
        raise UserError(f"{path}: its content does not match its name (edited?); rebuild the image")
    return recipe


def _key(cluster_dir: Path) -> bytes:
    """The key recipe ids are made with: derived from the cluster's enrollment key, used for nothing else."""
    return hmac.new(read_enrollment_key(cluster_dir / SECRETS_DIR), b"pi-image recipe ids", hashlib.sha256).digest()


def same_base(spec: str | None, record: dict[str, Any]) -> bool:
    """True if the base an inventory entry names (`spec`: a catalog name, a URL or a file) is the vendor image a
    recipe was built from (`record`: its catalog name or URL when it had one, its file's name, its sha256).

    The record never holds a local path (the same inputs give the same image anywhere), so a file is compared by
    content: its SHA-256 (remembered by path, size and mtime: the build hashed it already) against the record's. A
    name is the same base when it is the record's name, or when its verified download in the cache has that digest;
    one that is not downloaded, or not known, is another base.
    """
    if not spec:
        return False
    if spec == record.get("name"):
        return True
    digest = record.get("sha256")
    if not digest:
        return False
    try:
        path = resolve_base(spec, download=False)
    except UserError:
        return False
    return path.is_file() and cached_sha256(path) == digest


def _canonical(data: dict[str, Any]) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), default=list).encode()
