"""Audits (query, CSV download) and flows (aggregated connections)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse

from cnnf.console.api.deps import Limit, Offset, Reader, SessionDep, StateDep, Timestamp
from cnnf.console.services.records import (
    AuditFilter,
    AuditService,
    FlowFilter,
    FlowService,
    StoredAudit,
    StoredFlow,
)
from cnnf.model.records import AuditType
from cnnf.model.rule import PolicyModel

router = APIRouter(tags=["audits", "flows"])
Since = Annotated[Timestamp | None, Query(description="at or after (ISO 8601)")]
Until = Annotated[Timestamp | None, Query(description="before (ISO 8601)")]
Pattern = Annotated[str | None, Query(max_length=300, description="exact, or * as wildcard")]
EitherEnd = Annotated[str | None, Query(
    max_length=300, description="the source's or the destination's: exact, or * as wildcard")]
Would = Annotated[bool | None, Query(description=(
    "true: only \"would\" audits (staged, or enforcement off; nothing enforced); "
    "false: none of them"))]


class AuditPage(PolicyModel):
    total: int
    limit: int
    offset: int
    items: list[StoredAudit]


class FlowPage(PolicyModel):
    total: int
    limit: int
    offset: int
    items: list[StoredFlow]


@router.get("/audits", response_model=AuditPage)
def list_audits(
    *,
    db: SessionDep,
    since: Since = None, until: Until = None,
    src_image: Pattern = None, dst_image: Pattern = None, host: Pattern = None,
    blocked: bool | None = None, rule: Pattern = None,
    type: Annotated[AuditType | None, Query()] = None,
    namespace: EitherEnd = None, pod: EitherEnd = None,
    would: Would = None,
    limit: Limit = 100, offset: Offset = 0,
    _: Reader,
) -> AuditPage:
    """Audit events, newest first, filtered and paged."""
    f = AuditFilter(since=since, until=until, src_image=src_image, dst_image=dst_image,
                    host=host, blocked=blocked, rule=rule, type=type and type.value,
                    namespace=namespace, pod=pod, would=would)
    page = AuditService(db).query(f, limit, offset)
    return AuditPage(total=page.total, limit=limit, offset=offset, items=page.items)


@router.get("/audits/csv", response_class=StreamingResponse)
def audits_csv(
    *,
    db: SessionDep, console: StateDep,
    since: Since = None, until: Until = None,
    src_image: Pattern = None, dst_image: Pattern = None, host: Pattern = None,
    blocked: bool | None = None, rule: Pattern = None,
    type: Annotated[AuditType | None, Query()] = None,
    namespace: EitherEnd = None, pod: EitherEnd = None,
    would: Would = None,
    _: Reader,
) -> StreamingResponse:
    """The audits as CSV, with the original product's export columns."""
    f = AuditFilter(since=since, until=until, src_image=src_image, dst_image=dst_image,
                    host=host, blocked=blocked, rule=rule, type=type and type.value,
                    namespace=namespace, pod=pod, would=would)
    # Materialise before the session closes; bounded by csv_max_rows.
    lines = list(AuditService(db).csv_lines(f, console.config.csv_max_rows))
    return StreamingResponse(
        iter(lines), media_type="text/csv",
        headers={"Content-Disposition": 'attachment; filename="cnnf-audits.csv"'},
    )


@router.get("/flows", response_model=FlowPage)
def list_flows(
    *,
    db: SessionDep,
    since: Since = None, until: Until = None,
    src: Pattern = None, dst: Pattern = None,
    port: Annotated[int | None, Query(ge=1, le=65535)] = None,
    verdict: Annotated[Literal["allow", "alert", "prevent", "observed"] | None, Query()] = None,
    rule: Pattern = None,
    kind: Annotated[Literal["container", "host"] | None, Query()] = None,
    would: Annotated[Literal["any", "allow", "alert", "prevent", "observed"] | None, Query(
        description="flows with this would verdict (any: with one)")] = None,
    mode: Annotated[Literal["enforced", "observed"] | None, Query(
        description="enforced, or observed with enforcement off")] = None,
    limit: Limit = 100, offset: Offset = 0,
    _: Reader,
) -> FlowPage:
    """Aggregated connections seen in the window, most recent first."""
    f = FlowFilter(since=since, until=until, src=src, dst=dst, port=port, verdict=verdict,
                   rule=rule, kind=kind, would=would, mode=mode)
    page = FlowService(db).query(f, limit, offset)
    return FlowPage(total=page.total, limit=limit, offset=offset, items=page.items)
