"""Stage a sample's file tree in a host directory, and say who owns what inside it.

A tree is built from data layers (`builder/samples/data/<layer>/<part>/`) plus each layer's `<part>.yaml`,
which carries what a git checkout or a wheel cannot: symlinks, empty directories, modes and owners. The staged
directory feeds `mkfs.ext4 -d` or mtools; ownership is applied afterwards (debugfs for ext4), because a
non-root build cannot chown host files.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .spec import Tree

DATA = Path(__file__).parent / "data"

# Every staged file and directory gets this mtime, so that two builds of a sample are byte-identical.
EPOCH = 1700000000


@dataclass
class Manifest:
    """The merged manifests of a tree's layers; paths are relative to the filesystem root, without a slash."""

    dirs: list[str] = field(default_factory=list)
    symlinks: dict[str, str] = field(default_factory=dict)
    modes: dict[str, int] = field(default_factory=dict)
    owners: dict[str, tuple[int, int]] = field(default_factory=dict)

    def merge(self, raw: dict) -> None:
        """Add one layer's manifest (YAML mapping) on top of what is already there."""
        self.dirs += raw.get("dirs", [])
        self.symlinks.update(raw.get("symlinks", {}))
        self.modes.update({path: int(str(mode), 8) for path, mode in raw.get("modes", {}).items()})
        for path, owner in raw.get("owners", {}).items():
            uid, gid = str(owner).split(":")
            self.owners[path] = (int(uid), int(gid))

    def owner(self, path: str) -> tuple[int, int]:
        """The owner of `path`: the nearest listed ancestor's (a listed directory owns its contents), else root."""
        probe = path
        while probe:
            if probe in self.owners:
                return self.owners[probe]
            probe = probe.rpartition("/")[0]
        return (0, 0)


def load_manifest(tree: Tree) -> Manifest:
    """Merge the manifests of `tree`'s layers, in layer order."""
    manifest = Manifest()
    for layer in tree.layers:
        path = DATA / layer / f"{tree.part}.yaml"
        if path.is_file():
            manifest.merge(yaml.safe_load(path.read_text()) or {})
    return manifest


def stage_tree(tree: Tree, variables: dict[str, str], dest: Path) -> Manifest:
    """Materialize `tree` into the empty or missing directory `dest`, with modes and mtimes; return its manifest.

    Text in data files may name `@@VARIABLE@@`s (a disk identifier, a UUID...) that are replaced from `variables`.
    """
    dest.mkdir(parents=True, exist_ok=True)
    for layer in tree.layers:
        source = DATA / layer / tree.part
        if source.is_dir():
            copy_layer(source, dest, variables)
    manifest = load_manifest(tree)
    for directory in manifest.dirs:
        (dest / directory).mkdir(parents=True, exist_ok=True)
    for link, target in manifest.symlinks.items():
        path = dest / link
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_symlink() or path.exists():
            path.unlink()
        path.symlink_to(target)
    apply_modes(dest, manifest)
    return manifest


def copy_layer(source: Path, dest: Path, variables: dict[str, str]) -> None:
    """Copy one layer's files over `dest`, substituting `@@NAME@@` variables."""
    for path in sorted(source.rglob("*")):
        target = dest / path.relative_to(source)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        content = path.read_bytes()
        for name, value in variables.items():
            content = content.replace(f"@@{name}@@".encode(), value.encode())
        if target.is_symlink():
            target.unlink()
        target.write_bytes(content)


def walk(root: Path) -> list[str]:
    """Every path under `root` (not following symlinks), relative and sorted, the root itself as ``""``."""
    paths = [""]
    for current, dirs, files in os.walk(root):
        dirs.sort()
        base = Path(current).relative_to(root)
        paths += [(base / name).as_posix() for name in sorted(dirs + files)]
    return sorted(set(paths))


def apply_modes(root: Path, manifest: Manifest) -> None:
    """Give every staged entry its mode (0755 directories, 0644 files, unless the manifest says) and mtime."""
    for rel in walk(root):
        path = root / rel
        if not path.is_symlink():
            default = 0o755 if path.is_dir() else 0o644
            os.chmod(path, manifest.modes.get(rel, default))
    for rel in reversed(walk(root)):
        os.utime(root / rel, (EPOCH, EPOCH), follow_symlinks=False)


def chown_tree(root: Path, manifest: Manifest) -> None:
    """Give a staged directory its real owners; only root may do that, so others keep their own uid (say so)."""
    if os.geteuid() != 0:
        return
    for rel in walk(root):
        uid, gid = manifest.owner(rel)
        os.lchown(root / rel, uid, gid)


def clear(path: Path) -> None:
    """Remove a previous output at `path` (file, link or directory)."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)
