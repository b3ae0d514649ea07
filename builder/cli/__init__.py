"""The `pi-image` command line: parses arguments, calls the library, prints results. No logic lives here.

Each command lives in a module of its own (builder/cli/*.py), imported only when that command runs or shows its own
--help, the way click's documentation loads subcommands lazily: `pi-image build` pays for the build's imports and
no other command's (the cluster's, the flash's, the dashboard's), `pi-image --help` and `--version` for none.
`pi-image --help` lists the commands from COMMANDS, whose short help tests/unit/test_cli_commands.py holds equal
to each command's own.
"""

from __future__ import annotations

import importlib
import logging
import signal
import sys
from dataclasses import dataclass
from typing import Any

import click

from .. import __version__
from ..errors import Interrupted, UserError


@dataclass(frozen=True)
class LazyCommand:
    """Where a command is (`module:attribute`) and what `pi-image --help` says of it before it is imported: its
    help's first sentence, or its `short_help` where it sets one."""

    path: str
    help: str | None = None
    short_help: str | None = None

    def load(self) -> click.Command:
        """The command itself (its module imported)."""
        module, _, attribute = self.path.partition(":")
        command = getattr(importlib.import_module(module), attribute)
        assert isinstance(command, click.Command), self.path
        return command

    def stand_in(self, name: str) -> click.Command:
        """A command that lists like this one, for the group's help."""
        return click.Command(name, help=self.help, short_help=self.short_help)


COMMANDS: dict[str, LazyCommand] = {
    "approve": LazyCommand("builder.cli.cluster:approve_command", help=(
        "Let node NAME join: a pending unknown node, or a reflashed one replacing its Ready namesake.")),
    "bases": LazyCommand("builder.cli.bases:bases", help=(
        "List the base images pi-image knows by name: target, size, how a download is verified, and whether (and "
        "where) it is cached.")),
    "build": LazyCommand("builder.cli.build:build", help=(
        "Customize a vendor image into a Kubernetes node that joins its cluster at first power-on.")),
    "bundle": LazyCommand("builder.cli.build:bundle_command", help=(
        "Fill the cache with the offline bundle of every node of a cluster (packages and container images for its "
        "OS, architecture and role), so that `build --offline` then needs no network.")),
    "cache": LazyCommand("builder.cli.cache:cache_command", short_help=(
        "List (and prune) the downloads, unpacked images and leftovers pi-image keeps.")),
    "cluster": LazyCommand("builder.cli.cluster:cluster_group", help=(
        "Create and edit a cluster directory (settings, inventory, secrets).")),
    "dashboard": LazyCommand("builder.cli.dashboard:dashboard_command", help=(
        "Serve a web page that shows every node of the cluster as it boots and joins: phase and progress, last "
        "error and its fix, address, architecture, OS, role, card generation and whether the card is the newest.")),
    "demo-image": LazyCommand("builder.cli.demo:demo_image", help=(
        "Generate a small DEMO image in a real vendor layout (partitions, labels, key files) to try pi-image on.")),
    "enroll": LazyCommand("builder.cli.enroll:enroll_command", help=(
        "Write one self-contained script that makes an already installed machine (x86 Ubuntu, Arch) the worker "
        "NODE, without reflashing it: run it there once as root.")),
    "fetch": LazyCommand("builder.cli.bases:fetch", help="Download the base images NAME..."),
    "flash": LazyCommand("builder.cli.flash:flash", help=(
        "Write IMAGE to DEVICE (an SD card or USB disk, or a file), verify it by reading it back, and stamp the "
        "node.")),
    "inspect": LazyCommand("builder.cli.inspect:inspect", help=(
        "Show what IMAGE (a disk image, compressed image, or rootfs directory) is and how node-ready it is.")),
    "profiles": LazyCommand("builder.cli.profiles:profiles", help=(
        "List the profiles (profiles/*.yaml), one line each; with --keys, every setting a profile (or `build --set "
        "KEY=VALUE`) may give, with its type, default and meaning, fields of mappings as `wifi.country`.")),
    "seed-iso": LazyCommand("builder.cli.seed_iso:seed_iso_command", help=(
        "Make a cloud-init NoCloud seed (an ISO labelled CIDATA) that turns a stock Ubuntu Server amd64 into "
        "NODE.")),
    "status": LazyCommand("builder.cli.cluster:status_command", help=(
        "Show every node's story: its phase and how long each took, address, architecture, OS, whether its card "
        "is the newest, its last error and the fix.")),
    "token-server": LazyCommand("builder.cli.cluster:token_server_command", help=(
        "Serve short-lived join tokens to this cluster's nodes over pinned HTTPS (runs until Ctrl-C).")),
}


class PiImageGroup(click.Group):
    """Turns a `UserError` into one line on stderr and a non-zero exit, never a traceback; imports a command of
    `lazy` (by name) only when it is asked for."""

    def __init__(self, *args: Any, lazy: dict[str, LazyCommand] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = lazy or {}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in self.lazy:
            self.add_command(self.lazy[cmd_name].load(), cmd_name)
        return super().get_command(ctx, cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The commands' list, lazy ones from their stand-ins (nothing imported)."""
        listed = [(name, command) for name, command in map(self._listed, self.list_commands(ctx))
                  if command is not None and not command.hidden]
        if listed:
            limit = formatter.width - 6 - max(len(name) for name, _ in listed)
            with formatter.section("Commands"):
                formatter.write_dl([(name, command.get_short_help_str(limit)) for name, command in listed])

    def _listed(self, name: str) -> tuple[str, click.Command | None]:
        """`name` and what the help lists it as: the command if it is loaded, else its stand-in."""
        if name not in self.commands and name in self.lazy:
            return name, self.lazy[name].stand_in(name)
        return name, self.commands.get(name)

    def invoke(self, ctx: click.Context):
        signal.signal(signal.SIGTERM, _interrupt)  # so `finally:` blocks remove half-made outputs on kill too
        try:
            return super().invoke(ctx)
        except UserError as err:
            click.echo(f"pi-image: error: {err}", err=True)
            sys.exit(err.exit_code)
        except OSError as err:  # a file the user named or a directory pi-image writes: one line, not a traceback
            where = f"{err.filename}: " if err.filename else ""
            click.echo(f"pi-image: error: {where}{err.strerror or err}", err=True)
            sys.exit(1)
        except KeyboardInterrupt as err:  # an `Interrupted` says what it kept; elsewhere, cleanups ran
            said = str(err) if isinstance(err, Interrupted) else "nothing was left behind"
            click.echo(f"pi-image: interrupted: {said}", err=True)
            sys.exit(130)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@click.group(cls=PiImageGroup, lazy=COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="pi-image")
@click.option("-v", "--verbose", is_flag=True,
              help="Log every external command pi-image runs (and list what each build changed).")
@click.pass_context
def main(ctx: click.Context, verbose: bool) -> None:
    """Turn stock Raspberry Pi, Kali ARM and NVIDIA Jetson images into Kubernetes nodes that join by themselves.

    \b
    Examples:
      pi-image inspect ubuntu-22.04-preinstalled-server-arm64+raspi.img.xz
      pi-image build --profile worker-8g --base ubuntu.img.xz --output pi-worker1.img
    """
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, format="%(name)s: %(message)s")
    ctx.obj = {"verbose": verbose}
