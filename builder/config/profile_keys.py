"""Every profile key, for users (`pi-image profiles --keys`): made from builder.config.profiles.SCHEMA, so it cannot
drift.

    KEY          TYPE     DEFAULT   MEANING
    timezone     string   Etc/UTC   IANA time zone
    wifi.country string   (none)    regulatory domain, like GB; required when wifi is set
"""

from __future__ import annotations

import textwrap
from typing import Any

import yaml

from .profiles import SCHEMA, Key, _type_name

DEFAULT_WIDTH = 22  # a longer default goes on a line of its own under the meaning


def key_reference() -> list[dict[str, Any]]:
    """One row per key, each followed by the fields of a mapping key (`wifi.country`): key, type, default (as
    written in YAML; None: no default), meaning, choices, secret (never in a manifest or log), required (a field
    the mapping must have)."""
    rows = []
    for name, spec in SCHEMA.items():
        rows.append(_row(name, spec, required=False))
        for field, inner in (spec.fields or {}).items():
            rows.append(_row(f"{name}.{field}", inner, required=field in spec.required))
    return rows


def key_table(rows: list[dict[str, Any]], width: int) -> list[str]:
    """`rows` as a text table `width` columns wide, the meaning wrapped in its column."""
    shown = [(row["key"], row["type"], _shown_default(row["default"]), _meaning(row)) for row in rows]
    key_width = max(len(key) for key, *_ in shown)
    type_width = max(len(kind) for _, kind, *_ in shown)
    default_width = max(len(d) for _, _, d, _ in shown if len(d) <= DEFAULT_WIDTH)
    indent = key_width + type_width + default_width + 6
    lines = [f"{'KEY':{key_width}}  {'TYPE':{type_width}}  {'DEFAULT':{default_width}}  MEANING"]
    for key, kind, default, meaning in shown:
        if len(default) > DEFAULT_WIDTH:
            meaning, default = f"{meaning}; default: {default}", "(below)"
        wrapped = textwrap.wrap(meaning, max(width - indent, 30), break_on_hyphens=False) or [""]
        lines.append(f"{key:{key_width}}  {kind:{type_width}}  {default:{default_width}}  {wrapped[0]}")
        lines += [" " * indent + more for more in wrapped[1:]]
    return lines


def _row(name: str, spec: Key, required: bool) -> dict[str, Any]:
    return {"key": name, "type": _type(spec), "default": spec.default, "meaning": spec.help,
            "choices": list(spec.choices) if spec.choices else None, "secret": spec.secret, "required": required}


def _type(spec: Key) -> str:
    """The type in the words of the profile errors ("string", "number", "list of strings")."""
    kinds = spec.type if isinstance(spec.type, tuple) else (spec.type,)
    name = " or ".join(dict.fromkeys(_type_name(kind) for kind in kinds))
    return f"{name} of {_type(spec.items)}s" if spec.items is not None else name


def _shown_default(value: Any) -> str:
    """A default as it would be written in a profile (YAML: `'off'` is quoted, or YAML would read false)."""
    if value is None:
        return "(none)"
    text = yaml.safe_dump(value, default_flow_style=True, width=1 << 16)
    return text.removesuffix("...\n").strip()


def _meaning(row: dict[str, Any]) -> str:
    notes = [row["meaning"]]
    if row["choices"]:
        notes.append("one of " + ", ".join(map(str, row["choices"])))
    if row["required"]:
        notes.append(f"required when {row['key'].split('.')[0]} is set")
    if row["secret"]:
        notes.append("secret: never written to a manifest or a log")
    return "; ".join(notes)
