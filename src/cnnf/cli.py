"""The ``cnnf`` command: one entry point, one sub-command group per component.

Each group's module is imported only when that group is invoked: every ``cnnf``
process would otherwise import the Console's store, the lab and the demo (about
1.5 s of CPU) whatever it runs. ``cnnf --help`` imports them all, for their help.
"""

from __future__ import annotations

import importlib
from typing import Any

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
_loaded: dict[str, TyperGroup] = {}


class LazyGroups(TyperGroup):
    """The root group: a sub-command group is built from its module on first use.
    (``ctx`` is typer's Click context.)"""

    def list_commands(self, ctx: Any) -> list[str]:
        return list(GROUPS)

    def get_command(self, ctx: Any, cmd_name: str) -> TyperGroup | None:
        if cmd_name not in GROUPS:
            return None
        if cmd_name not in _loaded:
            module = importlib.import_module(f"cnnf.commands.{GROUPS[cmd_name]}")
            group = typer.main.get_group(module.app)
            group.name = cmd_name
            _loaded[cmd_name] = group
        return _loaded[cmd_name]


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
