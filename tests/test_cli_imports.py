"""The ``cnnf`` command imports a sub-command group's module only when that group
runs: a ``cnnf rules list`` imports neither the Console's store nor the lab nor
the demo (each ``cnnf`` process the tests and users start paid ~1.5 s of CPU
for them). Checked in fresh interpreters, by what is in ``sys.modules``."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys

import pytest
import typer
from typer.testing import CliRunner

import cnnf.commands
from cnnf.cli import GROUPS, app

HEAVY = ("sqlalchemy", "fastapi", "cnnf.console", "cnnf.lab", "cnnf.demo", "cnnf.defender",
         "cnnf.commands")


def imported_after(argv: list[str]) -> tuple[int, list[str]]:
    """Runs ``cnnf ARGV`` in a fresh interpreter; its exit status and which of the
    HEAVY modules it imported."""
    code = (
        "import sys\n"
        "from cnnf.cli import main\n"
        f"sys.argv = ['cnnf', *{argv!r}]\n"
        "try:\n"
        "    main()\n"
        "except SystemExit as e:\n"
        "    status = e.code or 0\n"
        "else:\n"
        "    status = 0\n"
        f"heavy = sorted(m for m in sys.modules if m.startswith({HEAVY!r}))\n"
        "print('\\n' + __import__('json').dumps([status, heavy]))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120).stdout
    status, heavy = json.loads(out.splitlines()[-1])
    return status, heavy


@pytest.mark.parametrize(("argv", "allowed"), [
    (["--version"], ()),
    (["rules", "list", "--help"], ("cnnf.commands",)),
    (["forwarding", "--help"], ("cnnf.commands",)),
    (["policy", "validate", "--help"], ("cnnf.commands",)),
    (["defender", "--help"], ("cnnf.commands",)),
    (["console", "--help"], ("cnnf.commands", "cnnf.console", "sqlalchemy")),
])
def test_a_group_imports_only_what_it_needs(argv: list[str], allowed: tuple[str, ...]) -> None:
    status, heavy = imported_after(argv)
    assert status == 0
    assert [m for m in heavy if not m.startswith(allowed)] == []
    group = argv[0].lstrip("-")
    if group in GROUPS:
        assert f"cnnf.commands.{GROUPS[group]}" in heavy
        assert not any(m.startswith(("cnnf.lab", "cnnf.demo")) for m in heavy)


def test_every_command_module_is_a_group_of_the_root() -> None:
    modules = {m.name for m in pkgutil.iter_modules(cnnf.commands.__path__)
               if hasattr(__import__(f"cnnf.commands.{m.name}", fromlist=["app"]), "app")}
    assert set(GROUPS.values()) == modules


def test_the_root_help_lists_every_group_with_its_help() -> None:
    result = CliRunner().invoke(app, ["--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    for name, module_name in GROUPS.items():
        module = __import__(f"cnnf.commands.{module_name}", fromlist=["app"])
        sub: typer.Typer = module.app
        first = (sub.info.help or "").split("\n")[0].split(". ")[0]
        assert first, name
        line = next(ln for ln in result.output.splitlines() if f" {name} " in ln)
        assert first[:30] in line, (name, line)


def test_an_unknown_group_is_refused_with_the_usage() -> None:
    result = CliRunner().invoke(app, ["nosuch"])
    assert result.exit_code == 2
    assert "No such command 'nosuch'" in result.output
