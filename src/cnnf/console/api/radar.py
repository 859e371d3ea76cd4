"""Radar's graph data: ``GET /api/v1/radar`` -> nodes and edges.

The inventory (running containers and hosts) comes from
``app.state.radar_inventory``, a callable ``(Session) -> ClusterInventory``:
the Defender link's inventory store plugs in there; without one the graph is
built from policy and flows alone.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from sqlalchemy import select
from sqlalchemy.orm import Session

from cnnf.console.api.deps import Reader, SessionDep, StateDep, policy_service
from cnnf.console.radar import RadarQuery, build_graph
from cnnf.console.services.overlays import OverlayService
from cnnf.console.store.models import FlowRow
from cnnf.model.records import ClusterInventory

router = APIRouter(tags=["radar"])
InventoryProvider = Callable[[Session], ClusterInventory]
Text = Annotated[str, Query(max_length=300)]


def no_inventory(_: Session) -> ClusterInventory:
    return ClusterInventory(revision=0)


@router.get("/radar")
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
) -> dict[str, Any]:
    """The Radar graph of the container view (one node per image, grouped by
    namespace or host) or the host view; rule edges and observed edges with
    per-port verdicts; node overlays."""
    policy = policy_service(db, console, who).policy()
    provider: InventoryProvider = getattr(request.app.state, "radar_inventory", no_inventory)
    inventory = provider(db)
    stmt = select(FlowRow).where(FlowRow.kind == view)
    if since is not None:
        stmt = stmt.where(FlowRow.last_seen >= since)
    flows = db.scalars(stmt).all()
    graph = build_graph(
        policy, hosts=inventory.hosts, containers=inventory.containers, flows=flows,
        overlays=OverlayService(db, console.now).for_radar(),
        query=RadarQuery(view=view, group=group, namespace=namespace, host=host,
                         verdict=verdict, q=q),
    )
    graph["revision"] = policy.revision
    graph["inventoryRevision"] = inventory.revision
    graph["generated"] = console.now().isoformat()
    return graph
