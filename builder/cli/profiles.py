"""`pi-image profiles`: the shipped profiles, and with --keys every setting a profile may give."""

from __future__ import annotations

import json
import shutil

import click

from ..config.profile_keys import key_reference, key_table
from ..config.profiles import list_profiles
from .options import echo_lines


@click.command("profiles")
@click.option("--keys", is_flag=True, help="List every key a profile may set: type, default and meaning.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
def profiles(keys: bool, as_json: bool) -> None:
    """List the profiles (profiles/*.yaml), one line each; with --keys, every setting a profile (or
    `build --set KEY=VALUE`) may give, with its type, default and meaning, fields of mappings as `wifi.country`.

    \b
    Examples:
      pi-image profiles
      pi-image profiles --keys
      pi-image profiles --keys --json | jq '.[] | select(.key == "wifi.country")'
    """
    if keys:
        _print_keys(as_json)
        return
    found = list_profiles()
    if as_json:
        click.echo(json.dumps([{"name": p.name, "description": p["description"], "target": p["target"],
                                "role": p["role"], "runtime": p["runtime"]} for p in found], indent=2))
        return
    for p in found:
        click.echo(f"{p.name:14} {p['target'] or 'any':13} {p['description']}")


def _print_keys(as_json: bool) -> None:
    rows = key_reference()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    echo_lines(key_table(rows, shutil.get_terminal_size((120, 24)).columns))
    fields = sum("." in row["key"] for row in rows)
    click.echo(f"\n{len(rows) - fields} keys and {fields} fields of mappings. Set them in a profile of your own "
               "(`extends: worker-8g`, then `pi-image build --profile my.yaml`) or one at a time with "
               "`pi-image build --set KEY=VALUE` (a field too: --set wifi.ssid=HomeNet). Secrets never go on the "
               "command line: the Wi-Fi passphrase comes from --wifi-psk (asked) or --wifi-psk-file FILE.")
