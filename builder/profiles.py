"""Profiles: YAML files of build settings with `extends:` inheritance, validated with file:line errors.

    profiles/worker-8g.yaml:7: unknown key 'runtim' (did you mean 'runtime'?)

The schema below is the one place that says which keys exist, their type, default and meaning.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .errors import UserError

# Shipped data lives inside the package (so a wheel or `pipx install .` has it); the repository's top-level
# profiles/ and overlays/ are links to these directories.
DATA_DIR = Path(__file__).resolve().parent / "data"
PROFILE_DIRS = [DATA_DIR / "profiles"]


@dataclass(frozen=True)
class Key:
    """One profile setting."""

    type: type | tuple[type, ...]
    default: Any
    help: str
    choices: tuple[Any, ...] | None = None


SCHEMA: dict[str, Key] = {
    "description": Key(str, "", "one line shown by `pi-image profiles`"),
    "extends": Key(str, None, "profile this one starts from"),
    "base": Key(str, None, "default base image (path or catalog name) when --base is not given"),
    "target": Key(str, None, "target the base must be (checked after detection)",
                  ("ubuntu-raspi", "kali-raspi", "raspios", "jetson-sd", "l4t-rootfs")),
    "role": Key(str, "worker", "node role", ("worker", "control-plane")),
    "kubernetes_version": Key(str, "1.31", "Kubernetes minor the node is pinned to, e.g. '1.31'"),
    "runtime": Key(str, "containerd", "container runtime", ("containerd", "docker")),
    "containerd_config_version": Key(int, 2, "containerd config schema: 2 (containerd 1.x) or 3 (2.x)", (2, 3)),
    "default_runtime": Key(str, None, "default runtime for pods: docker default-runtime / containerd default_runtime_name (Jetson: nvidia)"),
    "cgroup_flags": Key(list, ["cgroup_enable=cpuset", "cgroup_enable=memory", "cgroup_memory=1", "swapaccount=1"],
                        "kernel arguments appended to the command line"),
    "swap": Key(str, "off", "swap on the node (kubelet refuses swap by default)", ("off",)),
    "overlays": Key(list, [], "overlays (directories under overlays/) rendered into the image, in order"),
    "hostname": Key(str, None, "hostname when no --node/inventory gives one"),
    "user": Key(str, None, "admin login to create or configure (default: the OS's own default user)"),
    "password_hash": Key(str, None, "crypt(3) hash for the admin user (default: password login disabled)"),
    "ssh_authorized_keys": Key(list, [], "SSH public keys for the admin user"),
    "timezone": Key(str, "Etc/UTC", "IANA time zone"),
    "locale": Key(str, "C.UTF-8", "default locale"),
    "wifi": Key(dict, None, "Wi-Fi: {ssid, psk, country}"),
    "network": Key(dict, {}, "cluster interface: {interface, address (CIDR), gateway, dns: [..]}; empty = DHCP"),
}


@dataclass(frozen=True)
class Profile:
    """A resolved profile: every schema key has a value; `sources` lists the files it came from."""

    name: str
    values: dict[str, Any]
    sources: tuple[Path, ...]

    def __getitem__(self, key: str) -> Any:
        return self.values[key]


def find_profile(name: str, dirs: list[Path] | None = None) -> Path:
    """The file of profile `name` (or `name` itself if it is a path to a YAML file)."""
    as_path = Path(name)
    if as_path.suffix in (".yaml", ".yml") and as_path.is_file():
        return as_path
    for d in dirs or PROFILE_DIRS:
        candidate = d / f"{name}.yaml"
        if candidate.is_file():
            return candidate
    known = sorted(p.stem for d in (dirs or PROFILE_DIRS) for p in d.glob("*.yaml"))
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else f" (known: {', '.join(known)})"
    raise UserError(f"unknown profile '{name}'{hint}")


def load_profile(name: str, overrides: dict[str, Any] | None = None, dirs: list[Path] | None = None) -> Profile:
    """Load profile `name`, apply its `extends:` chain, then `overrides` (from --set), and validate it all."""
    values: dict[str, Any] = {k: v.default for k, v in SCHEMA.items()}
    chain: list[Path] = []
    current: str | None = name
    layers: list[dict[str, Any]] = []
    while current:
        path = find_profile(current, dirs)
        if path in chain:
            raise UserError(f"{path}: 'extends' loops back to {path.stem}")
        chain.append(path)
        layer = _read_yaml(path)
        layers.append(layer)
        current = layer.get("extends")
    for layer in reversed(layers):
        values.update(layer)
    for key, value in (overrides or {}).items():
        check_value(key, value, "--set")
        values[key] = value
    values["extends"] = None
    return Profile(chain[0].stem if chain else name, values, tuple(chain))


def _read_yaml(path: Path) -> dict[str, Any]:
    """A profile file's mapping, every key checked against the schema with its line number in errors."""
    text = path.read_text()
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise UserError(f"{where}: invalid YAML: {getattr(err, 'problem', err)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict) or not isinstance(node, yaml.MappingNode):
        raise UserError(f"{path}:1: a profile must be a mapping of settings")
    for key_node, _ in node.value:
        check_value(key_node.value, data[key_node.value], f"{path}:{key_node.start_mark.line + 1}")
    return data


def check_value(key: str, value: Any, where: str) -> None:
    """Raise a UserError naming `where` if `key` is unknown or `value` has the wrong type or choice."""
    if key not in SCHEMA:
        close = difflib.get_close_matches(key, list(SCHEMA), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise UserError(f"{where}: unknown key '{key}'{hint}")
    spec = SCHEMA[key]
    if value is None:
        return
    if isinstance(spec.type, type) and spec.type is str and isinstance(value, (int, float)):
        raise UserError(f"{where}: '{key}' must be a string; quote it (e.g. {key}: \"{value}\")")
    if not isinstance(value, spec.type):
        raise UserError(f"{where}: '{key}' must be a {_type_name(spec.type)}, not {type(value).__name__}")
    if spec.choices and value not in spec.choices:
        raise UserError(f"{where}: '{key}' must be one of {', '.join(map(str, spec.choices))}, not {value!r}")
    if key == "kubernetes_version" and not re.fullmatch(r"1\.\d{1,2}", value):
        raise UserError(f"{where}: 'kubernetes_version' must be a minor version like \"1.31\", not {value!r}")


def _type_name(t: type | tuple[type, ...]) -> str:
    names = {str: "string", int: "number", list: "list", dict: "mapping", bool: "true/false"}
    return " or ".join(names.get(x, x.__name__) for x in (t if isinstance(t, tuple) else (t,)))


def parse_set(assignments: tuple[str, ...]) -> dict[str, Any]:
    """`--set key=value` pairs; values are YAML scalars/lists (`--set ssh_authorized_keys=[...]`)."""
    out: dict[str, Any] = {}
    for item in assignments:
        key, sep, raw = item.partition("=")
        if not sep:
            raise UserError(f"--set {item!r}: expected key=value")
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError:
            value = raw
        if SCHEMA.get(key) and SCHEMA[key].type is str and value is not None and not isinstance(value, str):
            value = raw  # "1.31" must stay a string
        out[key.strip()] = value
    return out


def list_profiles(dirs: list[Path] | None = None) -> list[Profile]:
    """Every profile found, resolved."""
    return [load_profile(str(p)) for d in (dirs or PROFILE_DIRS) for p in sorted(d.glob("*.yaml"))]
