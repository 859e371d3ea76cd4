"""``cnnf policy learn`` and ``cnnf policy simulate``: ask a Console to learn a
policy from its stored flows, or to simulate a draft against them."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal, NoReturn

import httpx
import typer

from cnnf.commands.consoleapi import console_client
from cnnf.model import Effect, Policy
from cnnf.policy.document import dump_policy

ConsoleOpt = Annotated[str, typer.Option(
    "--console", help="The Console's URL, e.g. https://console:8443", show_default=False)]
TokenOpt = Annotated[str | None, typer.Option(
    "--token", envvar="CNNF_TOKEN", help="An API or session token (env CNNF_TOKEN)",
    show_default=False)]
CaOpt = Annotated[Path | None, typer.Option(
    "--ca", help="CA certificate to trust for an HTTPS Console (its own CA)")]
SinceOpt = Annotated[str, typer.Option(
    "--since", help="Window start: a duration back from --until (30m, 24h, 7d) or an "
                    "ISO 8601 time")]
UntilOpt = Annotated[str | None, typer.Option(
    "--until", help="Window end: an ISO 8601 time (default: now)", show_default=False)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the Console's answer as JSON")]

_DURATION = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def _fail(message: str, code: int = 1) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _time(text: str, what: str) -> datetime:
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        _fail(f"{what}: {text!r} is not a duration (30m, 24h, 7d) or an ISO 8601 time", 2)
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)


def window(since: str, until: str | None, now: datetime) -> tuple[datetime, datetime]:
    """``--since``/``--until`` as two aware times (a duration counts back from until)."""
    end = _time(until, "--until") if until else now
    m = _DURATION.match(since.strip())
    start = (end - timedelta(**{_UNITS[m.group(2)]: int(m.group(1))}) if m
             else _time(since, "--since"))
    if start >= end:
        _fail(f"--since ({start.isoformat()}) is not before --until ({end.isoformat()})", 2)
    return start, end


def _client(console: str, token: str | None, ca: Path | None) -> httpx.Client:
    return console_client(console, token, ca, timeout=300, fail=_fail)


def _post(console: str, token: str | None, ca: Path | None, path: str,
          body: dict[str, Any]) -> dict[str, Any]:
    """POST to the Console; any refusal or transport error ends the command with
    the Console's own explanation."""
    with _client(console, token, ca) as http:
        try:
            r = http.post(f"/api/v1{path}", json=body)
        except httpx.HTTPError as exc:
            _fail(f"cannot reach the Console at {console}: {exc}")
    if r.status_code >= 400:
        try:
            data = r.json()
        except ValueError:
            _fail(f"the Console answered {r.status_code}: {r.text[:500]}")
        detail = data.get("detail", r.text[:500]) if isinstance(data, dict) else r.text[:500]
        typer.echo(f"error: the Console refused ({r.status_code}): {detail}", err=True)
        for err in (data.get("errors") or []) if isinstance(data, dict) else []:
            typer.echo(f"  {err.get('path')}: {err.get('message')}", err=True)
        raise typer.Exit(1)
    out: dict[str, Any] = r.json()
    return out


def _ports(ports: list[Any]) -> str:
    return ",".join(str(p) for p in ports)


def _seen(evidence: dict[str, Any]) -> str:
    n, c = evidence["flows"], evidence["connections"]
    last = (evidence.get("lastSeen") or "")[:19].replace("T", " ")
    return (f"{n} flow{'s' if n != 1 else ''}, {c:,} connection{'s' if c != 1 else ''}"
            + (f", last seen {last}" if last else ""))


def print_proposal(p: dict[str, Any]) -> None:
    rules = p["proposed"]
    widened = sum(1 for r in rules if r["replaces"] is not None)
    new_objects = [o for o in p["objects"] if o["new"]]
    typer.echo(
        f"proposal {p['id']}: {len(rules)} rule{'s' if len(rules) != 1 else ''} "
        f"({len(rules) - widened} new, {widened} widened), {len(new_objects)} new "
        f"object{'s' if len(new_objects) != 1 else ''}, learnt from {p['learntFlows']} "
        f"flow{'s' if p['learntFlows'] != 1 else ''} seen {p['since'][:19]} .. "
        f"{p['until'][:19]}; default effect {p['policy']['defaultEffect']}")
    for r in rules:
        rule, mark = r["rule"], ("~" if r["replaces"] is not None else "+")
        typer.echo(f"  {mark} {r['kind']} rule {rule['id']} {rule['src']} -> {rule['dst']} "
                   f"port {_ports(rule['ports'])}  ({_seen(r['evidence'])})")
        if r["replaces"] is not None:
            typer.echo(f"      widens existing rule {r['replaces']}")
    for o in new_objects:
        typer.echo(f"  + {o['kind']} object {o['name']}: {o['basis']}")
    for c in p["covered"]:
        typer.echo(f"  = {c['kind']} rule {c['ruleId']} {c['ruleName']!r} ({c['effect']}) "
                   f"already decides {_seen(c['evidence'])}")
    for reason, n in p["skipped"].items():
        typer.echo(f"  ! not learnt: {n} flow{'s' if n != 1 else ''}: {reason}")


