"""The `pi-image` command line: parses arguments, calls the library, prints results. No logic lives here."""

from __future__ import annotations

import logging
import sys

import click

from . import __version__
from .errors import UserError


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


def _register_cluster_commands() -> None:
    """Cluster, token-server, approve and status commands live in their own module."""
    try:
        from .cluster_cli import COMMANDS
    except ImportError:  # pragma: no cover - only while the join protocol is being built
        return
    for command in COMMANDS:
        main.add_command(command)


_register_cluster_commands()
