"""``cnnf rules``: a Console's rules from the command line: list them (staged
ones marked), promote a staged rule, promote the staged default effect."""

from __future__ import annotations

from typing import Annotated, Any, NoReturn

import typer

from cnnf.commands.consoleapi import CaOpt, ConsoleOpt, TokenOpt, console_request
from cnnf.model import RuleKind

app = typer.Typer(
    name="rules",
    help="A Console's rules: list them, promote staged ones.",
    no_args_is_help=True,
)

KindArg = Annotated[RuleKind, typer.Argument(help="container or host")]
RuleIdArg = Annotated[int, typer.Argument(min=1, help="the staged rule's id")]
RevisionOpt = typer.Option(
    None, "--revision", min=0,
    help="The policy revision you reviewed (the first line of `cnnf rules list`): "
         "refused if the policy changed since (left out: no check).")


def _fail(message: str, code: int = 1) -> NoReturn:
    typer.echo(f"cnnf rules: {message}", err=True)
    raise typer.Exit(code)


def _call(method: str, console: str, path: str, token: str, ca: str | None, *,
          params: dict[str, Any] | None = None) -> Any:
    return console_request(method, console, path, token, ca, fail=_fail,
                           params=params).json()


def _switch(settings: dict[str, Any], kind: RuleKind) -> bool:
    return bool(settings["containerEnabled" if kind is RuleKind.CONTAINER else "hostEnabled"])


def _not_enforced(settings: dict[str, Any], kind: RuleKind) -> str:
    """What keeps rules of ``kind`` from being enforced, or ""."""
    if _switch(settings, kind):
        return ""
    return f" (not enforced: enforcement of {kind.value} rules is off)"


def _settings_line(s: dict[str, Any]) -> str:
    staged = s.get("stagedDefaultEffect")
    default = f"default {s['defaultEffect']}" + (f" (staged: {staged})" if staged else "")
    on = {k: "on" if s[f"{k}Enabled"] else "off" for k in ("container", "host")}
    return f"{default}; enforcement: container {on['container']}, host {on['host']}"


@app.command("list")
def list_rules(
    kind: KindArg,
    console: str = ConsoleOpt, token: str = TokenOpt, ca: str = CaOpt,
) -> None:
    """The rules of one list in evaluation order; staged ones say so. The first
    line says the policy revision, the default effect (and any staged one) and
    which kinds are enforced."""
    revision = _call("GET", console, "/policy", token, ca)["revision"]
    typer.echo(f"policy revision {revision}; "
               + _settings_line(_call("GET", console, "/settings", token, ca)))
    for r in _call("GET", console, f"/rules/{kind.value}", token, ca):
        flags = [f for f, on in (("staged", r.get("staged")), ("disabled", r.get("disabled")))
                 if on]
        extra = f" [{', '.join(flags)}]" if flags else ""
        ports = ",".join(str(p) for p in r["ports"])
        typer.echo(f"{r['id']:>4}  {r['effect']:<8} {r['name']}: {r['src']} -> {r['dst']} "
                   f"ports {ports}{extra}")


@app.command()
def promote(  # noqa: PLR0917  (typer: arguments and options are parameters)
    kind: KindArg,
    rule_id: RuleIdArg,
    revision: int | None = RevisionOpt,
    console: str = ConsoleOpt, token: str = TokenOpt, ca: str = CaOpt,
) -> None:
    """Put a staged rule in force (one change, one revision); with --revision,
    only if the policy is still at the revision you reviewed."""
    params = {"expectedRevision": revision} if revision is not None else None
    r = _call("POST", console, f"/rules/{kind.value}/{rule_id}/promote", token, ca,
              params=params)
    settings = _call("GET", console, "/settings", token, ca)
    if r.get("disabled"):
        state = "is no longer staged, but it is disabled: not enforced until enabled"
    else:
        state = "is in force" + _not_enforced(settings, kind)
    typer.echo(f"promoted {kind.value} rule {r['id']} '{r['name']}': {r['effect']} "
               f"{r['src']} -> {r['dst']} {state}")


@app.command("promote-default")
def promote_default(
    revision: int | None = RevisionOpt,
    console: str = ConsoleOpt, token: str = TokenOpt, ca: str = CaOpt,
) -> None:
    """Make the staged default effect the default effect (one change, one
    revision), only if the policy is still at --revision when given."""
    params = {"expectedRevision": revision} if revision is not None else None
    s = _call("POST", console, "/settings/promote", token, ca, params=params)
    off = [k for k in RuleKind if not _switch(s, k)]
    note = "" if not off else (" (not enforced for " + " and ".join(
        f"{k.value} rules" for k in off) + ": enforcement is off)")
    typer.echo(f"default effect is now {s['defaultEffect']} (nothing staged){note}")
