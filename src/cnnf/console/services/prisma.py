"""The original product's Compute API for the network firewall, over our store:
its policy document (read and replaced whole) and its audit records (field
names, filters, paging, CSV). No HTTP types here; the router is
:mod:`cnnf.console.api.prisma`."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, func, or_, select
from sqlalchemy.orm import InstrumentedAttribute, Session

from cnnf.console.services import formats
from cnnf.console.services.policy import PolicyService
from cnnf.console.services.records import audit_csv_lines
from cnnf.console.store.models import AuditRow
from cnnf.errors import PolicyValidationError

# The one network firewall audit type the original documents: a connection that
# raised an audit (alerted or blocked).
AUDIT_TYPE = "unexpectedConnection"


@dataclass(frozen=True)
class NetworkAuditFilter:
    """The original's filters: each list is an OR of patterns (``*`` a wildcard)."""

    kind: str  # "container" or "host"
    since: datetime | None = None  # ``from``: at or after
    until: datetime | None = None  # ``to``: at or before
    src_images: tuple[str, ...] = ()
    dst_images: tuple[str, ...] = ()
    src_hosts: tuple[str, ...] = ()
    dst_hosts: tuple[str, ...] = ()
    rule_names: tuple[str, ...] = ()
    block: bool | None = None


def _like(column: InstrumentedAttribute[str], pattern: str) -> ColumnElement[bool]:
    if "*" not in pattern:
        return column == pattern
    escaped = pattern.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return column.like(escaped.replace("*", "%"), escape="\\")


def _any(column: InstrumentedAttribute[str], patterns: Sequence[str]) -> ColumnElement[bool]:
    return or_(*(_like(column, p) for p in patterns))


def _where(f: NetworkAuditFilter) -> ColumnElement[bool]:
    # "would" audits (staged, or enforcement off) have no equivalent in the
    # original product: they would read as alerts there, so they are left out.
    where: list[ColumnElement[bool]] = [AuditRow.type == f.kind, AuditRow.would.is_(False)]
    if f.since is not None:
        where.append(AuditRow.time >= f.since)
    if f.until is not None:
        where.append(AuditRow.time <= f.until)
    for column, patterns in ((AuditRow.src_image, f.src_images),
                             (AuditRow.dst_image, f.dst_images),
                             (AuditRow.src_hostname, f.src_hosts),
                             (AuditRow.dst_hostname, f.dst_hosts),
                             (AuditRow.rule_name, f.rule_names)):
        if patterns:
            where.append(_any(column, patterns))
    if f.block is not None:
        where.append(AuditRow.blocked.is_(f.block))
    return and_(*where)


def original_audit(row: AuditRow) -> dict[str, Any]:
    """One audit with the original's field names (ours, which it lacks, after them)."""
    return {
        "_id": str(row.id),
        "time": row.time,
        "type": AUDIT_TYPE,
        "ruleID": row.rule_id or 0,
        "ruleName": row.rule_name,
        "effect": row.effect,
        "block": row.blocked,
        "srcImageName": row.src_image,
        "srcContainerName": row.src_container,
        "srcHostname": row.src_hostname,
        "dstImageName": row.dst_image,
        "dstContainerName": row.dst_container,
        "dstHostname": row.dst_hostname,
        "dstPort": row.port,
        "dstSubnet": row.dst_subnet,
        "dstDomain": row.dst_domain,
        "msg": row.msg,
        "count": row.count,
        "srcNamespace": row.src_namespace,
        "dstNamespace": row.dst_namespace,
        "srcPod": row.src_pod,
        "dstPod": row.dst_pod,
        "srcIP": row.src_address,
        "dstIP": row.dst_address,
    }


@dataclass(frozen=True)
class AuditPage:
    total: int
    items: list[dict[str, Any]]


@dataclass(frozen=True)
class Replaced:
    revision: int
    unmapped: list[str]


class PrismaService:
    """The original API's operations (see the module docstring)."""

    def __init__(self, session: Session, policies: PolicyService) -> None:
        self.session = session
        self.policies = policies

    def policy_document(self) -> tuple[dict[str, Any], list[str]]:
        """The whole policy in the original's document shape, and what it cannot hold."""
        return formats.dump_prisma(self.policies.policy())

    def replace_policy(self, raw: bytes) -> Replaced:
        """Replace the whole policy with an original-format document, or change
        nothing (:class:`PolicyValidationError` naming every problem)."""
        loaded = formats.load_prisma(raw, source="body", whole=True)
        _, errors = self.policies.preview(loaded.policy)
        if errors:
            raise PolicyValidationError(errors, "body")
        stored = self.policies.replace(loaded.policy, action="policy.put.prisma")
        return Replaced(revision=stored.revision, unmapped=loaded.unmapped)

    def audits(self, f: NetworkAuditFilter, limit: int, offset: int) -> AuditPage:
        where = _where(f)
        total = self.session.scalar(select(func.count(AuditRow.id)).where(where)) or 0
        rows = self.session.scalars(
            select(AuditRow).where(where).order_by(AuditRow.time.desc(), AuditRow.id.desc())
            .limit(limit).offset(offset))
        return AuditPage(total=total, items=[original_audit(r) for r in rows])

    def audits_csv(self, f: NetworkAuditFilter, max_rows: int) -> Iterator[str]:
        rows = self.session.scalars(
            select(AuditRow).where(_where(f))
            .order_by(AuditRow.time.desc(), AuditRow.id.desc())
            .limit(max_rows).execution_options(yield_per=1000))
        return audit_csv_lines(rows)
