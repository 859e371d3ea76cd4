"""Radar's graph data: ``GET /api/v1/radar`` -> nodes and edges.

Inputs: the policy, the aggregated flows in the time window, the cluster
inventory the Defenders report (running containers and hosts) and the data
overlays; :func:`cnnf.console.radar.build_graph` does the rest.

Radar polls every few seconds and a large graph takes a few hundred
milliseconds to build, so the serialised answer is kept (a few of them, per
query) under a key made of everything it depends on, read from the store with
a handful of cheap queries on every request: the policy revision, the
inventory revision and which Defenders are live, a stamp of the flows (row
count, highest id, summed counts, newest and oldest times: every store, fold or
prune moves it), the flows in the time window (a moved window start that
leaves the same flows gives the same graph), the overlays' counts and the
newest audit. Any change -- through this process, another Console on the same
database or a direct write -- gives a new key, so the next request builds the
graph again. The inventory is kept apart under its own part of the key: new
flows do not make it read and validated again.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Query, Request, Response
from sqlalchemy import String, func, select, type_coerce
from sqlalchemy.orm import Session

from cnnf.console.api.deps import Reader, SessionDep, StateDep, Timestamp, policy_service
from cnnf.console.radar import Flow, RadarQuery, build_graph
from cnnf.console.services.defenders import (
    STALE_AFTER,
    DefenderService,
    policy_revision,
)
from cnnf.console.services.learning import gc_paused
from cnnf.console.services.overlays import OverlayService
from cnnf.console.store.models import AuditRow, DefenderRow, FlowRow, OverlayRow
from cnnf.model.records import ClusterInventory

router = APIRouter(tags=["radar"])
Text = Annotated[str, Query(max_length=300)]

# Serialised graphs kept (each up to ~10 MB at 20,000 edges): the views and
# filters the open Radar pages are on.
CACHED_GRAPHS = 4

@router.get("/radar", response_class=Response, responses={200: {
    "content": {"application/json": {"schema": {"type": "object"}}},
    "description": "nodes, groups and edges"}})
def radar(
    *,
    request: Request, db: SessionDep, console: StateDep,
    view: Annotated[Literal["container", "host"], Query()] = "container",
    group: Annotated[Literal["namespace", "host", "none"], Query()] = "namespace",
    since: Annotated[Timestamp | None, Query(description="flows last seen at or after")] = None,
    namespace: Text = "", host: Text = "",
    verdict: Annotated[Literal["allowed", "alert", "blocked", "observed"] | None,
                       Query()] = None,
    q: Text = "",
    who: Reader,
) -> Response:
    """The Radar graph of the container view (one node per image, grouped by
    namespace or host) or the host view; rule edges and observed edges with
    per-port verdicts; node overlays.

    What runs on an image or host node is counted as workloads, each once
    whatever its addresses. A Kubernetes pod is one workload:

    - `podCount`: the pods (a pod is on the node of its main image);
    - `pods` (image nodes): the first 50 pods as `{namespace, name, host,
      images}`, `images` being every image of the pod, its main image first
      (one image for a pod of one container);
    - `containers`: the containers that run in no pod (Docker, Podman);
    - `containerNames` (image nodes): the first 50 of their names.

    Each edge port has `verdict`, its current verdict (what the rules in force
    decide now), and `history` (what the stored flows recorded). Where the
    policy with every staged rule and the staged default effect in force would
    decide otherwise, it has `would` (same classes) and `wouldRuleId` (null:
    the staged default effect); its label then says so ("5432 would prevent").
    `unenforced` counts its connections seen with enforcement off (`enforced`:
    none was). History entries carry the `would`, `wouldRuleId` and
    `unenforced` their flows recorded. Rules carry `staged`.

    Times are UNIX seconds."""
    cache = _cache(request)
    query = RadarQuery(view=view, group=group, namespace=namespace, host=host, verdict=verdict,
                       q=q)
    if since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    now = console.now()
    inventory_key = _inventory_key(db, now)
    key = (query, since is not None, _flows_in_window(db, since), _flows_stamp(db),
           _overlays_stamp(db), _audits_stamp(db), policy_revision(db), inventory_key)
    hit = cache.graph(key)
    if hit is None:
        policy = policy_service(db, console, who).policy()
        inventory = cache.inventory(inventory_key,
                                    lambda: DefenderService(db, console.now).cluster_inventory())
        overlays = OverlayService(db, console.now).for_radar()
        with gc_paused():
            flows = _flows(db, view, since)
            graph = build_graph(policy, hosts=inventory.hosts, containers=inventory.containers,
                                flows=flows, overlays=overlays, query=query)
            graph["revision"] = policy.revision
            graph["inventoryRevision"] = inventory.revision
            body = orjson.dumps(graph)
            del graph, flows
        # Radar polls: an unchanged graph is answered with 304 and no body, so a
        # large picture is not sent, parsed and compared again every few seconds.
        hit = _Answer(body, '"' + hashlib.blake2b(body, digest_size=16).hexdigest() + '"')
        cache.keep(key, hit)
    headers = {"ETag": hit.etag, "Cache-Control": "no-cache"}
    if request.headers.get("if-none-match") == hit.etag:
        return Response(status_code=304, headers=headers)
    return Response(hit.body, media_type="application/json", headers=headers)


@dataclass(frozen=True, slots=True)
class _Answer:
    body: bytes
    etag: str


class RadarCache:
    """The last few serialised graphs by key, and the cluster inventory of the
    newest inventory key; shared by the request threads."""

    def __init__(self, size: int = CACHED_GRAPHS) -> None:
        self.size = size
        self._lock = threading.Lock()
        self._graphs: OrderedDict[tuple[Any, ...], _Answer] = OrderedDict()
        self._inventory: tuple[tuple[Any, ...], ClusterInventory] | None = None

    def graph(self, key: tuple[Any, ...]) -> _Answer | None:
        with self._lock:
            hit = self._graphs.get(key)
            if hit is not None:
                self._graphs.move_to_end(key)
            return hit

    def keep(self, key: tuple[Any, ...], answer: _Answer) -> None:
        with self._lock:
            self._graphs[key] = answer
            self._graphs.move_to_end(key)
            while len(self._graphs) > self.size:
                self._graphs.popitem(last=False)

    def inventory(self, key: tuple[Any, ...],
                  load: Callable[[], ClusterInventory]) -> ClusterInventory:
        with self._lock:
            kept = self._inventory
        if kept is not None and kept[0] == key:
            return kept[1]
        inventory = load()
        with self._lock:
            self._inventory = (key, inventory)
        return inventory


_cache_lock = threading.Lock()


def _cache(request: Request) -> RadarCache:
    """The application's Radar cache (made on first use)."""
    state = request.app.state
    with _cache_lock:
        cache: RadarCache | None = getattr(state, "radar_cache", None)
        if cache is None:
            cache = state.radar_cache = RadarCache()
    return cache


