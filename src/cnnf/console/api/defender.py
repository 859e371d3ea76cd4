"""The Defender-facing endpoints (``/api/v1/defender/*``), for Defender credentials only.

The long-polls (policy, cluster inventory) answer at once when the caller's
revision is not the current one; otherwise they wait on this process's
:class:`~cnnf.console.services.defenders.Notifier` (policy changes and inventory
changes signal it after their commit), and read the revision from the store at
least every ``store_poll`` seconds. All the long-polls of a process share one
read of the store per change (:class:`SharedRead`) and one JSON body per
revision, so a change costs one read however many Defenders wait. On
PostgreSQL a change committed through any replica wakes them on every replica
through the change feed (:mod:`cnnf.console.store.feed`); the store poll is
then only a backstop.

A cached Defender's plain long-polls and report batches do not come through
these routes: :mod:`cnnf.console.api.fastpath` answers them in front of the
app with the same code (:func:`serve`, :func:`store_reports`); these routes
answer the rest, and define the API document for both.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Annotated, Any, Generic, TypeVar

from fastapi import APIRouter, Depends, Query, Request, Response, Security
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials
from pydantic import BaseModel, ConfigDict
from sqlalchemy.orm import Session
from starlette.background import BackgroundTask

from cnnf.console.api.contract import Guard
from cnnf.console.api.deps import ConsoleState, StateDep, _bearer, state
from cnnf.console.metrics import ConsoleMetrics
from cnnf.console.security import Permission, token_hash
from cnnf.console.services.defenders import (
    CREDENTIAL_PREFIX,
    CredentialCache,
    DefenderPrincipal,
    DefenderService,
    Notifier,
    policy_revision,
    revocations,
    revoked_ids,
)
from cnnf.console.services.errors import Forbidden, Unauthorized
from cnnf.console.services.forwarding import Forwarder
from cnnf.console.services.leases import Lease
from cnnf.console.services.policy import PolicyService
from cnnf.console.services.users import UserService
from cnnf.console.store.feed import ChangeFeed
from cnnf.model.records import ClusterInventory, InventoryReport, ReportBatch
from cnnf.policy.document import policy_document

log = logging.getLogger("cnnf.console.defender")
router = APIRouter(prefix="/defender", tags=["defender"])
MAX_WAIT = 30.0
SEEN_FLUSH_SECONDS = 1.0
REPLACED_LOG_SECONDS = 60.0
T = TypeVar("T")
Current = tuple[int, bytes]  # a revision and its answer's JSON body


class SharedRead(Generic[T]):
    """One store read shared by every long-poll of this process.

    When a change wakes a thousand waiting long-polls, the first one to ask reads
    the store (in a worker thread) and the others await that same read: one
    read per change per process, not one per Defender. A value is reused while
    the notifier's generation is the one read before it was fetched and it is
    younger than ``max_age`` seconds (the store-poll backstop for changes no
    notice told of)."""

    def __init__(self, read: Callable[[], T], notifier: Notifier,
                 max_age: Callable[[], float],
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self._read = read
        self._notifier = notifier
        self._max_age = max_age
        self._monotonic = monotonic
        self._value: tuple[int, float, T] | None = None  # (generation, read at, value)
        self._pending: tuple[int, asyncio.Future[T]] | None = None
        self.reads = 0  # store reads done (for tests and the bench)

    async def get(self) -> T:
        generation = self._notifier.generation
        value = self._value
        if (value is not None and value[0] == generation
                and self._monotonic() - value[1] < self._max_age()):
            return value[2]
        pending = self._pending
        if (pending is not None and pending[0] == generation and pending[1].done()
                and pending[1].get_loop() is asyncio.get_running_loop()
                and not pending[1].cancelled() and pending[1].exception() is None
                and (value is None or value[2] is not pending[1].result())):
            # Read, and its done() below not run yet (callbacks go through the loop's
            # queue, behind polls woken earlier): that read, not a second one. (Once
            # done() ran, the value ages as any: max_age applies.)
            return pending[1].result()
        if (pending is None or pending[0] != generation or pending[1].done()
                or pending[1].get_loop() is not asyncio.get_running_loop()):
            started = self._monotonic()
            future = asyncio.ensure_future(run_in_threadpool(self._read))
            pending = (generation, future)
            self._pending = pending
            self.reads += 1

            def done(f: asyncio.Future[T], generation: int = generation) -> None:
                # Reads can finish out of order: one that began before the value
                # kept now (an older generation) does not replace it.
                kept = self._value
                if (not f.cancelled() and f.exception() is None
                        and (kept is None or (generation, started) >= kept[:2])):
                    self._value = (generation, started, f.result())

            future.add_done_callback(done)
        return await asyncio.shield(pending[1])


@dataclass
class Waiting:
    """A Defender's waiting long-poll of one topic in this process. A newer one of
    the same Defender and topic ends it at once (204): one credential cannot keep
    thousands of long-polls waiting, each to be woken and answered on every change,
    and a Defender whose connection died half-open does not leave its old poll
    behind."""

    ended: bool = False
    future: asyncio.Future[None] | None = None  # the wait in progress

    def end(self) -> None:
        self.ended = True
        future = self.future
        if future is None or future.done():
            return
        loop = future.get_loop()
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if loop is running:
            future.set_result(None)
        else:
            with contextlib.suppress(RuntimeError):  # that loop is closed
                loop.call_soon_threadsafe(_end, future)


def _end(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


@dataclass
class LinkHub:
    """The Defender link's per-process state, built once by ``create_app``."""

    metrics: ConsoleMetrics
    lease: Lease
    forwarder: Forwarder | None = None
    policy: Notifier = field(default_factory=Notifier)
    inventory: Notifier = field(default_factory=Notifier)
    # Revocations (through this process, or told of by the change feed): the
    # verified-credential cache is checked against the store at once after one.
    credentials: Notifier = field(default_factory=Notifier)
    verified: CredentialCache = field(default_factory=CredentialCache)
    # Read the store's revision this often while waiting (another Console process;
    # a backstop when the change feed tells of them).
    store_poll: float = 1.0
    feed: ChangeFeed | None = None  # PostgreSQL: change notices between replicas
    stale: frozenset[str] | None = None  # Defenders last found stale (None: not looked yet)
    _document: tuple[int, dict[str, Any]] | None = None
    _policy_body: Current | None = None
    _inventory_body: Current | None = None
    monotonic: Callable[[], float] = time.monotonic
    flushed: float = float("-inf")
    seen_lock: threading.Lock = field(default_factory=threading.Lock)
    current_policy: SharedRead[Current] = field(init=False)
    current_inventory: SharedRead[Current] = field(init=False)
    current_revocations: SharedRead[int] = field(init=False)
    current_revoked: SharedRead[frozenset[str]] = field(init=False)
    # Long-polls that returned since the last flush: their last_seen is written
    # in one statement per second (not one write per long-poll).
    seen: set[str] = field(default_factory=set)
    # The one waiting long-poll of each (Defender, topic) in this process.
    waiting: dict[tuple[str, str], Waiting] = field(default_factory=dict)
    replaced: dict[str, float] = field(default_factory=dict)  # last logged, per Defender

    def notifier(self, topic: str) -> Notifier:
        return {"policy": self.policy, "inventory": self.inventory,
                "credentials": self.credentials}[topic]

    def changed(self, topic: str) -> None:
        """A change to ``topic`` (policy, inventory or credentials) committed: wake
        this process's long-polls (or recheck its cached credentials), and every
        other replica's through the change feed."""
        self.notifier(topic).notify()
        if self.feed is not None:
            self.feed.publish(topic)

    def heard(self, topic: str) -> None:
        """A change notice from the feed (any replica)."""
        self.metrics.notices.labels(topic).inc()
        self.notifier(topic).notify()

    def saw(self, defender_id: str) -> None:
        """A Defender called: its last_seen goes with the next batched write."""
        with self.seen_lock:
            self.seen.add(defender_id)

    def attach(self, console: ConsoleState) -> None:
        """Build the shared reads of the current policy and inventory (create_app).
        They age on the real monotonic clock, as the long-polls' waits do."""

        def policy() -> Current:
            with console.sessions() as session:
                revision = policy_revision(session)
                body = self._policy_body
                if body is None or body[0] != revision:
                    got, document = self.document(session)
                    body = (got, PolicyAnswer(revision=got, document=document)
                            .model_dump_json().encode())
                    self._policy_body = body
                return body

        def inventory() -> Current:
            with console.sessions() as session:
                service = DefenderService(session, console.now)
                revision = service.inventory_revision()
                body = self._inventory_body
                if body is None or body[0] != revision:
                    got = service.cluster_inventory()
                    body = (got.revision, got.model_dump_json().encode())
                    self._inventory_body = body
                return body

        def revoked() -> int:
            with console.sessions() as session:
                return revocations(session)

        def revoked_now() -> frozenset[str]:
            with console.sessions() as session:
                return revoked_ids(session)

        def max_age() -> float:
            return self.store_poll

        self.current_policy = SharedRead(policy, self.policy, max_age, self.monotonic)
        self.current_inventory = SharedRead(inventory, self.inventory, max_age, self.monotonic)
        self.current_revocations = SharedRead(revoked, self.credentials, max_age,
                                              self.monotonic)
        self.current_revoked = SharedRead(revoked_now, self.credentials, max_age,
                                          self.monotonic)
        # A change's notice starts the one read at once; the waiting long-polls are
        # woken when it is done (each resumes once, with the answer at hand).
        self.policy.before_wake = self.current_policy.get
        self.inventory.before_wake = self.current_inventory.get

    def document(self, session: Session) -> tuple[int, dict[str, Any]]:
        """The current policy as a native document, built once per revision."""
        revision = policy_revision(session)
        cached = self._document
        if cached is not None and cached[0] == revision:
            return cached
        policy = PolicyService(session).policy()
        built = (policy.revision, policy_document(policy))
        self._document = built
        return built


