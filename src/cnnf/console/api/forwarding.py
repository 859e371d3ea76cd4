"""Audit forwarding as operators see it: the fleet's sinks with their backlog, the
audits a sink refused on their own (parked), and requeueing them once the sink
(or the record's cause) is fixed."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Query, Response

from cnnf.console.api.contract import errors
from cnnf.console.api.deps import Admin, Reader, SessionDep
from cnnf.console.services.forwarding import (
    ParkedAudit,
    Requeue,
    Requeued,
    SinkSummary,
    parked_audits,
    parked_count,
    requeue_parked,
    sink_summaries,
)

router = APIRouter(prefix="/forwarding", tags=["forwarding"])
log = logging.getLogger("cnnf.console.forwarding")
SinkName = Annotated[str | None, Query(min_length=1, max_length=200,
                                       description="only this sink's (its name)")]
ParkedLimit = Annotated[int, Query(ge=1, le=1000, description="at most this many")]


@router.get("/sinks", response_model=list[SinkSummary])
def list_sinks(*, db: SessionDep, _: Reader) -> list[SinkSummary]:
    """The fleet's forwarding sinks (and any removed one still holding audits):
    audits waiting, audits parked. URLs are not shown (they may hold secrets)."""
    return sink_summaries(db)


@router.get("/parked", response_model=list[ParkedAudit], responses={
    **errors(404, s404="no sink of that name"),
    200: {"headers": {"Total-Count": {"description": "parked audits (of the sink), "
                                                     "beyond the limit too",
                                      "schema": {"type": "integer"}}}}})
def list_parked(*, response: Response, db: SessionDep, _: Reader, sink: SinkName = None,
                limit: ParkedLimit = 100) -> list[ParkedAudit]:
    """Audits a sink refused on their own (a webhook's 400, 413 or 422 for them
    while it took the rest), oldest first; they are not sent again unless requeued.
    ``Total-Count`` holds how many are parked in all."""
    found = parked_audits(db, sink, limit)
    response.headers["Total-Count"] = str(parked_count(db, sink))
    return found


@router.post("/parked/requeue", response_model=Requeued, responses=errors(
    404, 409, s404="no sink of that name, or it has no parked audits, or the ids "
                   "named are not parked for it; nothing was requeued",
    s409="the sink is no longer configured (requeued audits would wait for it); "
         "nothing was requeued"))
def requeue(body: Requeue, *, db: SessionDep, who: Admin) -> Requeued:
    """Send parked audits of one sink again (the oldest 1000, or the ``ids``
    given, at most 1000; ``left`` counts those still parked): they go at the
    forwarder's next round, in id order with the sink's backlog. One the sink
    still refuses is parked again, and the audits behind it go on."""
    done = requeue_parked(db, body)
    shown = sorted(set(body.ids or ()))
    log.warning("forwarding: %s requeued %d parked audits of %s%s", who.name, done.requeued,
                done.sink, f" (ids {', '.join(map(str, shown[:20]))}"
                           f"{', ...' if len(shown) > 20 else ''})" if shown else "")
    return done
