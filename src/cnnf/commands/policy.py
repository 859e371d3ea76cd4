"""``cnnf policy``: work with policy documents offline (no Console needed), and
learn or simulate policy against a Console's stored flows."""

from __future__ import annotations

import json
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from cnnf.commands import learning
from cnnf.errors import CnnfError, PolicyValidationError
from cnnf.model import ConnectionAttempt, Policy
from cnnf.policy.document import (
    dump_policy,
    load_policy,
    looks_like_original_format,
    parse_text,
    schema_text,
)
from cnnf.policy.lint import Severity, lint_policy
from cnnf.policy.prisma import from_prisma, to_prisma
from cnnf.policy.spec import parse_endpoint

app = typer.Typer(
    name="policy",
    help="Validate, lint, convert and explain policy documents (offline); learn a policy "
         "from a Console's flows and simulate drafts against them.",
    no_args_is_help=True,
)


class Target(StrEnum):
    NATIVE = "native"
    PRISMA = "prisma"


class DocFormat(StrEnum):
    JSON = "json"
    YAML = "yaml"


class LintFormat(StrEnum):
    TEXT = "text"
    JSON = "json"


def _fail(message: str, code: int = 1) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _report(exc: CnnfError) -> NoReturn:
    if isinstance(exc, PolicyValidationError):
        head = f"{exc.source}: " if exc.source else ""
        typer.echo(f"error: {head}invalid policy ({len(exc.errors)} error(s))", err=True)
        for err in exc.errors:
            typer.echo(f"  {err}", err=True)
        raise typer.Exit(1)
    _fail(str(exc))


def _warn(items: list[str]) -> None:
    for item in items:
        typer.echo(f"warning: not mapped: {item}", err=True)


warn_unmapped = _warn


def _read_text(file: str) -> tuple[bytes, str]:
    if file == "-":
        return sys.stdin.buffer.read(), "<stdin>"
    try:
        return Path(file).read_bytes(), file
    except OSError as exc:
        _fail(f"cannot read {file}: {exc.strerror or exc}", 2)


def read_policy(file: str) -> tuple[Policy, str, list[str]]:
    """Load a native or original-format document; returns the policy, the
    detected format and what could not be mapped. Bad input exits cleanly."""
    data, source = _read_text(file)
    try:
        tree = parse_text(data, source=source)
        if looks_like_original_format(tree):
            conv = from_prisma(tree, source=source)
            return conv.result, "prisma", conv.unmapped
        return load_policy(tree, source=source), "native", []
    except CnnfError as exc:
        _report(exc)


FileArg = Annotated[str, typer.Argument(
    metavar="FILE",
    help="Policy document (native JSON/YAML or the original product's export); "
         "- reads standard input.")]


@app.command()
def validate(file: FileArg) -> None:
    """Check a policy document; print a summary or every error (exit 1)."""
    policy, fmt, unmapped = read_policy(file)
    _warn(unmapped)
    origin = " (original format)" if fmt == "prisma" else ""
    typer.echo(
        f"ok{origin}: {len(policy.objects)} objects, {len(policy.container_rules)} container "
        f"rules, {len(policy.host_rules)} host rules"
    )


@app.command()
def lint(
    file: FileArg,
    output: Annotated[LintFormat, typer.Option("--format", help="text or json")] = (
        LintFormat.TEXT),
) -> None:
    """Report shadowed rules, subnet conflicts, unused objects and disabled
    rules; exit 1 if any finding is a warning or worse."""
    policy, _, unmapped = read_policy(file)
    _warn(unmapped)
    findings = lint_policy(policy)
    if output is LintFormat.JSON:
        typer.echo(json.dumps(
            [{"code": f.code, "severity": f.severity.value, "path": f.path,
              "message": f.message} for f in findings], indent=2))
    else:
        for finding in findings:
            typer.echo(str(finding))
        counts = {s: sum(1 for f in findings if f.severity is s) for s in Severity}
        if findings:
            typer.echo(f"{len(findings)} finding(s): {counts[Severity.ERROR]} error(s), "
                       f"{counts[Severity.WARNING]} warning(s), {counts[Severity.INFO]} info")
        else:
            typer.echo("no findings")
    if any(f.severity.rank >= Severity.WARNING.rank for f in findings):
        raise typer.Exit(1)


@app.command()
def convert(
    file: FileArg,
    to: Annotated[Target, typer.Option("--to", help="native or prisma (the original format)")],
    out: Annotated[Path | None, typer.Option("-o", "--output", help="Write here, not stdout.")
                   ] = None,
    fmt: Annotated[DocFormat, typer.Option("--format", help="json or yaml")] = DocFormat.JSON,
) -> None:
    """Convert between the native document and the original product's export
    format (input format detected); what cannot be mapped goes to stderr."""
    policy, _, unmapped = read_policy(file)
    if to is Target.NATIVE:
        text = dump_policy(policy, fmt.value)
    else:
        conv = to_prisma(policy)
        unmapped = unmapped + conv.unmapped
        text = _dump_plain(conv.result, fmt)
    _warn(unmapped)
    if out is None:
        typer.echo(text, nl=False)
    else:
        try:
            out.write_text(text, encoding="utf-8")
        except OSError as exc:
            _fail(f"cannot write {out}: {exc.strerror or exc}", 2)


def _dump_plain(doc: dict[str, Any], fmt: DocFormat) -> str:
    if fmt is DocFormat.JSON:
        return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"
    import yaml

    return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, default_flow_style=False)


@app.command()
def explain(
    file: FileArg,
    src: Annotated[str, typer.Option(
        "--src", help="Source: image=..,ns=..,host=.. | host=.. | an address | a DNS name")],
    dst: Annotated[str, typer.Option("--dst", help="Destination, same forms as --src")],
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="Destination TCP port")],
) -> None:
    """Show the verdict for one connection and every rule considered."""
    from cnnf.policy.engine import compile_policy

    policy, _, unmapped = read_policy(file)
    _warn(unmapped)
    try:
        attempt = ConnectionAttempt(src=parse_endpoint(src), dst=parse_endpoint(dst),
                                    port=port)
    except CnnfError as exc:
        _fail(str(exc), 2)
    try:
        compiled = compile_policy(policy)
    except CnnfError as exc:
        _report(exc)
    for line in compiled.explain(attempt).lines():
        typer.echo(line)


@app.command()
def schema() -> None:
    """Print the JSON Schema of the native policy document."""
    typer.echo(schema_text(), nl=False)


app.command("learn")(learning.learn)
app.command("simulate")(learning.simulate)
