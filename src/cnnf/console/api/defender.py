"""The Defender-facing endpoints (``/api/v1/defender/*``), for Defender credentials only.

The long-polls (policy, cluster inventory) answer at once when the caller's
revision is not the current one; otherwise they wait on this process's
:class:`~cnnf.console.services.defenders.Notifier` (policy changes and inventory
changes signal it after their commit), and read the revision from the store at
least every ``store_poll`` seconds. On PostgreSQL a change committed through any
replica wakes them on every replica through the change feed
(:mod:`cnnf.console.store.feed`); the store poll is then only a backstop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, Query, Request, Response, Security
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials
from pydantic import BaseModel, ConfigDict
from sqlalchemy.orm import Session

from cnnf.console.api.contract import Guard
from cnnf.console.api.deps import ConsoleState, StateDep, _bearer, state
from cnnf.console.metrics import ConsoleMetrics
from cnnf.console.security import Permission
from cnnf.console.services.defenders import (
    CREDENTIAL_PREFIX,
    DefenderPrincipal,
    DefenderService,
    Notifier,
    policy_revision,
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
T = TypeVar("T")


@dataclass
class LinkHub:
    """The Defender link's per-process state, built once by ``create_app``."""

    metrics: ConsoleMetrics
    lease: Lease
    forwarder: Forwarder | None = None
    policy: Notifier = field(default_factory=Notifier)
    inventory: Notifier = field(default_factory=Notifier)
    # Read the store's revision this often while waiting (another Console process;
    # a backstop when the change feed tells of them).
    store_poll: float = 1.0
    feed: ChangeFeed | None = None  # PostgreSQL: change notices between replicas
    stale: frozenset[str] | None = None  # Defenders last found stale (None: not looked yet)
    _document: tuple[int, dict[str, Any]] | None = None

    def changed(self, topic: str) -> None:
        """A change to ``topic`` (policy or inventory) committed: wake this process's
        long-polls, and every other replica's through the change feed."""
        (self.policy if topic == "policy" else self.inventory).notify()
        if self.feed is not None:
            self.feed.publish(topic)

    def heard(self, topic: str) -> None:
        """A change notice from the feed (any replica)."""
        self.metrics.notices.labels(topic).inc()
        (self.policy if topic == "policy" else self.inventory).notify()

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


HubDep = Annotated[LinkHub, Depends(hub)]


class DefenderCaller(Guard):
    """The calling Defender. A user's token is refused with 403 (valid) or 401."""

    def __call__(
        self,
        console: StateDep,
        link: HubDep,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> DefenderPrincipal:
        if credentials is None:
            raise Unauthorized(
                "authentication required: send 'Authorization: Bearer <credential>'")
        secret = credentials.credentials
        with console.sessions() as session:
            if secret.startswith(CREDENTIAL_PREFIX):
                who, revived = DefenderService(session, console.now).authenticate(secret)
                if revived:
                    link.changed("inventory")
                return who
            UserService(session, console.now).authenticate(secret)  # 401: not a token at all
        raise Forbidden(f"only a Defender credential may call the Defender endpoints "
                        f"(needs {Permission.DEFENDER.value!r})")

    async def check(self, request: Request) -> None:
        credentials = await _bearer(request)
        await run_in_threadpool(self, state(request), hub(request), credentials)


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


async def _long_poll(read: Callable[[], T | None], notifier: Notifier, wait: float,
                     store_poll: float) -> T | None:
    """``read()`` until it gives something or ``wait`` seconds passed, waking on the
    notifier or every ``store_poll`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    while True:
        generation = notifier.generation
        got = await run_in_threadpool(read)
        if got is not None:
            return got
        remaining = deadline - loop.time()
        if remaining <= 0:
            return None
        await notifier.wait(generation, min(remaining, store_poll))


def _touch(console: StateDep, who: DefenderPrincipal) -> None:
    # A long-poll ends here; the next one starts at once, so last_seen stays fresh.
    with console.sessions() as session:
        DefenderService(session, console.now).touch(who.defender_id)


def check_stale(console: ConsoleState, link: LinkHub) -> bool:
    """Move the cluster inventory on when Defenders went stale (run periodically)."""
    with console.sessions() as session:
        link.stale, changed = DefenderService(session, console.now).note_stale(link.stale)
    if changed:
        link.changed("inventory")
    return changed


@router.get("/policy", response_model=PolicyAnswer,
            responses={204: {"description": "no change within the wait"}})
async def get_policy(*, console: StateDep, link: HubDep, who: Defender,
                     revision: Revision = -1, wait: Wait = 0) -> Any:
    """The policy as a native document when its revision is not ``revision``;
    else wait up to ``wait`` seconds for a change (204 when none came)."""
    def read() -> PolicyAnswer | None:
        with console.sessions() as session:
            current = policy_revision(session)
            if current == revision:
                return None
            got, document = link.document(session)
            return PolicyAnswer(revision=got, document=document)

    answer = await _long_poll(read, link.policy, wait, link.store_poll)
    if wait:
        await run_in_threadpool(_touch, console, who)
    return answer if answer is not None else Response(status_code=204)


@router.get("/inventory", response_model=ClusterInventory,
            responses={204: {"description": "no change within the wait"}})
async def get_inventory(*, console: StateDep, link: HubDep, who: Defender,
                        revision: Revision = -1, wait: Wait = 0) -> Any:
    """Every Defender's hosts and containers when the cluster inventory revision
    is not ``revision``; else wait up to ``wait`` seconds (204 when none came)."""
    def read() -> ClusterInventory | None:
        with console.sessions() as session:
            service = DefenderService(session, console.now)
            if service.inventory_revision() == revision:
                return None
            return service.cluster_inventory()

    answer = await _long_poll(read, link.inventory, wait, link.store_poll)
    if wait:
        await run_in_threadpool(_touch, console, who)
    return answer if answer is not None else Response(status_code=204)


@router.post("/inventory", status_code=204, response_class=Response)
def post_inventory(report: InventoryReport, *, console: StateDep, link: HubDep,
                   who: Defender) -> Response:
    """Replace this Defender's inventory (the cluster revision moves if it changed)."""
    with console.sessions() as session:
        changed = DefenderService(session, console.now).put_inventory(who.defender_id, report)
    if changed:
        link.changed("inventory")
    return Response(status_code=204)


@router.post("/reports", response_model=BatchAnswer)
def post_reports(batch: ReportBatch, *, console: StateDep, link: HubDep,
                 who: Defender) -> BatchAnswer:
    """Store a batch of flows and audits once (by ``batch_id``); 200 means stored."""
    with console.sessions() as session:
        stored = DefenderService(session, console.now).store_batch(
            who, batch, forward_to=link.forwarder.names if link.forwarder else ())
    link.metrics.batch(duplicate=stored.duplicate, flows=stored.flows, audits=stored.audits,
                       dropped=stored.dropped)
    if link.forwarder is not None and stored.audits:
        link.forwarder.wake()  # queued in the store with the audits; sent by the lease holder
    return BatchAnswer(accepted=True, duplicate=stored.duplicate)
