"""The ``cnnf`` command: one entry point, one sub-command group per component."""

from __future__ import annotations

import typer

from cnnf import __version__
from cnnf.commands import console as console_commands
from cnnf.commands import defender as defender_commands
from cnnf.commands import demo as demo_commands
from cnnf.commands import forwarding as forwarding_commands
from cnnf.commands import lab as lab_commands
from cnnf.commands import policy as policy_commands
from cnnf.commands import rules as rules_commands

app = typer.Typer(
    name="cnnf",
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


app.add_typer(policy_commands.app, name="policy")
app.add_typer(lab_commands.app, name="lab")
app.add_typer(console_commands.app, name="console")
app.add_typer(defender_commands.app, name="defender")
app.add_typer(demo_commands.app, name="demo")
app.add_typer(rules_commands.app, name="rules")
app.add_typer(forwarding_commands.app, name="forwarding")


def main() -> None:
    app()
