"""Radar's graph data: ``GET /api/v1/radar`` -> nodes and edges.

Inputs: the policy, the aggregated flows in the time window, the cluster
inventory the Defenders report (running containers and hosts) and the data
overlays; :func:`cnnf.console.radar.build_graph` does the rest.
"""

from __future__ import annotations

import gc
import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from itertools import starmap
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, Response
from sqlalchemy import select

from cnnf.console.api.deps import Reader, SessionDep, StateDep, policy_service
from cnnf.console.radar import Flow, RadarQuery, build_graph
from cnnf.console.services.defenders import DefenderService
from cnnf.console.services.overlays import OverlayService
from cnnf.console.store.models import FlowRow

router = APIRouter(tags=["radar"])
Text = Annotated[str, Query(max_length=300)]


@router.get("/radar", response_class=Response, responses={200: {
    "content": {"application/json": {"schema": {"type": "object"}}},
    "description": "nodes, groups and edges"}})
def radar(
    *,
    request: Request, db: SessionDep, console: StateDep,
    view: Annotated[Literal["container", "host"], Query()] = "container",
    group: Annotated[Literal["namespace", "host", "none"], Query()] = "namespace",
    since: Annotated[datetime | None, Query(description="flows last seen at or after")] = None,
    namespace: Text = "", host: Text = "",
    verdict: Annotated[Literal["allowed", "alert", "blocked", "observed"] | None,
                       Query()] = None,
    q: Text = "",
    who: Reader,
) -> Response:
    """The Radar graph of the container view (one node per image, grouped by
    namespace or host) or the host view; rule edges and observed edges with
    per-port verdicts; node overlays."""
    policy = policy_service(db, console, who).policy()
    inventory = DefenderService(db, console.now).cluster_inventory()
    # Plain rows, not ORM objects: tens of thousands of flows load several times faster.
    stmt = select(FlowRow.kind, FlowRow.src, FlowRow.dst, FlowRow.port, FlowRow.verdict,
                  FlowRow.rule_id, FlowRow.rule_name, FlowRow.count, FlowRow.first_seen,
                  FlowRow.last_seen).where(FlowRow.kind == view)
    if since is not None:
        stmt = stmt.where(FlowRow.last_seen >= since)
    flows = list(starmap(Flow, db.execute(stmt)))
    overlays = OverlayService(db, console.now).for_radar()
    query = RadarQuery(view=view, group=group, namespace=namespace, host=host, verdict=verdict,
                       q=q)
    with _gc_paused():
        graph = build_graph(policy, hosts=inventory.hosts, containers=inventory.containers,
                            flows=flows, overlays=overlays, query=query)
        return _respond(request, policy.revision, inventory.revision, graph)


@contextmanager
def _gc_paused() -> Iterator[None]:
    """A large graph is tens of thousands of small acyclic dicts and lists; the
    cyclic collector would scan the growing heap again and again while they are
    made (about half the endpoint's time at 20,000 edges). Reference counting
    still frees everything."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _respond(request: Request, revision: int, inventory_revision: int,
             graph: dict[str, Any]) -> Response:
    graph["revision"] = revision
    graph["inventoryRevision"] = inventory_revision
    # Serialised directly: the graph is plain JSON data, and the generic encoder
    # walks every value of a large graph several times slower.
    body = json.dumps(graph, separators=(",", ":"))
    # Radar polls: an unchanged graph is answered with 304 and no body, so a
    # large picture is not sent, parsed and compared again every few seconds.
    etag = '"' + hashlib.blake2b(body.encode(), digest_size=16).hexdigest() + '"'
    headers = {"ETag": etag, "Cache-Control": "no-cache"}
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers=headers)
    return Response(body, media_type="application/json", headers=headers)
