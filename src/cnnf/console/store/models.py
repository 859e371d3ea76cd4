"""SQLAlchemy 2 models of everything the Console stores.

Policy rows (objects, rules, settings) are only written through
:mod:`cnnf.console.services.policy`, which converts them to and from the one
policy model, :class:`cnnf.model.Policy`. Audits and flows are append/upsert
tables sized for batch inserts from Defenders.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
)
from sqlalchemy.engine.default import DefaultExecutionContext
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from cnnf.policy.observed import identity_class

# Stable constraint names, so migrations can refer to them on every database.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# SQLite only auto-increments an INTEGER PRIMARY KEY.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class UtcDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on every database (SQLite keeps no zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store; pass an aware UTC time")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {datetime: UtcDateTime, dict[str, Any]: JSON, list[Any]: JSON}


class SettingsRow(Base):
    """The single settings row (id 1), holding the policy revision counter."""

    __tablename__ = "settings"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    container_enabled: Mapped[bool] = mapped_column(Boolean, default=False)
    host_enabled: Mapped[bool] = mapped_column(Boolean, default=False)
    default_effect: Mapped[str] = mapped_column(String(16), default="allow")
    block_mode: Mapped[str] = mapped_column(String(16), default="reset")
    # the default effect being tried out ("would" verdicts only); None: none
    staged_default_effect: Mapped[str | None] = mapped_column(String(16), nullable=True)
    revision: Mapped[int] = mapped_column(BigInteger, default=0)
    # every flow with an id up to this was walked by the background walk giving
    # flows their identity classes (cnnf.console.services.classes); migration 0015
    classes_walked_to: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")


class ObjectRow(Base):
    """A network object; ``body`` holds the kind-specific part (selector, cidrs, domains)."""

    __tablename__ = "network_objects"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    kind: Mapped[str] = mapped_column(String(16))
    description: Mapped[str] = mapped_column(Text, default="")
    body: Mapped[dict[str, Any]] = mapped_column(JSON)


class RuleRow(Base):
    """A container or host rule; ``position`` orders the rules of one kind (0 first)."""

    __tablename__ = "rules"
    __table_args__ = (
        UniqueConstraint("kind", "rule_id", name="uq_rules_kind_rule_id"),
        Index("ix_rules_kind_position", "kind", "position"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    rule_id: Mapped[int] = mapped_column(Integer)
    position: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(200))
    src_id: Mapped[int] = mapped_column(
        ForeignKey("network_objects.id", ondelete="RESTRICT"), index=True
    )
    dst_id: Mapped[int] = mapped_column(
        ForeignKey("network_objects.id", ondelete="RESTRICT"), index=True
    )
    ports: Mapped[list[Any]] = mapped_column(JSON)
    effect: Mapped[str] = mapped_column(String(16))
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    staged: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    notes: Mapped[str] = mapped_column(Text, default="")
    owner: Mapped[str] = mapped_column(String(200), default="")
    modified: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)

    src: Mapped[ObjectRow] = relationship(foreign_keys=[src_id], lazy="joined")
    dst: Mapped[ObjectRow] = relationship(foreign_keys=[dst_id], lazy="joined")


class ChangeRow(Base):
    """One policy change: who, when, what (before and after, as JSON)."""

    __tablename__ = "changes"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    at: Mapped[datetime] = mapped_column(UtcDateTime, index=True)
    actor: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(64))
    resource: Mapped[str] = mapped_column(String(300))
    revision: Mapped[int] = mapped_column(BigInteger)
    before: Mapped[Any | None] = mapped_column(JSON, nullable=True)
    after: Mapped[Any | None] = mapped_column(JSON, nullable=True)


class UserRow(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    password_hash: Mapped[str] = mapped_column(String(200))
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    created: Mapped[datetime] = mapped_column(UtcDateTime)


class TokenRow(Base):
    """A session token (from login) or an API token (for automation); only the hash is kept."""

    __tablename__ = "tokens"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # "session" | "api"
    name: Mapped[str] = mapped_column(String(200), default="")
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created: Mapped[datetime] = mapped_column(UtcDateTime)
    expires: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    last_used: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)

    user: Mapped[UserRow] = relationship(lazy="joined")


class AuditRow(Base):
    """One audit event (alerted or blocked connection); repeats folded into ``count``."""

    __tablename__ = "audits"
    __table_args__ = (
        Index("ix_audits_src_image", "src_image"),
        Index("ix_audits_dst_image", "dst_image"),
        Index("ix_audits_rule_name", "rule_name"),
        # SQLite: ids never repeat, even after retention pruned every audit (0010);
        # receivers drop forwarded repeats by id.
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    time: Mapped[datetime] = mapped_column(UtcDateTime, index=True)
    type: Mapped[str] = mapped_column(String(16))  # "container" | "host"
    rule_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    rule_name: Mapped[str] = mapped_column(String(200), default="")
    blocked: Mapped[bool] = mapped_column(Boolean)
    effect: Mapped[str] = mapped_column(String(16))
    src_image: Mapped[str] = mapped_column(String(300), default="")
    src_container: Mapped[str] = mapped_column(String(300), default="")
    src_namespace: Mapped[str] = mapped_column(String(200), default="")
    src_hostname: Mapped[str] = mapped_column(String(300), default="")
    src_address: Mapped[str] = mapped_column(String(64), default="")
    dst_image: Mapped[str] = mapped_column(String(300), default="")
    dst_container: Mapped[str] = mapped_column(String(300), default="")
    dst_namespace: Mapped[str] = mapped_column(String(200), default="")
    dst_hostname: Mapped[str] = mapped_column(String(300), default="")
    dst_address: Mapped[str] = mapped_column(String(64), default="")
    port: Mapped[int] = mapped_column(Integer)
    dst_subnet: Mapped[str] = mapped_column(String(64), default="")
    dst_domain: Mapped[str] = mapped_column(String(300), default="")
    msg: Mapped[str] = mapped_column(Text, default="")
    count: Mapped[int] = mapped_column(Integer, default=1)
    revision: Mapped[int] = mapped_column(BigInteger, default=0)
    defender: Mapped[str] = mapped_column(String(200), default="")
    # Kubernetes pod names (empty for other containers); added by migration 0004,
    # which fills existing rows with "".
    src_pod: Mapped[str] = mapped_column(String(300), default="", server_default="")
    dst_pod: Mapped[str] = mapped_column(String(300), default="", server_default="")
    # what a staged rule or default, or the policy with enforcement off, would
    # have done (nothing was enforced; blocked is False)
    would: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())


def _class_of(column: str) -> Callable[[DefaultExecutionContext], str]:
    """A flow's identity class from its identity text, for every insert that
    does not give it (the Console's own ingestion computes it per batch)."""
    def default(context: DefaultExecutionContext) -> str:
        parameters = context.get_current_parameters()  # type: ignore[no-untyped-call]
        return identity_class(parameters.get(column) or "")
    return default


class FlowRow(Base):
    """Observed connections aggregated by (src, dst, port, verdict, rule, identities).

    ``src``/``dst`` are identity keys such as ``image:shop/api``,
    ``host:node-1`` or ``addr:10.0.0.5``; ``rule_id`` 0 means no rule matched.
    ``src_identity``/``dst_identity`` are the identities recorded with the flow
    (canonical JSON, :mod:`cnnf.policy.observed`), what learning and simulation
    evaluate; ``ident`` is their digest, part of the key so that one image in
    two namespaces stays two flows. Added by migration 0006: flows stored
    before it have empty identities (read back from the key).

    ``src_class``/``dst_class``: each identity's class, its digest without the
    container name (:func:`~cnnf.policy.observed.identity_class`), what
    learning and simulating group the window's flows by. No index: one on the
    grouping's columns made SQLite's grouping twice as fast and its ingestion
    of new flows half as fast (measured). Added by migration 0013 (empty for
    the rows stored before it: the Console gives them their classes in the
    background, :mod:`cnnf.console.services.classes`).
    """

    __tablename__ = "flows"
    __table_args__ = (
        UniqueConstraint("kind", "src", "dst", "port", "verdict", "rule_id", "mode", "would",
                         "would_rule_id", "ident", name="uq_flows_key"),
        Index("ix_flows_last_seen", "last_seen"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))  # "container" | "host"
    src: Mapped[str] = mapped_column(String(300))
    dst: Mapped[str] = mapped_column(String(300))
    port: Mapped[int] = mapped_column(Integer)
    verdict: Mapped[str] = mapped_column(String(16))  # effect, or "observed" (no rule)
    rule_id: Mapped[int] = mapped_column(Integer, default=0)
    rule_name: Mapped[str] = mapped_column(String(200), default="")
    # "enforced", or "observed": seen with enforcement off (nothing enforced)
    mode: Mapped[str] = mapped_column(String(16), default="enforced", server_default="enforced")
    # what the policy with everything staged in force would decide, where that
    # differs from ``verdict`` ("" otherwise): allow, alert, prevent or observed
    would: Mapped[str] = mapped_column(String(16), default="", server_default="")
    would_rule_id: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    would_rule_name: Mapped[str] = mapped_column(String(200), default="", server_default="")
    count: Mapped[int] = mapped_column(BigInteger, default=0)
    first_seen: Mapped[datetime] = mapped_column(UtcDateTime)
    last_seen: Mapped[datetime] = mapped_column(UtcDateTime)
    src_identity: Mapped[str] = mapped_column(Text, default="", server_default="")
    dst_identity: Mapped[str] = mapped_column(Text, default="", server_default="")
    ident: Mapped[str] = mapped_column(String(40), default="", server_default="")
    src_class: Mapped[str] = mapped_column(String(32), default=_class_of("src_identity"),
                                           server_default="")
    dst_class: Mapped[str] = mapped_column(String(32), default=_class_of("dst_identity"),
                                           server_default="")


class ProposalRow(Base):
    """A learnt policy proposal: the window and scope it was learnt from, the
    policy revision it was learnt against, and the proposal itself (JSON: the
    resulting policy document, its rules with evidence, the diff)."""

    __tablename__ = "proposals"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    created: Mapped[datetime] = mapped_column(UtcDateTime, index=True)
    actor: Mapped[str] = mapped_column(String(200))
    since: Mapped[datetime] = mapped_column(UtcDateTime)
    until: Mapped[datetime] = mapped_column(UtcDateTime)
    base_revision: Mapped[int] = mapped_column(BigInteger)
    applied_revision: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    body: Mapped[dict[str, Any]] = mapped_column(JSON)


class OverlayRow(Base):
    """The data overlay of one image or host: vulnerability counts by severity and
    compliance counts from its latest Trivy report (replaced whole on each report)."""

    __tablename__ = "overlays"
    __table_args__ = (UniqueConstraint("kind", "name", name="uq_overlays_kind_name"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))  # "image" | "host"
    name: Mapped[str] = mapped_column(String(300))
    critical: Mapped[int] = mapped_column(Integer, default=0)
    high: Mapped[int] = mapped_column(Integer, default=0)
    medium: Mapped[int] = mapped_column(Integer, default=0)
    low: Mapped[int] = mapped_column(Integer, default=0)
    unknown: Mapped[int] = mapped_column(Integer, default=0)
    compliance_passed: Mapped[int] = mapped_column(Integer, default=0)
    compliance_failed: Mapped[int] = mapped_column(Integer, default=0)
    source: Mapped[str] = mapped_column(String(300), default="")
    updated: Mapped[datetime] = mapped_column(UtcDateTime)
    # The most severe findings (bounded), for the overlay panel.
    top: Mapped[list[Any]] = mapped_column(JSON)


class EnrollmentTokenRow(Base):
    """A secret a Defender trades for its own credential (reusable until it expires);
    only the hash is kept."""

    __tablename__ = "enrollment_tokens"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created: Mapped[datetime] = mapped_column(UtcDateTime)
    expires: Mapped[datetime] = mapped_column(UtcDateTime)
    created_by: Mapped[str] = mapped_column(String(200), default="")
    uses: Mapped[int] = mapped_column(Integer, default=0)


class DefenderRow(Base):
    """An enrolled Defender: its credential (hash), when it was last seen, and its
    latest inventory report (an ``InventoryReport`` as JSON)."""

    __tablename__ = "defenders"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    defender_id: Mapped[str] = mapped_column(String(64), unique=True)
    hostname: Mapped[str] = mapped_column(String(300))
    version: Mapped[str] = mapped_column(String(64), default="")
    credential_hash: Mapped[str] = mapped_column(String(64), unique=True)
    enrolled: Mapped[datetime] = mapped_column(UtcDateTime)
    last_seen: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)
    protected: Mapped[int] = mapped_column(Integer, default=0)
    inventory: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    # "Datapath up" as the Defender last reported it (None: never reported) and
    # what was wrong (0009).
    datapath_up: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    datapath_problems: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)


