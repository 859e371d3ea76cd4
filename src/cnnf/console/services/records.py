"""Audits and flows: batch insert, filtered queries with paging, CSV export."""

from __future__ import annotations

import csv
import functools
import hashlib
import io
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any, Generic, Literal, TypeVar, cast

from pydantic import Field, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError
from sqlalchemy import (
    ColumnElement,
    Insert,
    Select,
    Table,
    and_,
    case,
    delete,
    func,
    insert,
    or_,
    select,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import CursorResult, Result
from sqlalchemy.orm import InstrumentedAttribute, Session

from cnnf.console.store.models import AuditRow, FlowRow, OutboxRow
from cnnf.model import Effect
from cnnf.model.records import AuditType
from cnnf.model.rule import PolicyModel
from cnnf.policy.observed import identity_class

# The original product's audit export columns, in its order, then ours at the end
# (so that a reader of the original's files finds every column where it was): the
# Kubernetes namespace and pod of each end, empty for other containers.
CSV_COLUMNS = (
    "Time", "Type", "RuleName", "Block", "SrcImageName", "SrcContainerName", "DstImageName",
    "DstContainerName", "Port", "DstSubnet", "DstDomain", "SrcHostname", "DstHostname", "Msg",
    "Count", "SrcNamespace", "DstNamespace", "SrcPod", "DstPod", "Would",
)
Port = Annotated[int, Field(ge=1, le=65535)]
Int32 = Annotated[int, Field(ge=0, le=2**31 - 1)]  # what the store's INTEGER columns hold
Text = Annotated[str, Field(max_length=300)]


class AuditRecord(PolicyModel):
    """One audit event, as Defenders report it and the API returns it."""

    time: datetime
    type: AuditType = AuditType.CONTAINER
    rule_id: Int32 | None = None
    rule_name: Annotated[Text, Field(description=(
        "the rule's name; for an overload audit (no rule), what dropped the "
        "source's SYNs or packets: admission limit, admission limit (tightened), "
        "verdict loop, admission limit and verdict loop, or anti-spoofing (packets "
        "with a forged source address); empty from earlier Defenders: the "
        "admission limit"))] = ""
    blocked: bool
    effect: Effect
    src_image: Text = ""
    src_container: Text = ""
    src_namespace: Text = ""
    src_pod: Annotated[Text, Field(description=(
        "the source's Kubernetes pod (in srcNamespace); empty for other containers"))] = ""
    src_hostname: Text = ""
    src_address: Text = ""
    dst_image: Text = ""
    dst_container: Text = ""
    dst_namespace: Text = ""
    dst_pod: Annotated[Text, Field(description=(
        "the destination's Kubernetes pod (in dstNamespace); empty for other containers"))] = ""
    dst_hostname: Text = ""
    dst_address: Text = ""
    port: Annotated[int, Field(ge=0, le=65535, description=(
        "the destination port; 0 only for an overload audit (a source's SYNs "
        "dropped by the admission limit or the verdict loop, or its packets with a "
        "forged source address dropped by anti-spoofing, whatever their port; "
        "ruleName says which)"))]
    dst_subnet: Text = ""
    dst_domain: Text = ""
    msg: str = ""
    count: Annotated[int, Field(ge=1, le=2**31 - 1, description=(
        "repeats folded into this event; for an overload audit, the SYNs dropped"))] = 1
    revision: Annotated[int, Field(ge=0, le=2**63 - 1)] = 0
    defender: Text = ""
    would: Annotated[bool, Field(description=(
        "a \"would\" audit: what a staged rule or the staged default effect, or the "
        "policy while enforcement is off, would have done; nothing was enforced "
        "(blocked is false, effect is the effect that would have applied)"))] = False

    @field_validator("port")
    @classmethod
    def _port_zero_is_overload(cls, port: int, info: ValidationInfo) -> int:
        # An overload audit names no port; every other audit is about one connection.
        if port == 0 and info.data.get("type") is not AuditType.OVERLOAD:
            raise PydanticCustomError(
                "greater_than_equal",
                "Input should be greater than or equal to 1 (port 0 only for type overload)")
        return port


class StoredAudit(AuditRecord):
    id: int


class FlowRecord(PolicyModel):
    """Connections from ``src`` to ``dst`` on ``port`` with one verdict, aggregated."""

    kind: Annotated[str, Field(pattern="^(container|host)$")] = "container"
    src: Annotated[str, Field(min_length=1, max_length=300)]
    dst: Annotated[str, Field(min_length=1, max_length=300)]
    port: Port
    verdict: Annotated[str, Field(pattern="^(allow|alert|prevent|observed)$", description=(
        "what happened: allowed, alerted or prevented by rule ruleId, or observed "
        "(no rule matched and the default effect allowed it; or, with enforcement "
        "off, seen and not allowed by a rule: then ``would`` says what the policy "
        "would have done)"))]
    rule_id: Int32 = 0
    rule_name: Text = ""
    mode: Annotated[Literal["enforced", "observed"], Field(description=(
        "enforced: the Defender decided the connection; observed: seen with "
        "enforcement off for its kind, nothing enforced (wouldRuleId, would: what "
        "the policy decides)"))] = "enforced"
    would: Annotated[Literal["", "allow", "alert", "prevent", "observed"], Field(description=(
        "what the policy with every staged rule and the staged default effect in force, "
        "and enforcement on, decides where that differs from verdict (a \"would\" "
        "verdict, not enforced); empty when it does not differ"))] = ""
    would_rule_id: Annotated[Int32, Field(description=(
        "the rule that decides the would verdict; 0: none matched (the default effect)"
    ))] = 0
    would_rule_name: Text = ""
    count: Annotated[int, Field(ge=1, le=2**31 - 1)] = 1
    first_seen: datetime
    last_seen: datetime
    src_identity: Annotated[str, Field(max_length=4000, description=(
        "the source's identity as recorded (canonical JSON: image, name, labels, "
        "namespace, cluster, host; empty for flows stored before identities were kept)"))] = ""
    dst_identity: Annotated[str, Field(max_length=4000, description=(
        "the destination's identity as recorded, with its address and DNS name"))] = ""


def flow_ident(src_identity: str, dst_identity: str) -> str:
    """The digest of a flow's two identities, part of the flow key ("" for none)."""
    if not src_identity and not dst_identity:
        return ""
    return hashlib.sha1(f"{src_identity}\n{dst_identity}".encode(), usedforsecurity=False
                        ).hexdigest()


class StoredFlow(FlowRecord):
    id: int


@dataclass(frozen=True)
class AuditFilter:
    since: datetime | None = None
    until: datetime | None = None
    src_image: str | None = None
    dst_image: str | None = None
    host: str | None = None  # source or destination host
    blocked: bool | None = None
    rule: str | None = None  # rule name
    type: str | None = None  # container, host or overload
    namespace: str | None = None  # source or destination namespace
    pod: str | None = None  # source or destination pod
    would: bool | None = None  # "would" audits only, or none of them


@dataclass(frozen=True)
class FlowFilter:
    since: datetime | None = None  # last seen at or after
    until: datetime | None = None  # first seen before
    src: str | None = None
    dst: str | None = None
    port: int | None = None
    verdict: str | None = None
    rule: str | None = None
    kind: str | None = None
    would: str | None = None  # a would verdict; "any": flows with one
    mode: str | None = None


T = TypeVar("T")


@dataclass(frozen=True)
class Page(Generic[T]):
    total: int
    items: list[T]


def _like(column: InstrumentedAttribute[str], pattern: str) -> ColumnElement[bool]:
    """``*`` in a filter is a wildcard; everything else is literal."""
    if "*" not in pattern:
        return column == pattern
    escaped = pattern.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return column.like(escaped.replace("*", "%"), escape="\\")


def _audit_where(f: AuditFilter) -> list[ColumnElement[bool]]:
    where: list[ColumnElement[bool]] = []
    if f.since is not None:
        where.append(AuditRow.time >= f.since)
    if f.until is not None:
        where.append(AuditRow.time < f.until)
    if f.src_image:
        where.append(_like(AuditRow.src_image, f.src_image))
    if f.dst_image:
        where.append(_like(AuditRow.dst_image, f.dst_image))
    if f.host:
        where.append(or_(_like(AuditRow.src_hostname, f.host),
                         _like(AuditRow.dst_hostname, f.host)))
    if f.blocked is not None:
        where.append(AuditRow.blocked.is_(f.blocked))
    if f.rule:
        where.append(_like(AuditRow.rule_name, f.rule))
    if f.type:
        where.append(AuditRow.type == f.type)
    if f.namespace:
        where.append(or_(_like(AuditRow.src_namespace, f.namespace),
                         _like(AuditRow.dst_namespace, f.namespace)))
    if f.pod:
        where.append(or_(_like(AuditRow.src_pod, f.pod), _like(AuditRow.dst_pod, f.pod)))
    if f.would is not None:
        where.append(AuditRow.would.is_(f.would))
    return where


def _audit_columns(record: AuditRecord) -> dict[str, Any]:
    data = record.model_dump(by_alias=False)
    data["effect"] = record.effect.value
    data["type"] = record.type.value
    return data


def stored_audit(row: AuditRow) -> StoredAudit:
    data = {c: getattr(row, c) for c in StoredAudit.model_fields}
    return StoredAudit.model_validate(data)


class AuditService:
    def __init__(self, session: Session) -> None:
        self.session = session

    def insert_many(self, records: Sequence[AuditRecord], *, commit: bool = True,
                    forward_to: Sequence[str] = (), queued: datetime | None = None) -> int:
        """Insert a batch in one transaction (one executemany); ``commit=False``
        leaves the commit to a caller that stores more in the same transaction.
        ``forward_to`` names the forwarding sinks to queue each audit for, in the
        same transaction (the outbox; see cnnf.console.services.forwarding)."""
        if not records:
            return 0
        try:
            rows = [_audit_columns(r) for r in records]
            # Core inserts of the tables (one executemany each), not the ORM's
            # bulk path: no per-row ORM bookkeeping on the ingestion path.
            table = cast(Table, AuditRow.__table__)
            if not forward_to:
                self.session.execute(insert(table), rows)
            else:
                ids = self.session.scalars(
                    insert(table).returning(table.c.id, sort_by_parameter_order=True),
                    rows).all()
                at = queued or datetime.now(UTC)
                self.session.execute(insert(cast(Table, OutboxRow.__table__)), [
                    {"sink": sink, "audit_id": i, "queued": at}
                    for i in ids for sink in forward_to])
            if commit:
                self.session.commit()
        except BaseException:
            self.session.rollback()
            raise
        return len(records)

    def _select(self, f: AuditFilter) -> Select[AuditRow]:
        return select(AuditRow).where(and_(True, *_audit_where(f)))

    def query(self, f: AuditFilter, limit: int, offset: int) -> Page[StoredAudit]:
        where = _audit_where(f)
        total = self.session.scalar(select(func.count(AuditRow.id)).where(and_(True, *where)))
        rows = self.session.scalars(
            self._select(f).order_by(AuditRow.time.desc(), AuditRow.id.desc())
            .limit(limit).offset(offset)
        )
        return Page(total=total or 0, items=[stored_audit(r) for r in rows])

    def csv_lines(self, f: AuditFilter, max_rows: int) -> Iterator[str]:
        """The CSV export, streamed line by line (header first)."""
        rows = self.session.scalars(
            self._select(f).order_by(AuditRow.time.desc(), AuditRow.id.desc())
            .limit(max_rows).execution_options(yield_per=1000)
        )
        return audit_csv_lines(rows)


def audit_csv_lines(rows: Iterable[AuditRow]) -> Iterator[str]:
    """Audit rows as CSV lines with :data:`CSV_COLUMNS` (header first)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)

    def line(values: Iterable[Any]) -> str:
        buffer.seek(0)
        buffer.truncate()
        writer.writerow(values)
        return buffer.getvalue()

    yield line(CSV_COLUMNS)
    for r in rows:
        # An overload audit has no port (0 on the API): an empty cell, not a port 0.
        port = "" if r.type == AuditType.OVERLOAD and r.port == 0 else r.port
        yield line((
            r.time.isoformat(), r.type, r.rule_name, "true" if r.blocked else "false",
            r.src_image, r.src_container, r.dst_image, r.dst_container, port,
            r.dst_subnet, r.dst_domain, r.src_hostname, r.dst_hostname, r.msg, r.count,
            r.src_namespace, r.dst_namespace, r.src_pod, r.dst_pod,
            "true" if r.would else "false",
        ))


_FLOW_KEY = ("kind", "src", "dst", "port", "verdict", "rule_id", "mode", "would",
             "would_rule_id", "ident")


@functools.cache
def _flow_upsert(dialect: str) -> Insert:
    """The flows' upsert (a Core statement: no ORM bookkeeping per row), built once
    per dialect: built for every batch, it and its cache key cost about a
    millisecond of the ingestion path's CPU per batch."""
    table = cast(Table, FlowRow.__table__)
    insert_ = postgresql.insert(table) if dialect == "postgresql" else sqlite.insert(table)
    excluded, c = insert_.excluded, table.c
    return insert_.on_conflict_do_update(
        index_elements=list(_FLOW_KEY),
        set_={
            "count": c.count + excluded.count,
            "rule_name": excluded.rule_name,
            "would_rule_name": excluded.would_rule_name,
            "first_seen": case((excluded.first_seen < c.first_seen,
                                excluded.first_seen), else_=c.first_seen),
            "last_seen": case((excluded.last_seen > c.last_seen,
                               excluded.last_seen), else_=c.last_seen),
        },
    )


def _flow_where(f: FlowFilter) -> list[ColumnElement[bool]]:
    where: list[ColumnElement[bool]] = []
    if f.since is not None:
        where.append(FlowRow.last_seen >= f.since)
    if f.until is not None:
        where.append(FlowRow.first_seen < f.until)
    if f.src:
        where.append(_like(FlowRow.src, f.src))
    if f.dst:
        where.append(_like(FlowRow.dst, f.dst))
    if f.port is not None:
        where.append(FlowRow.port == f.port)
    if f.verdict:
        where.append(FlowRow.verdict == f.verdict)
    if f.rule:
        where.append(_like(FlowRow.rule_name, f.rule))
    if f.kind:
        where.append(FlowRow.kind == f.kind)
    if f.would == "any":
        where.append(FlowRow.would != "")
    elif f.would:
        where.append(FlowRow.would == f.would)
    if f.mode:
        where.append(FlowRow.mode == f.mode)
    return where


#: Identity texts repeat from batch to batch (the same workloads): each one's
#: class (:func:`identity_class`) is computed once, the most recently used
#: kept for the next batches (at most 16 MB of the longest texts a Defender
#: may send, a few hundred bytes each as a rule).
cached_identity_class = functools.lru_cache(maxsize=4096)(identity_class)


class FlowService:
    def __init__(self, session: Session) -> None:
        self.session = session

    def record_many(self, records: Sequence[FlowRecord], *, commit: bool = True) -> int:
        """Fold a batch into the aggregate rows (upsert: counts add up, the seen
        window widens). Returns the number of distinct keys touched. ``commit=False``
        leaves the commit to the caller (see :meth:`AuditService.insert_many`)."""
        merged: dict[tuple[Any, ...], dict[str, Any]] = {}
        for record in records:
            data = record.model_dump(by_alias=False)
            data["ident"] = flow_ident(record.src_identity, record.dst_identity)
            data["src_class"] = cached_identity_class(record.src_identity)
            data["dst_class"] = cached_identity_class(record.dst_identity)
            key = tuple(data[k] for k in _FLOW_KEY)
            have = merged.get(key)
            if have is None:
                merged[key] = data
            else:
                have["count"] += data["count"]
                have["first_seen"] = min(have["first_seen"], data["first_seen"])
                have["last_seen"] = max(have["last_seen"], data["last_seen"])
                have["rule_name"] = data["rule_name"] or have["rule_name"]
                have["would_rule_name"] = data["would_rule_name"] or have["would_rule_name"]
        if not merged:
            return 0
        stmt = _flow_upsert(self.session.get_bind().dialect.name)
        try:
            self.session.execute(stmt, list(merged.values()))
            if commit:
                self.session.commit()
        except BaseException:
            self.session.rollback()
            raise
        return len(merged)

    def query(self, f: FlowFilter, limit: int, offset: int) -> Page[StoredFlow]:
        where = and_(True, *_flow_where(f))
        total = self.session.scalar(select(func.count(FlowRow.id)).where(where))
        rows = self.session.scalars(
            select(FlowRow).where(where).order_by(FlowRow.last_seen.desc(), FlowRow.id.desc())
            .limit(limit).offset(offset)
        )
        items = [
            StoredFlow.model_validate({c: getattr(r, c) for c in StoredFlow.model_fields})
            for r in rows
        ]
        return Page(total=total or 0, items=items)


@dataclass(frozen=True)
class Pruned:
    audits: int
    flows: int
    # Deliveries to forwarding sinks given up with their audits (sink -> audits).
    undelivered: dict[str, int] = field(default_factory=dict)


def _rowcount(result: Result[Any]) -> int:
    count = result.rowcount if isinstance(result, CursorResult) else 0
    return max(count, 0)


def prune(session: Session, cutoff: datetime) -> Pruned:
    """Delete audits from before ``cutoff`` and flows last seen before it, in one
    transaction; the outbox rows of the audits pruned go with them, counted."""
    try:
        old = select(AuditRow.id).where(AuditRow.time < cutoff)
        undelivered: dict[str, int] = {}
        for sink, count in session.execute(
                select(OutboxRow.sink, func.count()).where(OutboxRow.audit_id.in_(old))
                .group_by(OutboxRow.sink)):
            undelivered[sink] = count
        if undelivered:
            session.execute(delete(OutboxRow).where(OutboxRow.audit_id.in_(old)))
        audits = _rowcount(session.execute(delete(AuditRow).where(AuditRow.time < cutoff)))
        flows = _rowcount(session.execute(delete(FlowRow).where(FlowRow.last_seen < cutoff)))
        session.commit()
    except BaseException:
        session.rollback()
        raise
    return Pruned(audits=audits, flows=flows, undelivered=undelivered)
