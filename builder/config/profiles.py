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

from firstboot.nodeconfig import KUBE_INSTALLS, ROLES

from .. import DATA_DIR
from ..errors import UserError
from ..targets import TARGET_GROUPS, TARGET_NAMES
from ..targets.cmdline import DEFAULT_CGROUP_FLAGS
from . import values
from .runtimes import RUNTIMES

# Shipped data lives inside the package (so a wheel or `pipx install .` has it); the repository's top-level
# profiles/ and overlays/ are links to these directories.
PROFILE_DIRS = [DATA_DIR / "profiles"]


@dataclass(frozen=True)
class Key:
    """One profile setting: its type, default and meaning; `items`/`fields` type the inside of lists and mappings,
    `check` validates the value itself, and a `secret` value never reaches a manifest or a log."""

    type: type | tuple[type, ...]
    default: Any
    help: str
    choices: tuple[Any, ...] | None = None
    items: Key | None = None
    fields: dict[str, Key] | None = None
    required: tuple[str, ...] = ()
    check: values.Check | None = None
    secret: bool = False


KUBE_REPO_DEFAULT = "https://pkgs.k8s.io/core:/stable:/v{version}/deb/"
KUBE_RELEASE_DEFAULT = "https://dl.k8s.io/release"
CRICTL_DEFAULT = "https://github.com/kubernetes-sigs/cri-tools/releases/download"
CNI_PLUGINS_DEFAULT = "https://github.com/containernetworking/plugins/releases/download"

