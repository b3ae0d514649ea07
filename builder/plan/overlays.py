"""Overlays: file trees under `overlays/NAME/` rendered into an image's root (or boot) filesystem.

    overlays/k8s-kernel/
      overlay.yaml                   # optional: description, filesystem (root|boot), when (a setting that must be
                                     # set for the overlay to apply), per-file mode/owner/merge
      etc/sysctl.d/k8s.conf          # copied as is
      etc/apt/preferences.d/kubernetes.j2   # rendered with jinja2 (StrictUndefined), ".j2" dropped

Files default to 0644 root:root; directories are created as needed (0755 root) unless the manifest lists them.
`merge: json` deep-merges a rendered JSON object into the file already in the image (how Jetson's nvidia runtime
survives in daemon.json). Symlinks in an overlay become symlinks in the image; one that climbs out of the image root,
or any path with `..`, is refused.
"""

from __future__ import annotations

import json
import os
import posixpath
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
import yaml
from jinja2.exceptions import SecurityError
from jinja2.sandbox import SandboxedEnvironment

from .. import DATA_DIR
from ..errors import UserError
from . import FileOp, Plan, PlanView

OVERLAY_DIRS = [DATA_DIR / "overlays"]
MANIFEST = "overlay.yaml"
FILE_KEYS = {"mode", "owner", "merge"}


@dataclass(frozen=True)
class Overlay:
    """One overlay directory and its manifest."""

    name: str
    path: Path
    filesystem: str
    files: dict[str, dict[str, Any]]
    description: str
    when: str | None = None  # a build fact or profile key: the overlay is rendered only when it is set


def resolve_overlays(names: list[str], extra_dirs: list[str], replace: bool = False) -> list[Overlay]:
    """The overlays to render, in order: each name from the shipped overlays/ (or an --overlay directory of that
    name), then the --overlay directories. Nothing is looked up in the current directory. An --overlay directory
    named like a shipped overlay is refused unless `replace` (it then takes the shipped one's place)."""
    extras = {}
    for directory in extra_dirs:
        path = Path(directory)
        if not path.is_dir():
            raise UserError(f"--overlay {directory}: not a directory")
        if path.name in _shipped() and not replace:
            raise UserError(f"--overlay {directory} has the name of the shipped overlay '{path.name}' and would "
                            "replace it: rename the directory, or pass --replace-overlay if that is what you want")
        extras[path.name] = path
    ordered = list(dict.fromkeys(list(names) + list(extras)))
    shipped = _shipped()
    found = []
    for name in ordered:
        where = extras.get(name) or shipped.get(name)
        if where is None:
            known = ", ".join(sorted(set(shipped) | set(extras)))
            raise UserError(f"unknown overlay '{name}' in the profile's overlays (known: {known}; "
                            "add your own with --overlay DIR)")
        found.append(load_overlay(where))
    return found


def _shipped() -> dict[str, Path]:
    return {p.name: p for d in OVERLAY_DIRS for p in sorted(d.iterdir()) if p.is_dir()}


def load_overlay(path: Path) -> Overlay:
    """The overlay in directory `path`, its overlay.yaml validated."""
    manifest_path = path / MANIFEST
    manifest: Any = {}
    if manifest_path.is_file():
        try:
            manifest = yaml.safe_load(manifest_path.read_text(encoding="utf-8")) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as err:
            mark = getattr(err, "problem_mark", None)
            raise UserError(f"{manifest_path}{f':{mark.line + 1}' if mark else ''}: not valid YAML: "
                            f"{getattr(err, 'problem', None) or err}") from None
    if not isinstance(manifest, dict):
        raise UserError(f"{manifest_path}: must be a mapping (description, filesystem, files)")
    unknown = set(manifest) - {"description", "filesystem", "files", "when"}
    if unknown:
        raise UserError(f"{manifest_path}: unknown key(s) {', '.join(sorted(map(str, unknown)))}")
    files = manifest.get("files") or {}
    if not isinstance(files, dict):
        raise UserError(f"{manifest_path}: 'files' must map paths to {{mode, owner, merge}}")
    for rel, spec in files.items():
        if not isinstance(rel, str) or ".." in Path(rel).parts or rel.startswith("/"):
            raise UserError(f"{manifest_path}: file {rel!r} must be a relative path inside the overlay")
        if spec is not None and not isinstance(spec, dict):
            raise UserError(f"{manifest_path}: '{rel}' must map to {{mode, owner, merge}}, not {spec!r}")
        unknown_keys = set(spec or {}) - FILE_KEYS
        if unknown_keys:
            raise UserError(f"{manifest_path}: '{rel}': unknown key(s) {', '.join(sorted(map(str, unknown_keys)))}")
        merge = (spec or {}).get("merge")
        if merge not in (None, "json"):
            raise UserError(f"{manifest_path}: '{rel}': merge must be 'json', not {merge!r}")
    fs = manifest.get("filesystem", "root")
    if fs not in ("root", "boot"):
        raise UserError(f"{manifest_path}: filesystem must be 'root' or 'boot', not {fs!r}")
    when = manifest.get("when")
    if when is not None and not isinstance(when, str):
        raise UserError(f"{manifest_path}: 'when' names one setting (like proxy), not {when!r}")
    return Overlay(path.name, path, fs, {k: v or {} for k, v in files.items()}, str(manifest.get("description", "")),
                   when)


