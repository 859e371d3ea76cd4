"""The ``cnnf`` command: one entry point, one sub-command group per component.

Each group's module is imported only when that group is invoked: every ``cnnf``
process would otherwise import the Console's store, the lab and the demo (about
1.5 s of CPU) whatever it runs. ``cnnf --help`` imports them all, for their help.
"""

from __future__ import annotations

import importlib

import click
import typer
from typer.core import TyperGroup

from cnnf import __version__

# Sub-command group -> the module under cnnf.commands whose ``app`` it is, in the
# order ``cnnf --help`` lists them.
GROUPS = {
    "policy": "policy",
    "lab": "lab",
    "console": "console",
    "defender": "defender",
    "demo": "demo",
    "rules": "rules",
    "forwarding": "forwarding",
}


class LazyGroups(TyperGroup):
    """The root group: a sub-command group is built from its module on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(GROUPS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in GROUPS:
            return None
        if cmd_name not in self.commands:
            module = importlib.import_module(f"cnnf.commands.{GROUPS[cmd_name]}")
            command = typer.main.get_group(module.app)
            command.name = cmd_name
            self.commands[cmd_name] = command
        return self.commands[cmd_name]


app = typer.Typer(
    name="cnnf",
    cls=LazyGroups,
    help="CNNF: a container-aware, east-west Layer 4 firewall and network monitor.",
    no_args_is_help=True,
    add_completion=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"cnnf {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version."
    ),
) -> None:
    """CNNF command line."""


def main() -> None:
    app()
