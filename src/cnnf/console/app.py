"""The Console's FastAPI application factory."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, cast

from fastapi import Depends, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy import Engine, event, text
from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cnnf import __version__
from cnnf.console.api import (
    auth,
    defender,
    defenders,
    forwarding,
    learning,
    objects,
    overlays,
    policy,
    prisma,
    radar,
    records,
    rules,
    users,
)
from cnnf.console.api.contract import (
    authenticate_first,
    document_errors,
    errors,
    refuse_unknown_query,
)
from cnnf.console.api.defender import (
    SEEN_FLUSH_SECONDS,
    LinkHub,
    check_stale,
    flush_seen,
)
from cnnf.console.api.deps import ConsoleState, Reader
from cnnf.console.api.fastpath import DefenderFastPath, replayed
from cnnf.console.config import ConsoleConfig
from cnnf.console.metrics import ConsoleMetrics, LiveFigures
from cnnf.console.security import LoginLimiter
from cnnf.console.services import classes
from cnnf.console.services.defenders import DefenderService, policy_revision
from cnnf.console.services.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    InvalidInput,
    NotFound,
    Unauthorized,
)
from cnnf.console.services.forwarding import (
    Backlog,
    Forwarder,
    backlog,
    configure_sinks,
    stats_as_rows,
    stored_sinks,
)
from cnnf.console.services.leases import SINGLETON, Lease
from cnnf.console.services.policy import utcnow
from cnnf.console.services.records import Pruned, prune
from cnnf.console.store.db import connect, current_revision, migrate, revision_heads
from cnnf.console.store.feed import ChangeFeed, libpq_url
from cnnf.console.store.models import ChangeRow
from cnnf.console.ui import STATIC, add_docs, mount_ui
from cnnf.errors import FieldError, PolicyValidationError
from cnnf.model import ObjectKind
from cnnf.policy.document import translate_errors

API_PREFIX = "/api/v1"
STALE_CHECK_SECONDS = 15.0
# /metrics reads the store (the outbox backlog, Defenders by status) at most this often.
METRICS_STORE_SECONDS = 5.0
log = logging.getLogger("cnnf.console")


class BodyLimit:
    """Refuse request bodies over ``limit`` bytes with 413, declared or streamed."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._refuse(scope, receive, send)
            return
        # Read the (undeclared or small) body up to the limit, then replay it.
        messages: list[Message] = []
        size = 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > self.limit:
                await self._refuse(scope, receive, send)
                return
            if not message.get("more_body", False):
                break

        await self.app(scope, replayed(messages, receive), send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = JSONResponse(
            {"detail": f"request body is larger than {self.limit} bytes",
             "errors": [{"path": "body", "message": f"larger than {self.limit} bytes"}]},
            status_code=413,
        )
        await response(scope, receive, send)


def _error(status: int, detail: str, errors: list[FieldError] | None = None,
           headers: dict[str, str] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"detail": detail or "; ".join(str(e) for e in errors or ())}
    if errors is not None:
        body["errors"] = [{"path": e.path, "message": e.message} for e in errors]
    return JSONResponse(body, status_code=status, headers=headers)


# pydantic puts the tag of a discriminated union (an object's kind) into ``loc``.
_UNION_TAGS = frozenset(ObjectKind)


def _loc_path(loc: tuple[Any, ...]) -> str:
    parts = list(loc)
    if parts and parts[0] in ("body", "query", "path", "header"):
        parts = parts[1:]
    path = ""
    previous: Any = None
    for part in parts:
        at_union = previous is None or isinstance(previous, int)
        previous = part
        if at_union and part in _UNION_TAGS:
            continue
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path or "body"


@dataclass
class _BodyErrors:
    """The body's share of a request's validation errors, shaped like pydantic's
    ``ValidationError`` for the policy module's translator."""

    items: list[dict[str, Any]]

    def errors(self) -> list[dict[str, Any]]:
        return self.items


def _request_errors(exc: RequestValidationError) -> list[FieldError]:
    """Field errors worded as the policy documents word them (``ports[0]: 70000 is
    above 65535``): body paths through :func:`translate_errors`, the rest by name."""
    body: list[dict[str, Any]] = []
    errors: list[FieldError] = []
    for err in exc.errors():
        loc = tuple(err.get("loc", ()))
        if loc[:1] == ("body",):
            if err.get("type") == "union_tag_invalid":
                loc = (*loc, "kind")  # name the discriminator itself
            body.append({**err, "loc": loc[1:]})
            continue
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        if "input" in err and err.get("type") != "missing":
            msg = f"{msg} (got {err['input']!r:.100})"
        errors.append(FieldError(_loc_path(loc), msg))
    if body:
        translated = translate_errors(cast(Any, _BodyErrors(body)), exc.body)
        errors = [FieldError(e.path or "body", e.message) for e in translated] + errors
    return errors


async def _refused_caller(request: Request) -> JSONResponse | None:
    """The 401 or 403 the route's guards give this request, if any: input is judged
    only for callers allowed to send it (see cnnf.console.api.contract)."""
    try:
        await authenticate_first(request)
    except Unauthorized as exc:
        return _error(401, str(exc), headers={"WWW-Authenticate": "Bearer"})
    except Forbidden as exc:
        return _error(403, str(exc))
    return None


def _install_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return await _refused_caller(request) or _error(422, "", _request_errors(exc))

    @app.exception_handler(BadRequest)
    async def _bad_request(request: Request, exc: BadRequest) -> JSONResponse:
        return await _refused_caller(request) or _error(400, str(exc), exc.errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # FastAPI's own refusals (a body that is not UTF-8: 400) and ours (429).
        refused = await _refused_caller(request) if exc.status_code == 400 else None
        return refused or _error(exc.status_code, str(exc.detail), headers=dict(exc.headers or {}))

    @app.exception_handler(PolicyValidationError)
    async def _policy(_: Request, exc: PolicyValidationError) -> JSONResponse:
        return _error(422, "; ".join(str(e) for e in exc.errors), exc.errors)

    @app.exception_handler(InvalidInput)
    async def _invalid(_: Request, exc: InvalidInput) -> JSONResponse:
        return _error(422, str(exc), exc.errors)

    @app.exception_handler(NotFound)
    async def _not_found(_: Request, exc: NotFound) -> JSONResponse:
        return _error(404, str(exc))

    @app.exception_handler(Conflict)
    async def _conflict(_: Request, exc: Conflict) -> JSONResponse:
        return _error(409, str(exc), exc.errors or None)

    @app.exception_handler(Unauthorized)
    async def _unauthorized(_: Request, exc: Unauthorized) -> JSONResponse:
        return _error(401, str(exc), headers={"WWW-Authenticate": "Bearer"})

    @app.exception_handler(IntegrityError)
    async def _integrity(_: Request, exc: IntegrityError) -> JSONResponse:
        # E.g. two clients creating the same name at once; the transaction was rolled back.
        log.warning("store constraint violated: %s", exc.orig)
        return _error(409, "the change conflicts with the stored state; nothing was changed")

    @app.exception_handler(SQLAlchemyError)
    async def _store(_: Request, exc: SQLAlchemyError) -> JSONResponse:
        log.error("store error: %s", exc)
        return _error(500, "store error; nothing was changed")

    @app.exception_handler(Forbidden)
    async def _forbidden(_: Request, exc: Forbidden) -> JSONResponse:
        return _error(403, str(exc))

    @app.exception_handler(Exception)
    async def _defect(_: Request, exc: Exception) -> JSONResponse:
        # The documented error body for a defect too (the server still logs it).
        return _error(500, "unexpected failure; nothing was changed")


def prune_expired(console: ConsoleState, metrics: ConsoleMetrics | None = None) -> Pruned | None:
    """Apply the retention setting once; None when retention is off."""
    days = console.config.retention_days
    if days <= 0:
        return None
    with console.sessions() as session:
        pruned = prune(session, console.now() - timedelta(days=days))
    for sink, count in pruned.undelivered.items():
        log.error("retention: pruned %d audits older than %d days that %s had not taken "
                  "(the sink was down or too slow for the whole retention period)",
                  count, days, sink)
        if metrics is not None:
            metrics.pruned_undelivered.labels(sink).inc(count)
    with console.sessions() as session:
        DefenderService(session, console.now).prune_batches(
            console.now() - timedelta(days=days))
    if pruned.audits or pruned.flows:
        log.info("retention: pruned %d audits and %d flows older than %d days",
                 pruned.audits, pruned.flows, days)
    return pruned


async def _retention_loop(console: ConsoleState, link: LinkHub) -> None:
    """Prune once per interval, in the one process holding the singleton lease
    (kept renewed here, and by the forwarder's thread)."""
    clock = link.lease.monotonic
    due = clock()
    while True:
        held = await run_in_threadpool(link.lease.ensure)
        if held and clock() >= due:
            try:
                await run_in_threadpool(prune_expired, console, link.metrics)
            except SQLAlchemyError:
                log.exception("retention: pruning failed; trying again next round")
            due = clock() + console.config.retention_interval_seconds
        await asyncio.sleep(link.lease.ttl / 4)


#: Seconds between two batches of the identity-class backfill: the store serves
#: ingestion and requests between them (each batch a few milliseconds to a
#: tenth of a second of writes).
CLASS_BACKFILL_PAUSE = 0.05
#: Seconds before a batch of the backfill that failed is tried again, and one
#: that was not written (rows in use, the store away: OperationalError).
CLASS_BACKFILL_RETRY = 10.0
CLASS_BACKFILL_BUSY = 1.0
#: Seconds between two looks for flows stored without classes since the last
#: walk (by a replica still running the version before 0013, during a rolling
#: upgrade): only the flows stored since are read.
CLASS_BACKFILL_RECHECK = 600.0
#: Seconds between two progress lines of the backfill in the log.
CLASS_BACKFILL_LOG_SECONDS = 10.0


class ClassBackfiller:
    """Gives the flows stored without identity classes (before migration 0013,
    or since by a replica of the previous version) their classes, one committed
    batch per :meth:`step` (:mod:`cnnf.console.services.classes`), logging
    progress once it gives any and setting the metrics
    (``cnnf_console_flow_classes_backfill_progress``)."""

    def __init__(self, sessions: sessionmaker[Session], metrics: ConsoleMetrics | None,
                 batch: int = classes.BATCH) -> None:
        self.sessions, self.metrics, self.batch = sessions, metrics, batch
        self.walk: classes.ClassBackfill | None = None
        self.logged = 0.0
        self.started = 0.0
        self.announced = False

    def _progress(self, value: float | None) -> None:
        if self.metrics is not None:
            self.metrics.class_backfill_progress = value

    def start(self) -> bool:
        """True when there are flows to walk (those stored since the last walk)."""
        with self.sessions() as session:
            self.walk = classes.start(session)
        self.started = self.logged = time.monotonic()
        self.announced = False
        self._progress(1.0 if self.walk is None else 0.0)
        return self.walk is not None

    def step(self) -> bool:
        """One batch; True when the walk is done."""
        walk = self.walk
        if walk is None:
            return True
        with self.sessions() as session:
            given = classes.step(session, walk, self.batch)
            if walk.done and walk.given and session.get_bind().dialect.name == "postgresql":
                # The planner's statistics for the classes now, not at
                # autovacuum's next pass: it estimates learning's groups from them.
                session.execute(text("ANALYZE flows"))
                session.commit()
        if self.metrics is not None:
            self.metrics.class_backfilled.inc(given)
        self._progress(walk.progress)
        if given and not self.announced:
            self.announced = True
            log.info("flow classes: giving identity classes to the flows stored without "
                     "them (before migration 0013, or by a replica of the previous version), "
                     "ids %d to %d, %d ids per batch, in the background; until then learning "
                     "and simulating group those flows by their identity texts: the same "
                     "results, slower", walk.first, walk.top, self.batch)
        if walk.done:
            if self.announced:
                log.info("flow classes: done, %d rows given classes in %.0f s", walk.given,
                         time.monotonic() - self.started)
        elif self.announced and time.monotonic() - self.logged >= CLASS_BACKFILL_LOG_SECONDS:
            self.logged = time.monotonic()
            elapsed = time.monotonic() - self.started
            left = elapsed * (1 - walk.progress) / walk.progress if walk.progress else 0.0
            log.info("flow classes: %.0f%% (ids up to %d of %d), %d rows given classes, "
                     "about %.0f s left", 100 * walk.progress, walk.next_id - 1, walk.top,
                     walk.given, left)
        return walk.done

    @property
    def walking(self) -> bool:
        """A walk is under way (its next batch is where it failed, if it did)."""
        return self.walk is not None and not self.walk.done

    def stop(self) -> None:
        """This process no longer walks (the lease went to another replica): its
        progress is not exported any more (the walking replica's is)."""
        self.walk = None
        self._progress(None)


async def _class_loop(console: ConsoleState, link: LinkHub) -> None:
    """The identity-class backfill, in the process holding the singleton lease:
    a walk at start, then a look every :data:`CLASS_BACKFILL_RECHECK` seconds;
    a failed batch is tried again after :data:`CLASS_BACKFILL_RETRY` seconds,
    from where the walk stands in the store."""
    backfill = ClassBackfiller(console.sessions, link.metrics)
    walking = False
    busy_logged = float("-inf")
    while True:
        try:
            if not await run_in_threadpool(link.lease.ensure):
                if walking:
                    backfill.stop()
                walking = False
                await asyncio.sleep(link.lease.ttl / 4)
                continue
            if not walking:
                walking = await run_in_threadpool(backfill.start)
            if walking and not await run_in_threadpool(backfill.step):
                await asyncio.sleep(CLASS_BACKFILL_PAUSE)
                continue
            walking = False
            await asyncio.sleep(CLASS_BACKFILL_RECHECK)
        except OperationalError as exc:  # rows in use past LOCK_WAIT, the store away
            now = time.monotonic()
            if now - busy_logged >= 60:  # at most a line a minute
                busy_logged = now
                log.warning("flow classes: a batch was not written (rows in use by ingestion "
                            "or a policy change, or the store away: %s); trying again in "
                            "%.0f s", str(exc).splitlines()[0][:200], CLASS_BACKFILL_BUSY)
            walking = backfill.walking  # the same batch again (its start, if it failed)
            await asyncio.sleep(CLASS_BACKFILL_BUSY)
        except Exception:  # a defect, or an error the driver did not wrap: the walk goes on
            log.exception("flow classes: a batch failed (ids from %s); trying again in %.0f s",
                          backfill.walk.next_id if backfill.walk else "the start",
                          CLASS_BACKFILL_RETRY)
            walking = backfill.walking
            await asyncio.sleep(CLASS_BACKFILL_RETRY)


async def _seen_loop(console: ConsoleState, link: LinkHub) -> None:
    """Write the last_seen of Defenders whose long-polls returned (batched)."""
    while True:
        await asyncio.sleep(SEEN_FLUSH_SECONDS)
        try:
            await run_in_threadpool(flush_seen, console, link)
        except SQLAlchemyError:
            log.exception("Defenders' last seen: write failed; trying again next round")


async def _stale_loop(console: ConsoleState, link: LinkHub) -> None:
    while True:
        try:
            await run_in_threadpool(check_stale, console, link)
        except SQLAlchemyError:
            log.exception("stale Defenders: check failed; trying again next round")
        await asyncio.sleep(STALE_CHECK_SECONDS)


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    link: LinkHub = app.state.link
    url = libpq_url(app.state.engine)
    if url is not None:  # replicas on PostgreSQL: change notices between them
        link.feed = ChangeFeed(url, link.heard)
        link.store_poll = app.state.console.config.link_feed_poll_seconds
    tasks = [asyncio.create_task(_retention_loop(app.state.console, link)),
             asyncio.create_task(_stale_loop(app.state.console, app.state.link)),
             asyncio.create_task(_seen_loop(app.state.console, link)),
             asyncio.create_task(_class_loop(app.state.console, link))]
    if link.forwarder is not None:
        link.forwarder.start()
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task
        if link.forwarder is not None:
            await run_in_threadpool(link.forwarder.close, 2.0)
        if link.feed is not None:
            await run_in_threadpool(link.feed.close)
            link.feed = None
        with suppress(SQLAlchemyError):
            await run_in_threadpool(link.lease.release)  # a survivor takes over at once


def _fleet_backlog(session: Session) -> list[Backlog]:
    """Every sink's backlog, the fleet's sinks with none included (0): each replica
    reports them all, whichever forwards."""
    found = backlog(session)
    have = {b.sink for b in found}
    return found + [Backlog(name, 0, None, None) for name in stored_sinks(session)
                    if name not in have]


def _install_link(app: FastAPI, console: ConsoleState,
                  monotonic: Callable[[], float]) -> None:
    """The Defender link: notifiers woken after policy commits, forwarding, metrics,
    and the cluster inventory for Radar."""

    config = console.config
    # The forwarding sinks are one configuration for the fleet, in the store. This
    # Console's options add to it (or, with replace_sinks, replace it): a replica
    # started without them, or with some forgotten, removes nothing. Every replica
    # queues each audit for each stored sink, and the lease holder delivers to each.
    for attempt in (1, 2, 3):  # replicas starting together write the same rows at once
        try:
            with console.sessions() as session:
                sinks = configure_sinks(session, [*config.syslog, *config.webhooks],
                                        console.now(), replace=config.replace_sinks)
                in_force = sorted(stored_sinks(session))
            break
        except IntegrityError:
            if attempt == 3:
                raise
    for name, (queued, parked) in sinks.removed.items():
        log.warning("forwarding: %s is no longer configured (--replace-sinks); its %d "
                    "queued and %d parked audits are kept (queued ones are sent if it is "
                    "configured again, else pruned by retention)", name, queued, parked)
    for name in sinks.added:
        log.info("forwarding: audits now go to %s too (every replica)", name)
    for name in sinks.rotated:
        log.warning("forwarding: %s has a new URL (its credentials: user, password or "
                    "query); its backlog is kept and goes to the new URL", name)
    if in_force:
        log.info("forwarding: audits go to %d sinks (the fleet's list, in the store): %s",
                 len(in_force), ", ".join(in_force))
    else:
        log.info("forwarding: no sinks configured (--syslog, --webhook add one for the "
                 "fleet)")
    lease = Lease(console.sessions, SINGLETON, ttl=config.lease_seconds, clock=console.now,
                  monotonic=monotonic)
    link = LinkHub(metrics=ConsoleMetrics(clock=monotonic), lease=lease,
                   forwarder=Forwarder([], console.sessions, lease, from_store=True),
                   store_poll=config.link_store_poll_seconds)
    link.attach(console)
    app.state.link = link

    # Every policy change writes a change row; wake the Defenders' long-polls once
    # its transaction committed.
    @event.listens_for(console.sessions, "after_flush")
    def _flushed(session: Session, _context: Any) -> None:
        if any(isinstance(obj, ChangeRow) for obj in session.new):
            session.info["cnnf_policy_changed"] = True

    @event.listens_for(console.sessions, "after_commit")
    def _committed(session: Session) -> None:
        if session.info.pop("cnnf_policy_changed", False):
            link.changed("policy")

    @event.listens_for(console.sessions, "after_rollback")
    def _rolled_back(session: Session) -> None:
        session.info.pop("cnnf_policy_changed", None)

    def inventory(session: Session) -> Any:
        return DefenderService(session, console.now).cluster_inventory()

    app.state.radar_inventory = inventory

    stored: list[tuple[float, LiveFigures]] = []  # (read at, figures): the last store read
    stored_lock = threading.Lock()

    def figures() -> LiveFigures:
        # The store's share (Defenders by status, revisions, the outbox backlog: a
        # grouped scan of the outbox) is read at most once per METRICS_STORE_SECONDS
        # however often, and by however many, /metrics is scraped; the process's
        # own counters are always current.
        with stored_lock:
            if not stored or monotonic() - stored[0][0] >= METRICS_STORE_SECONDS:
                with console.sessions() as session:
                    service = DefenderService(session, console.now)
                    read = LiveFigures(defenders=service.status_counts(), forwarded=[],
                                       policy_revision=policy_revision(session),
                                       inventory_revision=service.inventory_revision(),
                                       backlog=_fleet_backlog(session),
                                       now=console.now())
                stored[:] = [(monotonic(), read)]
            cached = stored[0][1]
        return replace(cached, forwarded=stats_as_rows(link.forwarder),
                       leases={lease.name: lease.held})

    link.metrics.live(figures)

    @app.get("/metrics", tags=["metrics"], response_class=PlainTextResponse)
    def metrics(_: Reader) -> PlainTextResponse:
        """Prometheus metrics (any role's token; see cnnf.console.metrics)."""
        return PlainTextResponse(link.metrics.render(), media_type=CONTENT_TYPE_LATEST)


def create_app(
    config: ConsoleConfig,
    *,
    engine: Engine | None = None,
    now: Callable[[], datetime] = utcnow,
    monotonic: Callable[[], float] = time.monotonic,
    static: Path | None = STATIC,
) -> FastAPI:
    """Build the Console app: connect, migrate the store, mount the routers; the web
    UI from ``static`` (None: no UI, for a caller that mounts its own)."""
    engine = engine or connect(config.db_url)
    migrate(engine)
    console = ConsoleState(
        config=config,
        sessions=sessionmaker(engine, expire_on_commit=False),
        limiter=LoginLimiter(config.login_failures_allowed,
                             config.login_failure_window_seconds, monotonic),
        now=now,
    )
    app = FastAPI(
        title="CNNF Console",
        version=__version__,
        openapi_url=f"{API_PREFIX}/openapi.json",
        docs_url=None,  # served by add_docs from the Console's own files (no CDN)
        redoc_url=None,
        lifespan=_lifespan,
        dependencies=[Depends(refuse_unknown_query)],
    )
    app.state.console = console
    app.state.engine = engine
    _install_handlers(app)
    for module in (auth, users, objects, rules, policy, learning, records, overlays, radar,
                   defenders, defender, prisma, forwarding):
        app.include_router(module.router, prefix=API_PREFIX)
    _install_link(app, console, monotonic)

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, str]:
        """Liveness and store reachability; no credentials needed."""
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        return {"status": "ok", "version": __version__}

    heads = revision_heads()

    @app.get("/readyz", tags=["health"], responses=errors(
        503, s503="this Console cannot serve now (the body says why)"))
    def readyz() -> dict[str, str]:
        """Readiness: 200 when this Console can serve: the store answers and holds
        the schema this version needs. No credentials needed."""
        try:
            revision = current_revision(engine)
        except SQLAlchemyError as exc:
            raise StarletteHTTPException(503, f"the store does not answer: "
                                              f"{type(exc).__name__}") from exc
        if revision not in heads:
            raise StarletteHTTPException(
                503, f"the store's schema is at revision {revision}; this Console needs "
                     f"{', '.join(heads)} (another version migrated it?)")
        return {"status": "ready", "version": __version__, "schema": revision}

    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = document_errors(app, generate())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    add_docs(app, f"{API_PREFIX}/docs", f"{API_PREFIX}/openapi.json", static or STATIC)
    if static is not None:
        mount_ui(app, static)  # last: the UI's "/" mount must not shadow any route
    # The Defender link's plain long-polls and report batches skip the router and
    # its dependencies (the rest goes on to the routes). Inside every other
    # middleware: what is added here (after it) applies to its requests too.
    if config.link_fast_path:
        app.add_middleware(DefenderFastPath, owner=app)
    app.add_middleware(BodyLimit, limit=config.max_body_bytes)
    return app