SCHEMA: dict[str, Key] = {
    "description": Key(str, "", "one line shown by `pi-image profiles`"),
    "extends": Key(str, None, "profile this one starts from"),
    "base": Key(str, None, "default base image (path or catalog name) when --base is not given"),
    "target": Key(str, None, "the target this profile builds on, for hardware or settings only it has (Jetson's "
                  "nvidia runtime), or `raspberry-pi` for any Raspberry Pi OS (Ubuntu, Raspberry Pi OS, Kali); "
                  "unset: whatever OS the base turns out to be (checked after detection)",
                  TARGET_NAMES + tuple(TARGET_GROUPS)),
    "role": Key(str, "worker", "node role", ROLES),
    "kubernetes_version": Key(str, "1.31", "Kubernetes minor the node is pinned to, e.g. '1.31' "
                              "(with --cluster, the cluster's version; a profile that disagrees is an error)"),
    "kube_repo_url": Key(str, KUBE_REPO_DEFAULT, "apt repository of kubelet/kubeadm/kubectl (a mirror, say); "
                         "{version} stands for the minor", check=values.kube_repo_url),
    "kube_install": Key(str, None, "how the node gets kubeadm, kubelet and kubectl: `packages` (apt from "
                        "kube_repo_url, pinned to the minor) or `release` (the upstream binaries of the cluster's "
                        "exact patch, with crictl and the CNI plugins, each checked against the SHA-256 the build "
                        "records); unset: the target's default (release on Arch Linux, packages elsewhere)",
                        KUBE_INSTALLS),
    "kube_release_url": Key(str, KUBE_RELEASE_DEFAULT, "kube_install: release: where kubeadm, kubelet and kubectl "
                            "come from (VERSION/bin/linux/ARCH/TOOL and stable-MINOR.txt below it; a mirror, say)",
                            check=values.http_url),
    "crictl_url": Key(str, CRICTL_DEFAULT, "kube_install: release: where crictl comes from "
                      "(VERSION/crictl-VERSION-linux-ARCH.tar.gz below it)", check=values.http_url),
    "cni_plugins_url": Key(str, CNI_PLUGINS_DEFAULT, "kube_install: release: where the CNI plugins come from "
                           "(VERSION/cni-plugins-linux-ARCH-VERSION.tgz below it)", check=values.http_url),
    "proxy": Key(str, None, "HTTP(S) proxy for apt and the container runtime, like http://10.0.0.1:3128",
                 check=values.proxy_url),
    "offline": Key(bool, False, "carry every package and container image the node needs on its card (a bundle "
                   "under /var/lib/pi-image/bundle, made once and cached on this machine): first boot needs no "
                   "network but the cluster's; `build --offline` or `offline: true` in cluster.yaml set it"),
    "registry_mirrors": Key(dict, {}, "container registry mirrors, {registry: URL} like {registry.k8s.io: "
                            "http://192.168.6.2:5000, docker.io: https://mirror.example.com}: containerd's "
                            "certs.d/HOST/hosts.toml on the node, and where an --offline build fetches images",
                            check=values.registry_mirrors),
    "package_mirrors": Key(dict, {}, "{archive URL: mirror URL} the build host fetches an --offline bundle's "
                           "packages from, like {http://ports.ubuntu.com/ubuntu-ports: https://mirror.example.com/"
                           "ubuntu-ports} (the node's own apt sources are not changed)", check=values.package_mirrors),
    "extra_images": Key(list, [], "more container images an --offline bundle carries (your registry, an ingress), "
                        "like ghcr.io/org/app:1.2", items=Key(str, None, "an image reference",
                                                              check=values.image_reference)),
    "runtime": Key(str, "containerd", "container runtime", RUNTIMES),
    "cri_dockerd": Key(bool, False, "runtime: docker only: cri-dockerd is in the image (from an --overlay), so "
                       "Kubernetes >= 1.24 can use docker"),
    "containerd_config_version": Key(int, 2, "containerd config schema: 2 (read by containerd 1.6, 1.7 and 2.x) "
                                     "or 3 (2.x only)", (2, 3)),
    "default_runtime": Key(str, None, "default runtime for pods: docker default-runtime / containerd "
                           "default_runtime_name (Jetson: nvidia)", ("runc", "nvidia")),
    "cgroup_flags": Key(list, list(DEFAULT_CGROUP_FLAGS), "kernel arguments appended to the command line",
                        items=Key(str, None, "a kernel argument", check=values.kernel_argument)),
    "swap": Key(str, "off", "swap on the node (kubelet refuses swap by default)", ("off",)),
    "overlays": Key(list, [], "overlays (shipped, or from --overlay) rendered into the image, in order",
                    items=Key(str, None, "an overlay name")),
    "hostname": Key(str, None, "hostname when no --node/inventory gives one", check=values.hostname),
    "user": Key(str, None, "admin login to create or configure (default: the target's: ubuntu on Ubuntu, kali on "
                "Kali, pi on Raspberry Pi OS, jetson on Jetson)", check=values.login_name),
    "password_hash": Key(str, None, "crypt(3) hash for the admin user (default: password login disabled); "
                         "`build --password` makes one", check=values.password_hash, secret=True),
    "ssh_authorized_keys": Key(list, [], "SSH public keys for the admin user (`build --ssh-key FILE` adds more)",
                               items=Key(str, None, "an SSH public key", check=values.ssh_public_key)),
    "memory_gb": Key((int, float), None, "the board's memory in GiB (2, 4, 8): sizes the kubelet's reservations, "
                     "eviction and max pods (builder/plan/kubelet.py); none = the kubelet's defaults",
                     check=values.between(0.25, 1024, " GiB")),
    "cpus": Key(int, 4, "the board's CPU cores (every Pi 4/5 and Jetson Nano has 4): sizes kubeReserved cpu",
                check=values.between(1, 256)),
    "max_pods": Key(int, None, "pods the kubelet takes (default: 16 per GiB of memory_gb, at most 110)",
                    check=values.between(1, 1000)),
    "timezone": Key(str, "Etc/UTC", "IANA time zone, like Europe/London (/etc/timezone, /etc/localtime)",
                    check=values.time_zone),
    "locale": Key(str, "C.UTF-8", "default locale (LANG in /etc/default/locale), like en_GB.UTF-8; any other than "
                  "C.UTF-8 is generated at first boot", check=values.locale_name),
    "keyboard": Key(str, "us", "keyboard layout (XKB name, like us, gb, de, fr; /etc/default/keyboard): for a "
                    "console on the board, e.g. a Pi 400's own keyboard", check=values.keyboard_layout),
    "wifi": Key(dict, None, "Wi-Fi: {ssid, psk (none: an open network), country (two letters, required: the "
                "regulatory domain, set on the kernel command line and in netplan where it takes one, so the radio "
                "is allowed to come up with no screen)}",
                fields={"ssid": Key(str, None, "network name", check=values.wifi_ssid),
                        "psk": Key(str, None, "WPA passphrase", check=values.wifi_psk, secret=True),
                        "country": Key(str, None, "regulatory domain, like GB", check=values.wifi_country)},
                required=("ssid", "country")),
    "network": Key(dict, {}, "cluster interface: {interface, address, gateway, dns: [..]}; empty = DHCP "
                   "(with --cluster, the inventory and cluster.yaml give address, gateway and dns)",
                   fields={"interface": Key(str, None, "interface name, like eth0"),
                           "address": Key(str, None, "address, like 192.168.6.15/24", check=values.ip_interface),
                           "gateway": Key(str, None, "default gateway", check=values.ip_address),
                           "dns": Key(list, None, "name servers",
                                      items=Key(str, None, "a name server", check=values.ip_address))}),
}


