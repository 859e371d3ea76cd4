"""``cnnf console``: serve the Console, and manage its users."""

from __future__ import annotations

import gc
import logging
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from sqlalchemy.exc import SQLAlchemyError

from cnnf.console.config import ConsoleConfig, database_url, default_data_dir
from cnnf.console.security import Role
from cnnf.errors import CnnfError

app = typer.Typer(
    name="console",
    help="Serve the Console (API and store), or manage its users.",
    add_completion=False,
)

DB_HELP = "SQLite file path or postgresql:// URL (default: console.db in the data directory)"
DATA_HELP = "Data directory (default: $CNNF_DATA_DIR or ./var/console)"


def _configure_logging(level: str) -> None:
    """The Console's own lines (``cnnf.*``: the sinks in force, rotations,
    removals, forwarding errors) on stderr with UTC time and level, at the
    --log-level uvicorn is given. Without this, Python drops their INFO lines and
    prints the warnings bare. Added once (a second call changes only the level)."""
    logger = logging.getLogger("cnnf")
    logger.setLevel(getattr(logging, level.upper(), logging.INFO))
    if any(getattr(h, "cnnf_console", False) for h in logger.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    formatter = logging.Formatter("%(asctime)s.%(msecs)03dZ %(levelname)s %(name)s: "
                                  "%(message)s", datefmt="%Y-%m-%dT%H:%M:%S")
    formatter.converter = time.gmtime
    handler.setFormatter(formatter)
    handler.cnnf_console = True  # type: ignore[attr-defined]
    logger.addHandler(handler)


def _fail(message: str) -> typer.Exit:
    typer.echo(f"cnnf console: {message}", err=True)
    return typer.Exit(1)


def _store_problem(url: str, exc: BaseException) -> str:
    """One line naming the store (password hidden) and what went wrong."""
    from sqlalchemy.engine import make_url

    shown = make_url(url).render_as_string(hide_password=True) if url else "the store"
    reason = getattr(exc, "orig", None) or exc
    first = str(reason).strip().splitlines()[0] if str(reason).strip() else type(reason).__name__
    return f"cannot open {shown}: {first}"


@app.callback(invoke_without_command=True)
def serve(
    ctx: typer.Context,
    *,
    listen: Annotated[str, typer.Option("--listen", help="HOST:PORT to serve on")] = (
        "127.0.0.1:8080"
    ),
    db: Annotated[str | None, typer.Option("--db", help=DB_HELP)] = None,
    data_dir: Annotated[Path | None, typer.Option("--data-dir", help=DATA_HELP)] = None,
    log_level: Annotated[str, typer.Option("--log-level", help="uvicorn log level")] = "info",
    retention_days: Annotated[int, typer.Option(
        "--retention-days", help="Prune audits and flows older than this (0: keep all)")] = 30,
    tls: Annotated[bool, typer.Option(
        "--tls", help="Serve HTTPS with a certificate from the Console's own CA "
                      "(created in DATA_DIR/tls; Defenders trust DATA_DIR/tls/ca.crt)")] = False,
    tls_san: Annotated[list[str] | None, typer.Option(
        "--tls-san", help="Extra host name or address for the certificate (repeatable)")] = None,
    tls_cert: Annotated[Path | None, typer.Option(
        "--tls-cert", help="Serve HTTPS with this certificate (PEM) instead")] = None,
    tls_key: Annotated[Path | None, typer.Option(
        "--tls-key", help="The private key (PEM) of --tls-cert")] = None,
    syslog: Annotated[list[str] | None, typer.Option(
        "--syslog", help="Forward audits to syslog (RFC 5424): udp://HOST:PORT or "
                         "tcp://HOST:PORT (repeatable)")] = None,
    webhook: Annotated[list[str] | None, typer.Option(
        "--webhook", help="POST audits as JSON to this URL, with retries (repeatable)")] = None,
    replace_sinks: Annotated[bool, typer.Option(
        "--replace-sinks", help="Make --syslog and --webhook the fleet's whole list of "
                                "sinks (without them: stop forwarding for the fleet). "
                                "Without this flag they are added to the stored list, "
                                "and a Console started without them keeps it")] = False,
    no_link_fast_path: Annotated[bool, typer.Option(
        "--no-link-fast-path", help="Answer every Defender request through the API's "
                                    "router, not the Defender link's fast path (slower: "
                                    "for comparison and diagnosis)")] = False,
) -> None:
    """Serve the Console API on --listen (migrating the store first)."""
    ctx.obj = {"db": db, "data_dir": data_dir}
    if ctx.invoked_subcommand is not None:
        return
    import uvicorn

    from cnnf.console.app import create_app
    from cnnf.console.tls import ensure_self_signed, server_names

    _configure_logging(log_level)
    try:
        config = ConsoleConfig.from_options(listen=listen, db=db, data_dir=data_dir,
                                            retention_days=retention_days,
                                            syslog=tuple(syslog or ()),
                                            webhooks=tuple(webhook or ()),
                                            replace_sinks=replace_sinks,
                                            link_fast_path=not no_link_fast_path)
        if (tls_cert is None) != (tls_key is None):
            raise CnnfError("--tls-cert and --tls-key go together")
        if tls and tls_cert is None:
            files = ensure_self_signed(config.data_dir / "tls",
                                       server_names(config.host, tls_san or ()))
            tls_cert, tls_key = files.cert, files.key
            typer.echo(f"cnnf console: HTTPS; Defenders trust {files.ca_cert.resolve()}",
                       err=True)
        application = create_app(config)
    except CnnfError as exc:
        raise _fail(str(exc)) from None
    except (SQLAlchemyError, OSError) as exc:
        raise _fail(_store_problem(config.db_url, exc)) from None
    # What start-up built lives as long as the process (modules, the app, the
    # store's metadata, the policy engine): out of the cyclic collector's scans,
    # which otherwise walk it all on every full collection under request load.
    gc.collect()
    gc.freeze()
    uvicorn.run(
        application, host=config.host, port=config.port, log_level=log_level,
        ssl_certfile=str(tls_cert) if tls_cert else None,
        ssl_keyfile=str(tls_key) if tls_key else None,
        # Defenders' long-polls hold requests open; do not wait them out at shutdown.
        timeout_graceful_shutdown=2,
    )


@app.command("create-user")
def create_user(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="User name")],
    *,
    role: Annotated[Role, typer.Option("--role", help="admin, operator or auditor")] = (
        Role.ADMIN
    ),
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from standard input")
    ] = False,
    db: Annotated[str | None, typer.Option("--db", help=DB_HELP)] = None,
    data_dir: Annotated[Path | None, typer.Option("--data-dir", help=DATA_HELP)] = None,
) -> None:
    """Create a user (the first admin, typically), migrating the store if needed."""
    from sqlalchemy.orm import Session

    from cnnf.console.services.users import UserService
    from cnnf.console.store.db import connect, migrate

    parent = ctx.obj or {}
    db = db if db is not None else parent.get("db")
    directory = data_dir or parent.get("data_dir") or default_data_dir()
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    url = ""
    try:
        url = database_url(db, directory)
        engine = connect(url)
        migrate(engine)
        with Session(engine) as session:
            user = UserService(session).create_user(name, role, password)
    except CnnfError as exc:
        raise _fail(str(exc)) from None
    except (SQLAlchemyError, OSError) as exc:
        raise _fail(_store_problem(url, exc)) from None
    finally:
        if "engine" in locals():
            engine.dispose()
    typer.echo(f"created user {user.name!r} with role {user.role.value}")