def hub(request: Request) -> LinkHub:
    link: LinkHub = request.app.state.link
    return link


async def _hub(request: Request) -> LinkHub:
    return hub(request)  # async: no worker thread (see deps._state)


HubDep = Annotated[LinkHub, Depends(_hub)]


class DefenderCaller(Guard):
    """The calling Defender. A user's token is refused with 403 (valid) or 401.

    A credential verified before is taken from the process's
    :class:`CredentialCache` without a store read (on the event loop, no worker
    thread): the cache is checked against the store's count of revoked
    Defenders, read once per process at once after a revocation and at least
    every store-poll interval. The cache serves the long-polls (reads); every
    write of a Defender (reports, inventory) checks in its own transaction that
    the store has not revoked it, so a revocation whose notice was lost still
    stops its writes at once."""

    async def __call__(
        self,
        request: Request,
        console: StateDep,
        link: HubDep,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> DefenderPrincipal:
        """The Defender; the count of revoked Defenders its credential was checked
        under is kept in ``request.state.revocations`` (a long-poll answers 401 if
        it moved and the Defender is among the revoked)."""
        if credentials is None:
            raise Unauthorized(
                "authentication required: send 'Authorization: Bearer <credential>'")
        secret = credentials.credentials
        if secret.startswith(CREDENTIAL_PREFIX):
            digest = token_hash(secret)
            epoch = await link.current_revocations.get()
            request.state.revocations = epoch
            who = link.verified.lookup(digest, epoch, console.now(), link.saw)
            if who is None:
                who = await run_in_threadpool(self._defender, console, link, secret)
                link.verified.remember(digest, who, epoch, console.now())
            return who
        await run_in_threadpool(self._user, console, secret)
        raise Forbidden(f"only a Defender credential may call the Defender endpoints "
                        f"(needs {Permission.DEFENDER.value!r})")

    @staticmethod
    def _defender(console: ConsoleState, link: LinkHub, secret: str) -> DefenderPrincipal:
        with console.sessions() as session:
            who, revived = DefenderService(session, console.now).authenticate(
                secret, later=link.saw)
        if revived:
            link.changed("inventory")
        return who

    @staticmethod
    def _user(console: ConsoleState, secret: str) -> None:
        with console.sessions() as session:
            UserService(session, console.now).authenticate(secret)  # 401: not a token at all

    async def check(self, request: Request) -> None:
        await self(request, state(request), hub(request), await _bearer(request))


defender_caller = DefenderCaller()


Defender = Annotated[DefenderPrincipal, Security(defender_caller,
                                                 scopes=[Permission.DEFENDER.value])]
Revision = Annotated[int, Query(ge=-1, le=2**63 - 1, description="the revision the caller has")]
Wait = Annotated[float, Query(ge=0, le=MAX_WAIT, description="seconds to wait for a change")]


class _Wire(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class PolicyAnswer(_Wire):
    revision: int
    document: dict[str, Any]


class BatchAnswer(_Wire):
    accepted: bool
    duplicate: bool


async def _long_poll(shared: SharedRead[Current], notifier: Notifier, revision: int,
                     wait: float, store_poll: float, *, waiting: Waiting | None = None,
                     ) -> tuple[Current | None, float | None]:
    """The current (revision, body) once its revision is not ``revision``, waiting
    up to ``wait`` seconds, waking on the notifier or every ``store_poll`` seconds;
    None when nothing changed, or when a newer long-poll ended ``waiting``. Second:
    when the answer came with a notice while it waited, when this process was
    notified (``time.monotonic()``), else None."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    noticed = None  # when the notice that woke this long-poll came
    while True:
        generation = notifier.generation
        current = await shared.get()
        if current[0] != revision:
            return current, noticed
        remaining = deadline - loop.time()
        if remaining <= 0 or (waiting is not None and waiting.ended):
            return None, None
        future: asyncio.Future[None] | None = None
        if waiting is not None:
            future = waiting.future = loop.create_future()
        if await notifier.wait(generation, min(remaining, store_poll), future):
            noticed = notifier.notified_at if generation != notifier.generation else None
        if waiting is not None and waiting.ended:
            return None, None


@contextlib.contextmanager
def _only_one(link: LinkHub, who: DefenderPrincipal, topic: str, wait: float,
              ) -> Iterator[Waiting | None]:
    """This long-poll as its Defender's one waiting on ``topic``: an older one ends."""
    if not wait:
        yield None
        return
    key = (who.defender_id, topic)
    older = link.waiting.get(key)
    if older is not None:
        older.end()
        now = time.monotonic()
        if now - link.replaced.get(who.defender_id, float("-inf")) >= REPLACED_LOG_SECONDS:
            link.replaced[who.defender_id] = now  # at most one line a minute per Defender
            log.warning("Defender %s (%s): a new %s long-poll replaced one still waiting "
                        "(204); two processes with one credential end each other's "
                        "(a state directory copied to another node?)",
                        who.defender_id, who.hostname, topic)
    mine = Waiting()
    link.waiting[key] = mine
    try:
        yield mine
    finally:
        if link.waiting.get(key) is mine:
            del link.waiting[key]


async def answered(link: LinkHub, topic: str, noticed: float) -> None:
    """The Console's share of propagation: from the notice that woke the long-poll
    to its answer written to the connection (run after its body was sent; async:
    on the event loop, no worker thread)."""
    link.metrics.answered.labels(topic).observe(time.monotonic() - noticed)


async def _check_revoked(link: LinkHub, who: DefenderPrincipal, epoch: int) -> None:
    """Unauthorized when the Defender was revoked while its long-poll waited (the
    count of revoked Defenders moved since ``epoch``, read before the wait): 401,
    not the inventory its own revocation produced. The revoked ids are one shared
    store read per revocation, however many long-polls ended with it."""
    if (await link.current_revocations.get() != epoch
            and who.defender_id in await link.current_revoked.get()):
        raise Unauthorized("invalid or revoked Defender credential")


def flush_seen(console: ConsoleState, link: LinkHub) -> int:
    """Write last_seen of the Defenders whose long-polls returned since the last
    flush, in one statement; how many."""
    with link.seen_lock:
        ids, link.seen = link.seen, set()
        link.flushed = link.monotonic()
    if ids:
        with console.sessions() as session:
            DefenderService(session, console.now).seen(ids)
    link.verified.prune(console.now())
    return len(ids)


async def _seen(console: ConsoleState, link: LinkHub, who: DefenderPrincipal) -> None:
    # A long-poll ends here; the next one starts at once, so last_seen stays fresh.
    with link.seen_lock:
        link.seen.add(who.defender_id)
        now = link.monotonic()
        due = now - link.flushed >= SEEN_FLUSH_SECONDS
        if due:  # this long-poll writes them; the others of this second do not queue up
            link.flushed = now
    if due:
        await run_in_threadpool(flush_seen, console, link)


def check_stale(console: ConsoleState, link: LinkHub) -> bool | None:
    """Move the cluster inventory on when Defenders went stale (run periodically);
    None when another process holds the singleton lease: the check is work for one
    replica, not for each (every replica's check would read every Defender, and
    each would move the revision for the same Defenders)."""
    if not link.lease.ensure():
        link.stale = None  # when this process takes the lease over, it looks afresh
        return None
    with console.sessions() as session:
        link.stale, changed = DefenderService(session, console.now).note_stale(link.stale)
    if changed:
        link.changed("inventory")
    return changed


def _json(current: Current) -> Response:
    return Response(content=current[1], media_type="application/json")


async def serve(console: ConsoleState, link: LinkHub, who: DefenderPrincipal, topic: str,
                *, revision: int, wait: float, epoch: int,
                ) -> tuple[Current | None, float | None]:
    """One long-poll of ``topic`` (policy, inventory) for ``who``, authenticated
    under ``epoch`` (the count of revoked Defenders its credential was checked
    with; not read again here: a revocation between the check and this read
    would go unseen): the current (revision, body) when its revision is not
    ``revision``, waiting up to ``wait`` seconds (None: no change, or a newer
    long-poll replaced this one), and when the notice that woke it came (for the
    answer histogram). Raises Unauthorized when the Defender was revoked since
    ``epoch``. Shared by the FastAPI routes and the fast path
    (:mod:`cnnf.console.api.fastpath`)."""
    shared, notifier = ((link.current_policy, link.policy) if topic == "policy"
                        else (link.current_inventory, link.inventory))
    with _only_one(link, who, topic, wait) as waiting:
        answer, noticed = await _long_poll(shared, notifier, revision, wait,
                                           link.store_poll, waiting=waiting)
    if wait:
        await _seen(console, link, who)
    await _check_revoked(link, who, epoch)
    return answer, noticed


async def _routed(request: Request, link: LinkHub, who: DefenderPrincipal, topic: str,
                  *, revision: int, wait: float) -> Response:
    answer, noticed = await serve(state(request), link, who, topic, revision=revision,
                                  wait=wait, epoch=request.state.revocations)
    response = _json(answer) if answer is not None else Response(status_code=204)
    if noticed is not None:  # measured once the answer is written (a background task)
        response.background = BackgroundTask(answered, link, topic, noticed)
    return response


@router.get("/policy", response_model=PolicyAnswer,
            responses={204: {"description": "no change within the wait, or a newer "
                                       "long-poll of this Defender replaced this one"}})
async def get_policy(*, request: Request, link: HubDep, who: Defender,
                     revision: Revision = -1, wait: Wait = 0) -> Any:
    """The policy as a native document when its revision is not ``revision``;
    else wait up to ``wait`` seconds for a change (204 when none came, or at once
    when a newer long-poll of this Defender replaced this one)."""
    return await _routed(request, link, who, "policy", revision=revision, wait=wait)


@router.get("/inventory", response_model=ClusterInventory,
            responses={204: {"description": "no change within the wait, or a newer "
                                       "long-poll of this Defender replaced this one"}})
async def get_inventory(*, request: Request, link: HubDep, who: Defender,
                        revision: Revision = -1, wait: Wait = 0) -> Any:
    """Every Defender's hosts and containers when the cluster inventory revision
    is not ``revision``; else wait up to ``wait`` seconds (204 when none came, or at
    once when a newer long-poll of this Defender replaced this one)."""
    return await _routed(request, link, who, "inventory", revision=revision, wait=wait)


@contextlib.contextmanager
def _refused(link: LinkHub) -> Iterator[None]:
    """A write the store refused for a revoked Defender (401) that this process's
    credential cache let through (its revocation notice was lost or is late):
    the cache re-reads the count of revoked Defenders at once."""
    try:
        yield
    except Unauthorized:
        link.credentials.notify()
        raise


@router.post("/inventory", status_code=204, response_class=Response)
def post_inventory(report: InventoryReport, *, console: StateDep, link: HubDep,
                   who: Defender) -> Response:
    """Replace this Defender's inventory (the cluster revision moves if it changed)."""
    with console.sessions() as session, _refused(link):
        changed = DefenderService(session, console.now).put_inventory(who.defender_id, report)
    if changed:
        link.changed("inventory")
    return Response(status_code=204)


def store_reports(console: ConsoleState, link: LinkHub, who: DefenderPrincipal,
                  batch: ReportBatch) -> bytes:
    """Store a batch for ``who`` (in a worker thread); the answer's JSON body.
    Shared by the FastAPI route and the fast path."""
    with console.sessions() as session, _refused(link):
        # Queued for every sink of the fleet (the store's list), whichever replica
        # stores it and whatever this one was started with. A Defender revoked in
        # the store is refused here (401) whatever this process's cache says.
        stored = DefenderService(session, console.now).store_batch(who, batch)
    link.metrics.batch(duplicate=stored.duplicate, flows=stored.flows, audits=stored.audits,
                       dropped=stored.dropped)
    if link.forwarder is not None and stored.audits:
        link.forwarder.wake()  # queued in the store with the audits; sent by the lease holder
    return _DUPLICATE if stored.duplicate else _STORED


_STORED = BatchAnswer(accepted=True, duplicate=False).model_dump_json().encode()
_DUPLICATE = BatchAnswer(accepted=True, duplicate=True).model_dump_json().encode()


@router.post("/reports", response_model=BatchAnswer)
def post_reports(batch: ReportBatch, *, console: StateDep, link: HubDep,
                 who: Defender) -> Response:
    """Store a batch of flows and audits once (by ``batch_id``); 200 means stored."""
    return Response(content=store_reports(console, link, who, batch),
                    media_type="application/json")