@dataclass(frozen=True)
class Profile:
    """A resolved profile: every schema key has a value; `sources` lists the files it came from and `explicit`
    the keys a file or --set gave (the others are schema defaults)."""

    name: str
    values: dict[str, Any]
    sources: tuple[Path, ...]
    explicit: frozenset[str] = frozenset()

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    def secret_values(self) -> list[str]:
        """Every secret value set (password hash, Wi-Fi passphrase), to keep them out of manifests and hashes."""
        found = []
        for key, spec in SCHEMA.items():
            value = self.values.get(key)
            if spec.secret and value:
                found.append(str(value))
            for name, field in (spec.fields or {}).items():
                if field.secret and isinstance(value, dict) and value.get(name):
                    found.append(str(value[name]))
        return found

    def public_values(self) -> dict[str, Any]:
        """The values with every secret replaced by "(set)": what a manifest may record."""
        return {key: _public(SCHEMA[key], value) for key, value in self.values.items()}


def _public(spec: Key, value: Any) -> Any:
    if value is None:
        return None
    if spec.secret:
        return "(set)"
    if spec.fields and isinstance(value, dict):
        return {k: _public(spec.fields[k], v) if k in spec.fields else v for k, v in value.items()}
    return value


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
    resolved: dict[str, Any] = {k: v.default for k, v in SCHEMA.items()}
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
    explicit: set[str] = set()
    for layer in reversed(layers):
        resolved.update(layer)
        explicit.update(layer)
    explicit.update(apply_overrides(resolved, overrides or {}))
    resolved["extends"] = None
    for key, spec in SCHEMA.items():  # every field of a mapping present (None when not given), for templates
        if spec.fields and isinstance(resolved[key], dict) and resolved[key]:
            resolved[key] = {field: resolved[key].get(field) for field in spec.fields}
    return Profile(chain[0].stem if chain else name, resolved, tuple(chain), frozenset(explicit - {"extends"}))