class InventoryStateRow(Base):
    """The single row (id 1) holding the cluster inventory revision."""

    __tablename__ = "inventory_state"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    revision: Mapped[int] = mapped_column(BigInteger, default=0)


class ReportBatchRow(Base):
    """A report batch already stored, so a redelivered one is acknowledged, not
    stored twice. Ids are per Defender (two Defenders may send one id)."""

    __tablename__ = "report_batches"

    batch_id: Mapped[str] = mapped_column(String(100), primary_key=True)
    defender_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    received: Mapped[datetime] = mapped_column(UtcDateTime, index=True)
    flows: Mapped[int] = mapped_column(Integer, default=0)
    audits: Mapped[int] = mapped_column(Integer, default=0)
    dropped: Mapped[int] = mapped_column(Integer, default=0)


class OutboxRow(Base):
    """An audit not yet delivered to one forwarding sink (syslog or webhook).

    Written in the transaction that stores the audit, deleted once the sink took
    it: a sink that is down, or a Console killed mid-batch, loses nothing. The
    audit's id travels with it, so a receiver can drop the repeats that
    at-least-once delivery allows."""

    __tablename__ = "forward_outbox"

    sink: Mapped[str] = mapped_column(String(200), primary_key=True)
    audit_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("audits.id", ondelete="CASCADE"), primary_key=True, index=True)
    queued: Mapped[datetime] = mapped_column(UtcDateTime)
    # Set when the sink rejected this audit on its own (a poison record): it is
    # not sent again, and the rest of the sink's outbox goes on (0010).
    parked: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    # Set when an operator requeued it (0012): refused again, it is parked again
    # at once, even when the sink took nothing else of the batch (requeued audits
    # are the oldest, so they would otherwise hold up the sink for good).
    requeued: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)


class SinkRow(Base):
    """A forwarding sink of the fleet (0010): every Console replica queues each
    audit for every row here and the one forwarding delivers to each. Written at
    start by each Console from its ``--syslog`` and ``--webhook`` options."""

    __tablename__ = "forward_sinks"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    url: Mapped[str] = mapped_column(Text)
    updated: Mapped[datetime] = mapped_column(UtcDateTime)


class LeaseRow(Base):
    """Work that one Console process does at a time (forwarding, retention): held
    by ``holder`` until ``expires`` unless renewed, then anyone may take it."""

    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(200))
    expires: Mapped[datetime] = mapped_column(UtcDateTime)
