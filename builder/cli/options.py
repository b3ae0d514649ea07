"""What several commands share: the options of a node's build and its x86 seed, and reading them (the login's
password, the --set values with the Wi-Fi passphrase, the cluster directory); printing lines."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from ..cluster import default_cluster_dir
from ..config.profiles import parse_set
from ..config.values import wifi_psk
from ..errors import UserError
from ..plan.users import hash_password

F = TypeVar("F", bound=Callable[..., Any])


def node_options(command: F) -> F:
    """The options a node's build and its x86 seed share: profile values, overlays, the apt key, the login."""
    for option in reversed([
        click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override a profile value, or one "
                     "field of a mapping (--set wifi.ssid=HomeNet; `pi-image profiles --keys` lists them); "
                     "repeatable."),
        click.option("--overlay", "overlays", multiple=True, type=click.Path(exists=True, file_okay=False),
                     help="Extra overlay directory rendered after the profile's (repeatable)."),
        click.option("--kube-key", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                     help="pkgs.k8s.io Release.key to install (default: download once and cache)."),
        click.option("--ssh-key", "ssh_key_files", multiple=True, type=click.Path(dir_okay=False, path_type=Path),
                     help="SSH public key file (.pub) for the admin user (repeatable)."),
        click.option("--password", "ask_password", is_flag=True, help="Prompt for the admin user's password "
                     "(hashed here with SHA-512 crypt; never stored in clear)."),
        click.option("--password-file", type=click.Path(dir_okay=False, path_type=Path),
                     help="Read the admin user's password from the first line of FILE (hashed like --password)."),
        click.option("--wifi-psk", "ask_wifi_psk", is_flag=True, help="Prompt for the Wi-Fi passphrase (hidden): it "
                     "never goes on the command line, where shell history and `ps` would keep it. The network: "
                     "--set wifi.ssid=NAME --set wifi.country=GB (or `wifi:` in a profile)."),
        click.option("--wifi-psk-file", type=click.Path(dir_okay=False, path_type=Path),
                     help="Read the Wi-Fi passphrase from the first line of FILE."),
        click.option("--no-login", is_flag=True, help="Build even though the admin user gets no key and no password."),
    ]):
        command = option(command)
    return command


def cluster_directory(cluster: Path | None, no_cluster: bool) -> Path | None:
    """--cluster, else the default cluster (PI_IMAGE_CLUSTER or ~/.config/pi-image/cluster), unless --no-cluster."""
    if no_cluster:
        if cluster:
            raise click.UsageError("give --cluster or --no-cluster, not both")
        return None
    return cluster or default_cluster_dir()


def password_hash(ask: bool, path: Path | None) -> str | None:
    """The admin password from a prompt or a file, as a crypt hash; the plaintext goes no further."""
    secret = _secret(ask, path, "--password", "Password for the admin user", "password")
    if secret is None:
        return None
    plain, source = secret
    if len(plain) < 8:
        raise UserError(f"{source}: the admin password has {len(plain)} characters; it needs at least 8")
    return hash_password(plain)


def set_values(sets: tuple[str, ...], ask_wifi_psk: bool, wifi_psk_file: Path | None) -> dict[str, Any]:
    """The --set values, and the Wi-Fi passphrase (from a prompt or a file, never the command line) as wifi.psk."""
    settings = parse_set(sets)
    secret = _secret(ask_wifi_psk, wifi_psk_file, "--wifi-psk", "Wi-Fi passphrase", "passphrase")
    if secret is not None:
        plain, source = secret
        problem = wifi_psk(plain)
        if problem:
            raise UserError(f"{source}: {problem}")
        settings["wifi.psk"] = plain
    return settings


def _secret(ask: bool, path: Path | None, option: str, prompt: str, what: str) -> tuple[str, str] | None:
    """(the secret, where it came from) from a hidden prompt (`option`) or the first line of a file
    (`option`-file), or None when neither was asked for."""
    if ask and path:
        raise click.UsageError(f"give {option} or {option}-file, not both")
    if path:
        source = f"{option}-file {path}"
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as err:
            raise UserError(f"{source}: cannot read it ({getattr(err, 'strerror', None) or err})") from None
        plain = lines[0] if lines else ""
        if not plain:
            raise UserError(f"{source}: the file is empty (its first line is the {what})")
        return plain, source
    if ask:
        return click.prompt(prompt, hide_input=True, confirmation_prompt=True, err=True), option
    return None


def echo_lines(lines: list[str]) -> None:
    """Print `lines`, one each."""
    for line in lines:
        click.echo(line)