def _read_yaml(path: Path) -> dict[str, Any]:
    """A profile file's mapping, every key checked against the schema with its line number in errors."""
    try:
        text = path.read_text(encoding="utf-8")
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise UserError(f"{where}: invalid YAML: {getattr(err, 'problem', err)}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: cannot read this profile: {getattr(err, 'strerror', None) or err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict) or not isinstance(node, yaml.MappingNode):
        raise UserError(f"{path}:1: a profile must be a mapping of settings")
    seen: set[str] = set()
    for key_node, _ in node.value:
        where = f"{path}:{key_node.start_mark.line + 1}"
        if isinstance(key_node, yaml.ScalarNode) and key_node.value in seen:
            raise UserError(f"{where}: '{key_node.value}' is set twice in this file: keep one")
        seen.add(key_node.value)
        if not isinstance(key_node, yaml.ScalarNode) or key_node.tag != "tag:yaml.org,2002:str":
            raise UserError(f"{where}: a setting's name must be a word like 'timezone', not "
                            f"{yaml.safe_load(yaml.serialize(key_node))!r}")
        check_value(key_node.value, data[key_node.value], where)
    return data


def apply_overrides(resolved: dict[str, Any], overrides: dict[str, Any], where: str = "--set") -> set[str]:
    """Apply --set values to `resolved` in their order, checked; return the top-level keys they set.

    A field of a mapping key (`wifi.ssid`, as `profiles --keys` lists it) changes that field only: the mapping the
    profile gives keeps its other fields, and is checked whole (its required fields) once every value is in.
    """
    fielded: set[str] = set()
    for key, value in overrides.items():
        name, dot, field_name = key.partition(".")
        if dot:
            check_field(name, field_name, value, where)
            resolved[name] = {**(resolved.get(name) or {}), field_name: value}
            fielded.add(name)
        else:
            check_value(key, value, where)
            resolved[key] = value
    for name in fielded:
        spec = SCHEMA[name]
        missing = next((f for f in spec.required if resolved[name].get(f) in (None, "")), None)
        if missing:
            meaning = (spec.fields or {})[missing].help
            raise UserError(f"{where}: '{name}' needs '{missing}' ({meaning}) too: add --set {name}.{missing}=VALUE")
        check_value(name, resolved[name], where)
    return {key.partition(".")[0] for key in overrides}


def check_field(key: str, field_name: str, value: Any, where: str) -> None:
    """Like check_value, for one field of the mapping key `key` (`wifi.ssid`)."""
    if key not in SCHEMA:
        wanted = f"{key}.{field_name}"
        raise UserError(f"{where}: unknown key '{wanted}'{_did_you_mean(wanted, _field_keys())}")
    spec = SCHEMA[key]
    if not spec.fields:
        raise UserError(f"{where}: '{key}' is not a mapping, so it has no field '{field_name}': set it whole "
                        f"with {key}=VALUE")
    if field_name not in spec.fields:
        raise UserError(f"{where}: '{key}' has no setting '{field_name}'{_did_you_mean(field_name, spec.fields)} "
                        f"(it takes {', '.join(spec.fields)})")
    _check(spec.fields[field_name], value, f"{key}.{field_name}", where)


def _field_keys() -> list[str]:
    return [f"{key}.{name}" for key, spec in SCHEMA.items() for name in spec.fields or {}]


def check_value(key: str, value: Any, where: str) -> None:
    """Raise a UserError naming `where` if `key` is unknown or `value` (or anything inside it) is wrong."""
    if key not in SCHEMA:
        raise UserError(f"{where}: unknown key '{key}'{_did_you_mean(key, SCHEMA)}")
    _check(SCHEMA[key], value, key, where)
    if key == "kubernetes_version" and value is not None and not re.fullmatch(r"1\.\d{1,2}", value):
        raise UserError(f"{where}: 'kubernetes_version' must be a minor version like \"1.31\", not {value!r}")


def _check(spec: Key, value: Any, name: str, where: str) -> None:
    """Type, choices and check of `value` against `spec`, then of its items or fields, recursively."""
    if value is None:
        if spec.default is not None:
            raise UserError(f"{where}: '{name}' is empty: give it a value, or remove the line to get the default "
                            f"({spec.default!r})")
        return
    if spec.type is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        example = f'{name}: "{value}"' if not spec.secret else f'{name}: "..."'
        raise UserError(f"{where}: '{name}' must be a string; quote it (e.g. {example})")
    if not isinstance(value, spec.type) or (isinstance(value, bool) and spec.type is not bool):
        raise UserError(f"{where}: '{name}' must be a {_type_name(spec.type)}, not {_type_name(type(value))} "
                        f"{_shown(spec, value)}")
    if spec.choices and value not in spec.choices:
        raise UserError(f"{where}: '{name}' must be one of {', '.join(map(str, spec.choices))}, not {value!r}")
    problem = spec.check(value) if spec.check else None
    if problem:
        raise UserError(f"{where}: '{name}': {problem}")
    container: Any = value  # a list or a dict, as spec.type says (checked above)
    if spec.items is not None:
        for index, item in enumerate(container):
            if item is None:
                raise UserError(f"{where}: '{name}[{index}]' is empty")
            _check(spec.items, item, f"{name}[{index}]", where)
    if spec.fields is not None:
        for field_name, field_value in container.items():
            if field_name not in spec.fields:
                raise UserError(f"{where}: '{name}' has no setting {field_name!r}"
                                f"{_did_you_mean(field_name, spec.fields)} (it takes {', '.join(spec.fields)})")
            _check(spec.fields[field_name], field_value, f"{name}.{field_name}", where)
        for field_name in spec.required:
            if container.get(field_name) in (None, ""):
                raise UserError(f"{where}: '{name}' needs '{field_name}' ({spec.fields[field_name].help})")


def _did_you_mean(word: Any, known: Any) -> str:
    close = difflib.get_close_matches(str(word), [str(k) for k in known], n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _shown(spec: Key, value: Any) -> str:
    return "(hidden)" if spec.secret else repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."


def _type_name(t: type | tuple[type, ...]) -> str:
    names = {str: "string", int: "number", float: "number", list: "list", dict: "mapping", bool: "true/false",
             type(None): "empty"}
    return " or ".join(names.get(x, x.__name__) for x in (t if isinstance(t, tuple) else (t,)))


# Secret fields that must never come from the command line (shell history, `ps`), and where they come from instead.
SECRET_OPTIONS = {"wifi.psk": "--wifi-psk (asked for, hidden) or --wifi-psk-file FILE (its first line)"}


def parse_set(assignments: tuple[str, ...]) -> dict[str, Any]:
    """`--set key=value` pairs; values are YAML scalars/lists/mappings (`--set ssh_authorized_keys=[...]`), a field of
    a mapping key is `--set wifi.ssid=HomeNet`. A string setting keeps its text as typed ("1.31" stays a string).
    A secret field (the Wi-Fi passphrase) is refused, whole or inside a mapping: see SECRET_OPTIONS."""
    out: dict[str, Any] = {}
    for item in assignments:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep:
            raise UserError(f"--set {item!r}: expected key=value")
        _refuse_secret(key, raw)
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError:
            value = raw
        spec = _spec_of(key)
        if spec is not None and spec.type is str and value is not None and not isinstance(value, str):
            value = raw  # "1.31" must stay a string
        out[key] = value
    return out


def _spec_of(key: str) -> Key | None:
    """The schema of `key`, or of the field `wifi.ssid` names; None if there is none."""
    name, _, field_name = key.partition(".")
    spec = SCHEMA.get(name)
    if spec is not None and field_name:
        return (spec.fields or {}).get(field_name)
    return spec


def _refuse_secret(key: str, raw: str) -> None:
    """A secret field given on the command line, alone (`wifi.psk=...`) or in its mapping (`wifi={..., psk: ...}`):
    one line that names it, never its value."""
    name, _, field_name = key.partition(".")
    spec = SCHEMA.get(name)
    if spec is None or not spec.fields:
        return
    try:
        given = yaml.safe_load(raw) if not field_name else None
    except yaml.YAMLError:
        given = None
    for secret in (f for f, inner in spec.fields.items() if inner.secret):
        in_mapping = isinstance(given, dict) and secret in given if given is not None \
            else not field_name and re.search(rf"\b{secret}\b[\"']?\s*:", raw) is not None
        if field_name == secret or in_mapping:
            what, instead = spec.fields[secret].help, SECRET_OPTIONS.get(f"{name}.{secret}", "it in a profile file")
            raise UserError(f"--set {key}: a {what} on the command line stays in shell history and is shown by `ps`: "
                            f"drop it from --set and pass {instead}")


def list_profiles(dirs: list[Path] | None = None) -> list[Profile]:
    """Every profile found, resolved."""
    return [load_profile(str(p)) for d in (dirs or PROFILE_DIRS) for p in sorted(d.glob("*.yaml"))]