def render_overlay(overlay: Overlay, context: dict[str, Any], plan: Plan, view: PlanView,
                   users: dict[str, int], groups: dict[str, int]) -> None:
    """Add the ops that lay `overlay` into the image to `plan`; `users`/`groups` map the image's names to ids."""
    # The sandbox: a template reads values and nothing else (no attribute walks to os, no calls of unsafe methods).
    env = SandboxedEnvironment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False)
    step = f"overlay:{overlay.name}"
    for host in sorted(_walk(overlay.path)):
        rel = host.relative_to(overlay.path).as_posix()
        if rel == MANIFEST:
            continue
        dest = "/" + (rel[:-3] if rel.endswith(".j2") else rel)
        spec = overlay.files.get(rel, overlay.files.get(dest.lstrip("/"), {}))
        uid, gid = _owner(spec.get("owner", "root:root"), users, groups, overlay, rel)
        mode = _mode(spec.get("mode"), 0o755 if host.is_dir() and not host.is_symlink() else 0o644, overlay, rel)
        if host.is_symlink():
            target = os.readlink(host)
            if _climbs_out(posixpath.dirname(dest), target):
                raise UserError(f"{host}: symlink target {target!r} climbs out of the image root")
            plan.add(FileOp("symlink", overlay.filesystem, dest, step, target=target, uid=uid, gid=gid))
        elif host.is_dir():
            if rel in overlay.files:  # other directories are created as needed, root-owned 0755
                plan.add(FileOp("mkdir", overlay.filesystem, dest, step, mode=mode, uid=uid, gid=gid))
        else:
            data = _render(env, host, context) if rel.endswith(".j2") else host.read_bytes()
            if spec.get("merge") == "json":
                data = _merge_json(view.read_text(overlay.filesystem, dest), data, host)
            plan.add(FileOp("write", overlay.filesystem, dest, step, content=data, mode=mode, uid=uid, gid=gid))


def _climbs_out(directory: str, target: str) -> bool:
    """True if a link in `directory` to the relative `target` would go above the root."""
    if target.startswith("/"):
        return False  # absolute targets start again at the image's own root
    depth = len([p for p in directory.split("/") if p])
    for part in target.split("/"):
        depth += -1 if part == ".." else 0 if part in ("", ".") else 1
        if depth < 0:
            return True
    return False


def _walk(root: Path) -> list[Path]:
    """Every file, directory and symlink under `root` (symlinks are listed, never followed)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in dirnames + filenames:
            found.append(Path(dirpath) / name)
    return found


def _render(env: jinja2.Environment, template: Path, context: dict[str, Any]) -> bytes:
    try:
        return env.from_string(template.read_text(encoding="utf-8")).render(**context).encode()
    except SecurityError as err:
        raise UserError(f"{template}: refused by the template sandbox: {err}") from None
    except jinja2.UndefinedError as err:
        raise UserError(f"{template}: {err.message} (not a profile value or build fact)") from None
    except jinja2.TemplateSyntaxError as err:
        raise UserError(f"{template}:{err.lineno}: template error: {err.message}") from None
    except (jinja2.TemplateError, TypeError, ValueError, ArithmeticError, UnicodeDecodeError) as err:
        raise UserError(f"{template}: cannot render: {err}") from None


def _merge_json(existing: str | None, rendered: bytes, template: Path) -> bytes:
    """Deep-merge the rendered JSON object into the existing one (keys of the rendered file win)."""
    try:
        ours = json.loads(rendered)
    except ValueError as err:
        raise UserError(f"{template}: rendered JSON is invalid: {err}") from None
    try:
        theirs = json.loads(existing) if existing and existing.strip() else {}
    except ValueError:
        name = template.name.removesuffix(".j2")
        raise UserError(f"the image's {name} is not valid JSON: fix or remove it") from None
    return (json.dumps(_deep_merge(theirs, ours), indent=2, sort_keys=True) + "\n").encode()


def _deep_merge(base: Any, extra: Any) -> Any:
    if isinstance(base, dict) and isinstance(extra, dict):
        return {**base, **{k: _deep_merge(base.get(k), v) for k, v in extra.items()}}
    return extra


def _owner(spec: str, users: dict[str, int], groups: dict[str, int], overlay: Overlay,
           rel: str) -> tuple[int, int]:
    user, _, group = str(spec).partition(":")
    group = group or user
    try:
        return (int(user) if user.isdigit() else users[user]), (int(group) if group.isdigit() else groups[group])
    except KeyError as err:
        raise UserError(f"{overlay.path / MANIFEST}: '{rel}': no user or group {err} in the image") from None


def _mode(spec: Any, default: int, overlay: Overlay, rel: str) -> int:
    if spec is None:
        return default
    try:
        mode = int(str(spec), 8)
    except ValueError:
        mode = -1
    if not 0 <= mode <= 0o7777:
        raise UserError(f"{overlay.path / MANIFEST}: '{rel}': mode must be octal like \"0644\", not {spec!r}")
    return mode
