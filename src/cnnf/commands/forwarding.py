"""``cnnf forwarding``: a Console's audit forwarding from the command line: the
fleet's sinks with their backlog, the audits a sink refused on their own
(parked), and requeueing them once the sink or the record's cause is fixed."""

from __future__ import annotations

from typing import Annotated, Any, NoReturn

import httpx
import typer

from cnnf.commands.consoleapi import CaOpt, ConsoleOpt, TokenOpt, console_request

app = typer.Typer(
    name="forwarding",
    help="A Console's audit forwarding: sinks, parked audits, requeueing them.",
    no_args_is_help=True,
)

SinkArg = Annotated[str, typer.Argument(help="the sink's name, as `cnnf forwarding sinks` "
                                             "prints it")]


def _fail(message: str, code: int = 1) -> NoReturn:
    typer.echo(f"cnnf forwarding: {message}", err=True)
    raise typer.Exit(code)


def _shown(text: str) -> str:
    """A Defender-supplied string as one printable line: control characters
    escaped (an audit's message must not move the cursor or forge lines)."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii")
                   for c in text)


def _answer(method: str, console: str, path: str, token: str, ca: str | None,
            **kwargs: Any) -> httpx.Response:
    return console_request(method, console, path, token, ca, fail=_fail, **kwargs)


def _call(method: str, console: str, path: str, token: str, ca: str | None,
          **kwargs: Any) -> Any:
    return _answer(method, console, path, token, ca, **kwargs).json()


@app.command()
def sinks(console: str = ConsoleOpt, token: str = TokenOpt, ca: str = CaOpt) -> None:
    """The fleet's sinks (and removed ones still holding audits): audits waiting
    and audits parked."""
    found = _call("GET", console, "/forwarding/sinks", token, ca)
    if not found:
        typer.echo("no forwarding sinks (start a Console with --syslog or --webhook)")
    for s in found:
        note = "" if s["configured"] else "  (no longer configured)"
        typer.echo(f"{s['name']}: {s['queued']} queued, {s['parked']} parked{note}")


@app.command()
def parked(
    sink: Annotated[str | None, typer.Option("--sink", help="only this sink's")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000)] = 100,
    console: str = ConsoleOpt, token: str = TokenOpt, ca: str = CaOpt,
) -> None:
    """Audits a sink refused on their own, oldest first (not sent again unless
    requeued)."""
    params: dict[str, Any] = {"limit": limit} | ({"sink": sink} if sink else {})
    answer = _answer("GET", console, "/forwarding/parked", token, ca, params=params)
    found = answer.json()
    if not found:
        typer.echo("no parked audits" + (f" for {sink}" if sink else ""))
    for p in found:
        a = p["audit"]
        typer.echo(f"audit {p['auditId']} parked {p['parked']} for {p['sink']}: "
                   f"{a['time']} {_shown(a['msg'])}")
    total = int(answer.headers.get("Total-Count", len(found)))
    if total > len(found):
        typer.echo(f"{len(found)} of {total} shown (--limit)")


@app.command()
def requeue(
    sink: SinkArg,
    ids: Annotated[list[int] | None, typer.Argument(
        min=1, help="audit ids to requeue (none: the sink's oldest 1000 parked)")] = None,
    console: str = ConsoleOpt, token: str = TokenOpt, ca: str = CaOpt,
) -> None:
    """Send parked audits of one sink again (the oldest 1000, or the ids given);
    one the sink still refuses is parked again, and the rest goes on."""
    body: dict[str, Any] = {"sink": sink} | ({"ids": ids} if ids else {})
    done = _call("POST", console, "/forwarding/parked/requeue", token, ca, json=body)
    left = f"; {done['left']} still parked" if done.get("left") else ""
    typer.echo(f"requeued {done['requeued']} parked audits of {done['sink']} "
               f"(sent at the forwarder's next round){left}")