def learn(
    *,
    console: ConsoleOpt,
    since: SinceOpt = "24h",
    until: UntilOpt = None,
    namespace: Annotated[str | None, typer.Option(
        "--namespace", help="Only flows with an end in this namespace")] = None,
    host: Annotated[str | None, typer.Option(
        "--host", help="Only flows with an end on this host")] = None,
    image: Annotated[list[str] | None, typer.Option(
        "--image", help="Only flows with an end of an image matching this glob (repeat)")
    ] = None,
    label_key: Annotated[str, typer.Option(
        "--label-key", help="The stable label naming workloads ('' : always by image)")
    ] = "app",
    default_effect: Annotated[Effect | None, typer.Option(
        "--default-effect", help="The proposal's default effect (prevent: zero trust)")
    ] = None,
    output: Annotated[Path | None, typer.Option(
        "-o", "--output", help="Write the proposed policy document here (.yaml or .json)")
    ] = None,
    as_json: JsonOpt = False,
    token: TokenOpt = None,
    ca: CaOpt = None,
) -> None:
    """Learn a policy from the flows the Console stored in a window: print the
    proposed rules with their evidence (the proposal is stored on the Console,
    to review and apply there) and, with -o, write the resulting document."""
    start, end = window(since, until, datetime.now(UTC))
    body: dict[str, Any] = {"since": start.isoformat(), "until": end.isoformat(),
                            "labelKey": label_key}
    if namespace:
        body["namespace"] = namespace
    if host:
        body["host"] = host
    if image:
        body["images"] = image
    if default_effect is not None:
        body["defaultEffect"] = default_effect.value
    p = _post(console, token, ca, "/policy/proposals", body)
    if as_json:
        typer.echo(json.dumps(p, indent=2))
    else:
        print_proposal(p)
    if output is not None:
        policy = Policy.model_validate(p["policy"])
        fmt: Literal["json", "yaml"] = "yaml" if output.suffix in (".yaml", ".yml") else "json"
        try:
            output.write_text(dump_policy(policy, fmt), encoding="utf-8")
        except OSError as exc:
            _fail(f"cannot write {output}: {exc.strerror or exc}", 2)
        if not as_json:
            typer.echo(f"wrote the proposed policy to {output}")


def print_impact(out: dict[str, Any]) -> None:
    typer.echo(f"{out['flows']:,} flows ({out['connections']:,} connections) seen "
               f"{out['since'][:19]} .. {out['until'][:19]}; "
               f"{out['changedFlows']:,} would change ({out['changedConnections']:,} "
               f"connections)")
    for move, n in sorted(out["transitions"].items(), key=lambda kv: -kv[1]):
        typer.echo(f"  {move}: {n:,} flow{'s' if n != 1 else ''}")
    if out["edges"]:
        typer.echo("by edge:")
    for e in out["edges"][:50]:
        rule = e["after"]["ruleName"] or "default"
        typer.echo(f"  {e['src']} -> {e['dst']}:{e['port']}  {e['before']['label']} -> "
                   f"{e['after']['label']} (by {rule})  {e['connections']:,} connections")
    if out["edgesTotal"] > 50:
        typer.echo(f"  ... and {out['edgesTotal'] - 50:,} more edges (--json lists "
                   f"{len(out['edges'])})")
    if out["rules"]:
        typer.echo("by deciding rule:")
    for r in out["rules"]:
        name = (f"{r['kind']} rule {r['ruleId']} {r['ruleName']!r}" if r["ruleId"] is not None
                else f"default effect ({r['kind']})")
        typer.echo(f"  {name} -> {r['effect']}: {r['flows']:,} "
                   f"flow{'s' if r['flows'] != 1 else ''}, {r['connections']:,} connections")
    staged = out.get("staged") or {}
    if staged.get("changedFlows"):
        # Not in force: what the draft's staged rules and staged default would change.
        typer.echo(f"staged (reported, not enforced): {staged['changedFlows']:,} would change "
                   f"if promoted ({staged['changedConnections']:,} connections)")
        for move, n in sorted(staged["transitions"].items(), key=lambda kv: -kv[1]):
            typer.echo(f"  {move}: {n:,} flow{'s' if n != 1 else ''}")


def simulate(
    *,
    file: Annotated[str, typer.Argument(
        metavar="FILE", help="The draft policy document (native JSON/YAML or the original "
                             "product's export); - reads standard input.")],
    console: ConsoleOpt,
    since: SinceOpt = "24h",
    until: UntilOpt = None,
    fail_on_change: Annotated[bool, typer.Option(
        "--fail-on-change", help="Exit 3 when any verdict would change")] = False,
    as_json: JsonOpt = False,
    token: TokenOpt = None,
    ca: CaOpt = None,
) -> None:
    """Evaluate a draft policy against the flows the Console stored in a window
    and print the flows whose verdict would change, by edge and by rule."""
    from cnnf.commands.policy import read_policy, warn_unmapped

    policy, _, unmapped = read_policy(file)
    warn_unmapped(unmapped)
    start, end = window(since, until, datetime.now(UTC))
    body = {"since": start.isoformat(), "until": end.isoformat(),
            "policy": policy.model_dump(mode="json", by_alias=True)}
    out = _post(console, token, ca, "/policy/simulate", body)
    if as_json:
        typer.echo(json.dumps(out, indent=2))
    else:
        print_impact(out)
    if fail_on_change and out["changedFlows"]:
        raise typer.Exit(3)