@app.command("enrollment-token")
def enrollment_token(
    ctx: typer.Context,
    *,
    hours: Annotated[int, typer.Option(
        "--hours", min=1, max=24 * 365, help="Hours until the token expires")] = 24,
    db: Annotated[str | None, typer.Option("--db", help=DB_HELP)] = None,
    data_dir: Annotated[Path | None, typer.Option("--data-dir", help=DATA_HELP)] = None,
) -> None:
    """Print a new enrollment token for Defenders (cnnf defender run --token ...)."""
    from sqlalchemy.orm import Session

    from cnnf.console.services.defenders import DefenderService
    from cnnf.console.store.db import connect, migrate

    parent = ctx.obj or {}
    db = db if db is not None else parent.get("db")
    directory = data_dir or parent.get("data_dir") or default_data_dir()
    url = ""
    try:
        url = database_url(db, directory)
        engine = connect(url)
        migrate(engine)
        with Session(engine) as session:
            token = DefenderService(session).create_enrollment_token("cli", hours)
    except CnnfError as exc:
        raise _fail(str(exc)) from None
    except (SQLAlchemyError, OSError) as exc:
        raise _fail(_store_problem(url, exc)) from None
    finally:
        if "engine" in locals():
            engine.dispose()
    typer.echo(token.token)
    typer.echo(f"expires {token.expires.isoformat()}", err=True)
