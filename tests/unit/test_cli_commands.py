"""`pi-image` imports a command's module only when that command runs (issue 28): its --help still lists every command
as click would, and a command pays for its own imports, not the others'."""

from __future__ import annotations

import importlib
import json
import pkgutil
import subprocess
import sys

import click
import pytest

import builder.cli
from builder.cli import COMMANDS, main


def loaded_modules(*argv: str) -> set[str]:
    """The builder modules a fresh interpreter has imported after `pi-image ARGV` (it must exit 0)."""
    code = ("import json, sys\nfrom builder.cli import main\ntry:\n    main(sys.argv[1:], prog_name='pi-image')\n"
            "except SystemExit as done:\n    assert not done.code, done.code\n"
            "print(json.dumps(sorted(m for m in sys.modules if m.startswith('builder'))), file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, check=True)
    return set(json.loads(proc.stderr.splitlines()[-1]))


def test_help_and_version_import_no_command() -> None:
    for argv in (["--help"], ["--version"]):
        assert loaded_modules(*argv) == {"builder", "builder.cli", "builder.errors"}, argv


def test_a_command_imports_its_own_module_and_not_the_others() -> None:
    loaded = loaded_modules("build", "--help")

    assert "builder.cli.build" in loaded and "builder.build" in loaded
    assert not loaded & {"builder.cli.flash", "builder.cli.cluster", "builder.cli.dashboard", "builder.cards.flash",
                         "builder.build.seed_iso", "builder.cluster.status"}


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_each_command_is_listed_as_its_own_help_says(name: str) -> None:
    command = COMMANDS[name].load()

    assert command.name == name
    for limit in (30, 45, 62, 1000):
        assert COMMANDS[name].stand_in(name).get_short_help_str(limit) == command.get_short_help_str(limit)


def test_the_help_lists_what_click_lists_with_every_command_loaded() -> None:
    everything = click.Group("pi-image", commands={name: entry.load() for name, entry in COMMANDS.items()})
    lazy = subprocess.run([sys.executable, "-m", "builder", "--help"], capture_output=True, text=True, check=True)

    with click.Context(everything, info_name="pi-image") as ctx:
        formatter = ctx.make_formatter()
        everything.format_commands(ctx, formatter)
    assert formatter.getvalue() in lazy.stdout
    assert set(main.list_commands(click.Context(main))) == set(COMMANDS)


def test_every_command_of_the_cli_modules_is_in_the_table() -> None:
    modules = [importlib.import_module(f"builder.cli.{info.name}")
               for info in pkgutil.iter_modules(builder.cli.__path__)]
    commands = {id(value): value for module in modules for value in vars(module).values()
                if isinstance(value, click.Command)}
    subcommands = {id(sub) for command in commands.values() if isinstance(command, click.Group)
                   for sub in command.commands.values()}
    listed = {id(entry.load()) for entry in COMMANDS.values()}

    assert [command.name for key, command in commands.items() if key not in subcommands | listed] == []
