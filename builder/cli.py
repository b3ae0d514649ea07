"""The `pi-image` command line: parses arguments, calls the library, prints results. No logic lives here."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import click

from . import __version__
from .errors import UserError
from .image import open_medium
from .inspect import inspect as inspect_target
from .targets import detect


class PiImageGroup(click.Group):
    """Turns a `UserError` into one line on stderr and a non-zero exit, never a traceback."""

    def invoke(self, ctx: click.Context):  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except UserError as err:
            click.echo(f"pi-image: error: {err}", err=True)
            sys.exit(err.exit_code)


@click.group(cls=PiImageGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="pi-image")
@click.option("-v", "--verbose", is_flag=True, help="Log every external command pi-image runs.")
def main(verbose: bool) -> None:
    """Turn stock Raspberry Pi, Kali ARM and NVIDIA Jetson images into Kubernetes nodes that join by themselves.

    \b
    Examples:
      pi-image inspect ubuntu-22.04-preinstalled-server-arm64+raspi.img.xz
      pi-image build --profile worker-8g --base ubuntu.img.xz --output pi-worker1.img
    """
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, format="%(name)s: %(message)s")


@main.command()
@click.argument("image", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
def inspect(image: Path, as_json: bool) -> None:
    """Show what IMAGE (a disk image, compressed image, or rootfs directory) is and how node-ready it is.

    Never writes to IMAGE. A compressed image is unpacked once into the cache (~/.cache/pi-image).

    \b
    Examples:
      pi-image inspect ubuntu-24.04-preinstalled-server-arm64+raspi.img.xz
      pi-image inspect --json pi-worker1.img | jq .k8s
      pi-image inspect Linux_for_Tegra/rootfs
    """
    report = inspect_target(detect(open_medium(image)))
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    click.echo(f"{image}: {report['target']} — {report['os']['pretty_name']}")
    for p in report["partitions"]:
        name = p["label"] or p["name"] or ""
        click.echo(f"  partition {p['number']}: {p['fs'] or '?':7} {name:14} start {p['start']:>12}  size {_size(p['size'])}")
    click.echo(f"  kernel cmdline: {report['boot_cmdline']}")
    for key, value in report["k8s"].items():
        click.echo(f"  {key:15} {_mark(value)}")
    fb = report["firstboot"]
    click.echo(f"  {'firstboot':15} {_mark(fb['installed'])}" + (f" (node {fb['node']})" if fb["node"] else ""))


def _mark(value: object) -> str:
    if value is True:
        return "yes"
    if value in (False, None):
        return "no"
    return str(value)


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _register_cluster_commands() -> None:
    """Cluster, token-server, approve and status commands live in their own module."""
    try:
        from .cluster_cli import COMMANDS
    except ImportError:  # pragma: no cover - only while the join protocol is being built
        return
    for command in COMMANDS:
        main.add_command(command)


_register_cluster_commands()