# --- what the graph depends on, read cheaply ----------------------------------------


def _flows_stamp(db: Session) -> tuple[Any, ...]:
    """Moves on every insert (count, id), fold (summed counts grow: a count is at
    least 1; times widen) and delete (count)."""
    row = db.execute(select(func.count(FlowRow.id), func.max(FlowRow.id), func.sum(FlowRow.count),
                            func.max(FlowRow.last_seen), func.min(FlowRow.first_seen))).one()
    return tuple(row)


def _flows_in_window(db: Session, since: datetime | None) -> int | None:
    """With the table unchanged, two window starts that keep the same number of
    flows keep the same flows (a later start only drops some)."""
    if since is None:
        return None
    return db.scalar(select(func.count(FlowRow.id)).where(FlowRow.last_seen >= since))


def _overlays_stamp(db: Session) -> int:
    """Every overlay's counts (one short row per image or host): a report that
    replaces another in place at the same time still moves it."""
    rows = db.execute(select(
        OverlayRow.kind, OverlayRow.name, OverlayRow.critical, OverlayRow.high,
        OverlayRow.medium, OverlayRow.low, OverlayRow.unknown, OverlayRow.compliance_passed,
        OverlayRow.compliance_failed).order_by(OverlayRow.id))
    return hash(tuple(map(tuple, rows)))


def _audits_stamp(db: Session) -> Any:
    return db.scalar(select(func.max(AuditRow.id)))


def _inventory_key(db: Session, now: datetime) -> tuple[Any, ...]:
    """The inventory revision and what :meth:`DefenderService.cluster_inventory`
    reads beside it: which Defenders are live and, per host name, which of them
    was seen last."""
    revision = DefenderService(db, lambda: now).inventory_revision()
    live: dict[str, list[tuple[datetime, str]]] = {}
    for defender_id, hostname, last_seen in db.execute(
            select(DefenderRow.defender_id, DefenderRow.hostname, DefenderRow.last_seen)
            .where(DefenderRow.revoked.is_(False))):
        if last_seen is not None:
            seen = last_seen if last_seen.tzinfo is not None else last_seen.replace(tzinfo=UTC)
            if now - seen >= STALE_AFTER:
                continue
        else:
            seen = datetime.min.replace(tzinfo=UTC)
        live.setdefault(hostname, []).append((seen, defender_id))
    order = tuple(sorted(
        (hostname, tuple(d for _, d in sorted(rows, reverse=True)) if len(rows) > 1
         else (rows[0][1],))
        for hostname, rows in live.items()))
    return (revision, order)


def _flows(db: Session, view: str, since: datetime | None) -> list[Flow]:
    """The view's flows in the window as plain rows (tens of thousands: ORM
    objects would load several times slower). SQLite keeps times as text:
    parsed here in one step rather than through the generic type."""
    sqlite = db.get_bind().dialect.name == "sqlite"
    first = type_coerce(FlowRow.first_seen, String) if sqlite else FlowRow.first_seen
    last = type_coerce(FlowRow.last_seen, String) if sqlite else FlowRow.last_seen
    stmt = select(FlowRow.kind, FlowRow.src, FlowRow.dst, FlowRow.port, FlowRow.verdict,
                  FlowRow.rule_id, FlowRow.rule_name, FlowRow.count, first,
                  last, FlowRow.would, FlowRow.would_rule_id,
                  FlowRow.mode).where(FlowRow.kind == view)
    if since is not None:
        stmt = stmt.where(FlowRow.last_seen >= since)
    rows: Any = db.execute(stmt)
    if not sqlite:
        return [Flow(*r) for r in rows]
    # Flows stored from one report share their times: each text is parsed once.
    times: dict[str, datetime] = {}

    def parse(text: str) -> datetime:
        t = times.get(text)
        if t is None:
            t = times[text] = datetime.fromisoformat(text).replace(tzinfo=UTC)
        return t

    return [Flow(k, s, d, p, v, rid, rn, c, parse(f), parse(la), w, wid, m)
            for k, s, d, p, v, rid, rn, c, f, la, w, wid, m in rows]


