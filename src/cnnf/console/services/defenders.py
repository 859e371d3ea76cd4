"""Defenders: enrollment, credentials, last seen, inventories, report batches.

Defender credentials are their own kind of secret (``cnnfd_...``), kept as a
SHA-256 hash like user tokens but in their own table: they authenticate only
the Defender endpoints, and user tokens never authenticate there.

Report batches are stored idempotently: the batch id, the flows (merged into the
aggregated flow table) and the audits (through the records service) are written
in one transaction, so a batch redelivered after a lost answer or a Console
restart is acknowledged as a duplicate and never stored twice.

:class:`Notifier` wakes the long-polls of this process when the policy or the
cluster inventory changes; the long-polls also read the revision from the store
now and then, for changes made by another Console process.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import logging
import secrets
import threading
import time
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal, cast

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import Insert, Table, bindparam, case, delete, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from cnnf.console.security import token_hash
from cnnf.console.services import commit
from cnnf.console.services.errors import InvalidInput, NotFound, Unauthorized
from cnnf.console.services.policy import Now, utcnow
from cnnf.console.services.records import AuditRecord, AuditService, FlowService
from cnnf.console.services.records import FlowRecord as StoredFlowRecord
from cnnf.console.store.models import (
    DefenderRow,
    EnrollmentTokenRow,
    InventoryStateRow,
    ReportBatchRow,
    SettingsRow,
    SinkRow,
)
from cnnf.errors import FieldError
from cnnf.model.records import (
    AuditEvent,
    ClusterInventory,
    EndpointInfo,
    FlowRecord,
    InventoryReport,
    ReportBatch,
)
from cnnf.model.rule import JSON_INTEGER, Effect, PolicyModel
from cnnf.policy.observed import recorded_text

log = logging.getLogger("cnnf.console.defenders")
ENROLLMENT_PREFIX = "cnnfe_"
CREDENTIAL_PREFIX = "cnnfd_"
# A Defender calls at least every long-poll wait (25 s by default) and its
# long-polls touch last_seen on return, so 30 s without a call means it is gone.
CONNECTED_WITHIN = timedelta(seconds=30)
# Writing last_seen on every call would make every long-poll a write.
LAST_SEEN_GRANULARITY = timedelta(seconds=5)
# A Defender whose last_seen is younger than this is still connected well after a
# batched write of it (about a second): its call is written with others. Older
# (coming back, or revived from stale), it is written at once.
WRITE_NOW_AFTER = CONNECTED_WITHIN - timedelta(seconds=3)
# A Defender silent this long is gone (host down, Defender removed): its workloads
# leave the cluster inventory until it calls again, so their addresses can be reused.
STALE_AFTER = timedelta(minutes=5)
DEFAULT_ENROLLMENT_HOURS = 24
_TEXT = 300  # the store's text columns


class EnrollmentTokenRequest(PolicyModel):
    expires_in_hours: Annotated[int, Field(ge=1, le=24 * 365), JSON_INTEGER] = (
        DEFAULT_ENROLLMENT_HOURS)


class EnrollmentToken(PolicyModel):
    """A new enrollment token: shown once, only its hash is kept."""

    token: str
    expires: datetime


class _Wire(BaseModel):
    """Bodies of the Defender link: snake_case, as the Defender sends them."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class EnrollRequest(_Wire):
    enrollment_token: Annotated[str, Field(min_length=1, max_length=200)]
    hostname: Annotated[str, Field(min_length=1, max_length=_TEXT)]
    version: Annotated[str, Field(max_length=64)] = ""


class Enrolled(_Wire):
    defender_id: str
    credential: str


class DefenderInfo(PolicyModel):
    """One Defender as ``GET /api/v1/defenders`` lists it."""

    id: str
    hostname: str
    version: str
    status: Literal["connected", "disconnected", "revoked"]
    enrolled: datetime
    last_seen: datetime | None
    protected: int  # workload addresses the Defender protects
    workloads: int  # containers it reported
    # Its datapath (queues bound, chains and sets in place) as it last reported:
    # None when it never did (not yet checked, or an older Defender).
    datapath_up: bool | None = None
    datapath_problems: list[str] = Field(default_factory=list)


@dataclass(frozen=True, slots=True)
class DefenderPrincipal:
    """Who is calling a Defender endpoint: one enrolled Defender."""

    defender_id: str
    hostname: str


@dataclass(frozen=True)
class StoredBatch:
    duplicate: bool
    flows: list[StoredFlowRecord]
    audits: list[AuditRecord]
    dropped: int = 0


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _status(row: DefenderRow, now: datetime) -> Literal["connected", "disconnected", "revoked"]:
    if row.revoked:
        return "revoked"
    if row.last_seen is not None and now - _aware(row.last_seen) < CONNECTED_WITHIN:
        return "connected"
    return "disconnected"


def _info(row: DefenderRow, now: datetime) -> DefenderInfo:
    workloads = len((row.inventory or {}).get("containers", []))
    return DefenderInfo(id=row.defender_id, hostname=row.hostname, version=row.version,
                        status=_status(row, now), enrolled=row.enrolled,
                        last_seen=row.last_seen, protected=row.protected, workloads=workloads,
                        datapath_up=row.datapath_up,
                        datapath_problems=list(row.datapath_problems or []))


# --- the wire records -> the store's records (one mapping each) ------------------------


def _cut(text: str | None, size: int = _TEXT) -> str:
    return (text or "")[:size]


def _time(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def endpoint_key(ep: EndpointInfo) -> str:
    """The flow table's identity key of one end (what Radar draws as a node)."""
    if ep.kind == "container" and ep.image:
        return _cut(f"image:{ep.image}")
    if ep.kind == "host" and ep.host:
        return _cut(f"host:{ep.host}")
    if ep.domain:
        return _cut(f"dns:{ep.domain}")
    return _cut(f"addr:{ep.address or '?'}")


_Ends = dict[tuple[object, ...], tuple[str, str, str]]
_END_FIELDS = tuple(EndpointInfo.model_fields)


def _end(ep: EndpointInfo, memo: _Ends | None) -> tuple[str, str, str]:
    """An end's flow key and its identity text without and with the address,
    reused for the same end within a batch (its flows mostly share their ends:
    the texts were a third of a batch's mapping)."""
    # Every field of the end, whatever fields it gains later (a dict as its items).
    key = tuple(tuple(v.items()) if isinstance(v, dict) else v
                for v in map(ep.__dict__.__getitem__, _END_FIELDS))
    found = memo.get(key) if memo is not None else None
    if found is None:
        found = (endpoint_key(ep), recorded_text(ep, address=False), recorded_text(ep))
        if memo is not None:
            memo[key] = found
    return found


def flow_record(flow: FlowRecord, memo: _Ends | None = None) -> StoredFlowRecord:
    """A Defender's flow as the aggregated flow table keeps it. No rule matched:
    ``observed`` (grey in Radar) when the default let it through, else the
    default's effect. ``memo``: the ends mapped before in this batch."""
    if flow.rule_kind is not None:
        kind = flow.rule_kind.value
    else:
        kind = "container" if "container" in (flow.src.kind, flow.dst.kind) else "host"
    verdict = flow.effect.value if flow.matched or flow.effect.value != "allow" else "observed"
    would: Literal["", "allow", "alert", "prevent", "observed"] = ""
    if flow.would_effect is not None:
        # the would verdict in the verdict column's terms: a default allow is observed
        would = ("observed" if flow.would_effect is Effect.ALLOW and flow.would_rule_id is None
                 else flow.would_effect.value)
    src, dst = _end(flow.src, memo), _end(flow.dst, memo)
    return StoredFlowRecord(
        kind=kind, src=src[0], dst=dst[0], port=flow.port,
        verdict=verdict, rule_id=flow.rule_id or 0, rule_name=_cut(flow.rule_name, 200),
        mode=flow.mode, would=would, would_rule_id=flow.would_rule_id or 0,
        would_rule_name=_cut(flow.would_rule_name, 200),
        count=min(max(flow.count, 1), 2**31 - 1),
        first_seen=_time(flow.first_seen), last_seen=_time(flow.last_seen),
        src_identity=src[1], dst_identity=dst[2],
    )


def audit_record(event: AuditEvent, defender: str) -> AuditRecord:
    """A Defender's audit event as the audit table keeps it. ``defender`` is the
    host name the credential was enrolled under: the reporter named in the body
    is the sender's word and could name another host."""
    src, dst = event.src, event.dst
    return AuditRecord(
        time=_time(event.time), type=event.type, rule_id=event.rule_id,
        rule_name=_cut(event.rule_name, 200), blocked=event.blocked, effect=event.effect,
        src_image=_cut(src.image), src_container=_cut(src.container),
        src_namespace=_cut(src.namespace, 200), src_hostname=_cut(src.host),
        src_address=_cut(src.address, 64),
        dst_image=_cut(dst.image), dst_container=_cut(dst.container),
        dst_namespace=_cut(dst.namespace, 200), dst_hostname=_cut(dst.host),
        dst_address=_cut(dst.address, 64),
        port=event.port, dst_subnet=_cut(event.dst_subnet, 64), dst_domain=_cut(event.dst_domain),
        msg=event.message, count=min(max(event.count, 1), 2**31 - 1),
        revision=max(event.revision, 0), defender=_cut(defender),
        src_pod=_cut(src.pod), dst_pod=_cut(dst.pod), would=event.would,
    )


def _field_errors(where: str, exc: Exception) -> list[FieldError]:
    if isinstance(exc, ValidationError):
        return [FieldError(f"{where}." + ".".join(str(p) for p in err["loc"]), err["msg"])
                for err in exc.errors()]
    return [FieldError(where, f"bad time: {exc}")]


def _mapped(batch: ReportBatch, defender: str) -> tuple[list[StoredFlowRecord], list[AuditRecord]]:
    """Map a batch, naming every record the store cannot hold (nothing is stored then)."""
    errors: list[FieldError] = []
    flows: list[StoredFlowRecord] = []
    audits: list[AuditRecord] = []
    ends: _Ends = {}
    for i, flow in enumerate(batch.flows):
        try:
            flows.append(flow_record(flow, ends))
        except (ValidationError, OverflowError, ValueError, OSError) as exc:
            errors += _field_errors(f"flows[{i}]", exc)
    for i, event in enumerate(batch.audits):
        try:
            audits.append(audit_record(event, defender))
        except (ValidationError, OverflowError, ValueError, OSError) as exc:
            errors += _field_errors(f"audits[{i}]", exc)
    if errors:
        raise InvalidInput(errors)
    return flows, audits


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


@functools.cache
def _claim(dialect: str) -> Insert:
    """A batch id's claim (ids are per Defender: the table's key is the batch id
    and the Defender's): INSERT .. SELECT .. ON CONFLICT DO NOTHING RETURNING,
    only from a Defender the store has not revoked (the caller's credential may
    have been taken from a process's cache that has not heard of the revocation
    yet: a revoked Defender stores nothing). Built once per dialect, its values
    bound at each call: built per batch, the statement and its cache key were
    about a millisecond of CPU a batch."""
    table = cast(Table, ReportBatchRow.__table__)
    c = table.c
    insert_ = postgresql.insert(table) if dialect == "postgresql" else sqlite.insert(table)
    claimant = select(
        bindparam("batch_id", type_=c.batch_id.type), DefenderRow.defender_id,
        bindparam("received", type_=c.received.type),
        bindparam("flows", type_=c.flows.type), bindparam("audits", type_=c.audits.type),
        bindparam("dropped", type_=c.dropped.type),
    ).where(DefenderRow.defender_id == bindparam("defender_id"),
            DefenderRow.revoked.is_(False))
    return insert_.from_select(
        [c.batch_id, c.defender_id, c.received, c.flows, c.audits, c.dropped],
        claimant).on_conflict_do_nothing().returning(c.batch_id)


def revocations(session: Session) -> int:
    """How many Defenders are revoked: it moves with every revocation (a Defender
    is never un-revoked nor removed), so a cache of verified credentials is good
    while it stays the same."""
    return session.scalar(select(func.count()).select_from(DefenderRow)
                          .where(DefenderRow.revoked.is_(True))) or 0


def revoked_ids(session: Session) -> frozenset[str]:
    """The ids of the revoked Defenders."""
    return frozenset(session.scalars(select(DefenderRow.defender_id)
                                     .where(DefenderRow.revoked.is_(True))))


@dataclass(slots=True)
class _Verified:
    who: DefenderPrincipal
    seen: datetime  # its last_seen as this process last wrote it or queued it


class CredentialCache:
    """Defender credentials this process verified, by their hash, so that a
    Defender's calls (a long-poll every few seconds, a thousand of them at once
    after a policy change) are not each a store read.

    An entry is good while the number of revoked Defenders (``epoch``, read from
    the store by the caller: at once after a revocation through this process or
    a change notice from another, else at most every store-poll interval) is the
    one it was verified under; any revocation empties the cache, so a revoked
    credential is refused on its next call. An entry whose Defender was not seen
    for :data:`WRITE_NOW_AFTER` is not used: that call goes to the store, which
    writes last_seen at once and brings a stale Defender's workloads back.
    Only credentials the store accepted are kept (a flood of bad ones adds
    nothing), and only their hashes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._verified: dict[str, _Verified] = {}
        self._epoch: int | None = None
        self.hits = 0
        self.misses = 0

    def lookup(self, digest: str, epoch: int, now: datetime,
               later: Callable[[str], None]) -> DefenderPrincipal | None:
        """The Defender of the credential hashed ``digest`` if verified under
        ``epoch``; ``later(id)`` queues its last_seen for the next batched write
        when the last one is older than :data:`LAST_SEEN_GRANULARITY`."""
        with self._lock:
            if self._epoch is not None and epoch < self._epoch:
                # An older read of the count that finished late (the count only
                # grows): its caller goes to the store; the cache stays as it is.
                self.misses += 1
                return None
            if epoch != self._epoch:
                self._verified.clear()
                self._epoch = epoch
            entry = self._verified.get(digest)
            if entry is None or now - entry.seen >= WRITE_NOW_AFTER:
                self.misses += 1
                return None
            self.hits += 1
            if now - entry.seen >= LAST_SEEN_GRANULARITY:
                entry.seen = now
                queue = True
            else:
                queue = False
        if queue:
            later(entry.who.defender_id)
        return entry.who

    def remember(self, digest: str, who: DefenderPrincipal, epoch: int,
                 now: datetime) -> None:
        """The store accepted ``digest`` for ``who`` (read after ``epoch`` was);
        kept only while ``epoch`` is the newest count this cache was given."""
        with self._lock:
            if epoch == self._epoch:
                self._verified[digest] = _Verified(who, now)

    def prune(self, now: datetime) -> int:
        """Forget Defenders not seen for :data:`WRITE_NOW_AFTER` (their next call
        goes to the store anyway); how many."""
        with self._lock:
            gone = [k for k, v in self._verified.items() if now - v.seen >= WRITE_NOW_AFTER]
            for key in gone:
                del self._verified[key]
        return len(gone)

    def __len__(self) -> int:
        return len(self._verified)


def policy_revision(session: Session) -> int:
    """The policy revision, read cheaply (one indexed row)."""
    return session.scalar(select(SettingsRow.revision).where(SettingsRow.id == 1)) or 0


class DefenderService:
    def __init__(self, session: Session, now: Now = utcnow) -> None:
        self.session = session
        self.now = now

    def _commit(self) -> None:
        commit(self.session)

    # --- enrollment ---------------------------------------------------------------

    def create_enrollment_token(self, actor: str, hours: int = DEFAULT_ENROLLMENT_HOURS,
                                ) -> EnrollmentToken:
        secret = ENROLLMENT_PREFIX + secrets.token_urlsafe(32)
        now = self.now()
        row = EnrollmentTokenRow(token_hash=token_hash(secret), created=now,
                                 expires=now + timedelta(hours=hours), created_by=actor[:200],
                                 uses=0)
        self.session.add(row)
        self._commit()
        return EnrollmentToken(token=secret, expires=row.expires)

    def enroll(self, request: EnrollRequest) -> Enrolled:
        token = self.session.scalar(select(EnrollmentTokenRow).where(
            EnrollmentTokenRow.token_hash == token_hash(request.enrollment_token)))
        if token is None or _aware(token.expires) <= self.now():
            raise Unauthorized("invalid or expired enrollment token")
        credential = CREDENTIAL_PREFIX + secrets.token_urlsafe(32)
        defender_id = secrets.token_hex(8)
        token.uses += 1
        self.session.add(DefenderRow(
            defender_id=defender_id, hostname=request.hostname, version=request.version,
            credential_hash=token_hash(credential), enrolled=self.now(), last_seen=self.now(),
            revoked=False, protected=0, inventory=None))
        self._commit()
        return Enrolled(defender_id=defender_id, credential=credential)

    # --- credentials --------------------------------------------------------------

    def authenticate(self, secret: str, later: Callable[[str], None] | None = None,
                     ) -> tuple[DefenderPrincipal, bool]:
        """The Defender holding ``secret`` (401 when unknown or revoked), and whether
        it came back from stale; touches last_seen. ``later``: a Defender that is
        not stale has its last_seen written later, in a batch (``later(id)``), not
        by a write of its own on each call."""
        row = self.session.scalar(
            select(DefenderRow).where(DefenderRow.credential_hash == token_hash(secret)))
        if row is None or row.revoked:
            raise Unauthorized("invalid or revoked Defender credential")
        who = DefenderPrincipal(defender_id=row.defender_id, hostname=row.hostname)
        if later is not None and row.last_seen is not None:
            age = self.now() - _aware(row.last_seen)
            if age < LAST_SEEN_GRANULARITY:
                return who, False
            if age < WRITE_NOW_AFTER:  # still connected: no status changes with this
                later(row.defender_id)
                return who, False
        return who, self._touch(row)

    def _touch(self, row: DefenderRow) -> bool:
        """Update last_seen; True when a stale Defender came back (its workloads
        rejoin the cluster inventory, under a new revision)."""
        now = self.now()
        revived = False
        if row.last_seen is None or now - _aware(row.last_seen) >= LAST_SEEN_GRANULARITY:
            revived = bool(row.inventory) and self._stale(row, now)
            row.last_seen = now
            if revived:
                self._bump_inventory()
            self._commit()
        return revived

    def seen(self, defender_ids: Collection[str]) -> None:
        """These Defenders called just now (their long-polls returned): last_seen,
        in one statement (they were authenticated, and revived if stale, when the
        long-poll began)."""
        self.session.execute(update(DefenderRow).where(
            DefenderRow.defender_id.in_(sorted(defender_ids)),
            DefenderRow.revoked.is_(False)).values(last_seen=self.now()))
        self._commit()

    @staticmethod
    def _stale(row: DefenderRow, now: datetime) -> bool:
        return row.last_seen is not None and now - _aware(row.last_seen) >= STALE_AFTER

    def touch(self, defender_id: str) -> bool:
        row = self.session.scalar(select(DefenderRow).where(
            DefenderRow.defender_id == defender_id))
        return row is not None and not row.revoked and self._touch(row)

    def stale(self) -> frozenset[str]:
        """Ids of Defenders whose workloads are left out for being silent too long."""
        now = self.now()
        rows = self.session.scalars(select(DefenderRow).where(DefenderRow.revoked.is_(False)))
        return frozenset(r.defender_id for r in rows if r.inventory and self._stale(r, now))

    def note_stale(self, previous: frozenset[str] | None) -> tuple[frozenset[str], bool]:
        """The stale Defenders now; when Defenders went stale since ``previous``
        (None: unknown, e.g. at start) the cluster inventory revision moves. True then."""
        current = self.stale()
        changed = bool(current - previous) if previous is not None else bool(current)
        if changed:
            self._bump_inventory()
            self._commit()
        return current, changed

    # --- management ---------------------------------------------------------------

    def list_defenders(self) -> list[DefenderInfo]:
        now = self.now()
        rows = self.session.scalars(select(DefenderRow).order_by(DefenderRow.hostname,
                                                                  DefenderRow.id))
        return [_info(r, now) for r in rows]

    def status_counts(self) -> dict[str, int]:
        """Enrolled Defenders by status, counted by the store (no row loaded)."""
        cutoff = self.now() - CONNECTED_WITHIN
        status = case((DefenderRow.revoked.is_(True), "revoked"),
                      (DefenderRow.last_seen > cutoff, "connected"), else_="disconnected")
        rows = self.session.execute(select(status, func.count()).group_by(status)).all()
        return {str(name): int(count) for name, count in rows}

    def connected(self) -> int:
        return sum(1 for d in self.list_defenders() if d.status == "connected")

    def revoke(self, defender_id: str) -> None:
        """Refuse the Defender's credential from now on; its inventory leaves the
        cluster inventory (the revision moves when it had one)."""
        row = self.session.scalar(select(DefenderRow).where(
            DefenderRow.defender_id == defender_id))
        if row is None:
            raise NotFound(f"no Defender with id {defender_id!r}")
        if not row.revoked:
            row.revoked = True
            if row.inventory:
                self._bump_inventory()
        self._commit()

    # --- inventory ----------------------------------------------------------------

    def _inventory_state(self) -> InventoryStateRow:
        row = self.session.get(InventoryStateRow, 1)
        if row is None:  # the migration creates it
            row = InventoryStateRow(id=1, revision=0)
            self.session.add(row)
            self.session.flush()
        return row

    def _bump_inventory(self) -> None:
        self._inventory_state()
        self.session.execute(update(InventoryStateRow).where(InventoryStateRow.id == 1)
                             .values(revision=InventoryStateRow.revision + 1))

    def inventory_revision(self) -> int:
        return self.session.scalar(
            select(InventoryStateRow.revision).where(InventoryStateRow.id == 1)) or 0

    def put_inventory(self, defender_id: str, report: InventoryReport) -> bool:
        """Replace the Defender's inventory; True (and a new cluster revision) if it changed.
        Every address must be an IP address: the report goes to every Defender."""
        errors = [FieldError(f"host.addresses[{i}]", f"{a!r} is not an IP address")
                  for i, a in enumerate(report.host.addresses) if not _is_ip(a)]
        errors += [FieldError(f"containers[{i}].address", f"{c.address!r} is not an IP address")
                   for i, c in enumerate(report.containers) if not _is_ip(c.address)]
        if errors:
            raise InvalidInput(errors)
        row = self.session.scalar(select(DefenderRow).where(
            DefenderRow.defender_id == defender_id))
        if row is None or row.revoked:
            raise Unauthorized("invalid or revoked Defender credential")
        # The datapath's state is the Defender's own, not inventory: a change of
        # it does not change the cluster inventory every Defender is sent.
        data = report.model_dump(mode="json", exclude={"datapath"})
        changed = row.inventory != data
        row.protected = min(max(report.protected, 0), 2**31 - 1)
        if report.datapath is not None:
            row.datapath_up = report.datapath.up
            row.datapath_problems = list(report.datapath.problems)
        if report.version:
            row.version = report.version[:64]
        row.last_seen = self.now()
        if changed:
            row.inventory = data
            self._bump_inventory()
        self._commit()
        return changed

    def cluster_inventory(self) -> ClusterInventory:
        """Every Defender's latest report merged; revoked and stale Defenders left
        out, and of Defenders enrolled under the same host name only the one seen last."""
        revision = self.inventory_revision()
        now = self.now()
        rows = self.session.scalars(select(DefenderRow).where(DefenderRow.revoked.is_(False)))
        latest: dict[str, DefenderRow] = {}
        for row in rows:
            if not row.inventory or self._stale(row, now):  # none reported yet (JSON null)
                continue
            have = latest.get(row.hostname)
            seen = _aware(row.last_seen) if row.last_seen else datetime.min.replace(tzinfo=UTC)
            if have is None or (have.last_seen and seen > _aware(have.last_seen)):
                latest[row.hostname] = row
        reports = [InventoryReport.model_validate(latest[h].inventory) for h in sorted(latest)]
        return ClusterInventory(revision=revision, hosts=[r.host for r in reports],
                                containers=[c for r in reports for c in r.containers])

    # --- reports ------------------------------------------------------------------

    def store_batch(self, principal: DefenderPrincipal, batch: ReportBatch,
                    forward_to: Sequence[str] | None = None) -> StoredBatch:
        """Store a batch once: its id, flows and audits (queued for the forwarding
        sinks ``forward_to``; None: the fleet's sinks in the store, read in this
        transaction) in one transaction. A Defender the store has revoked stores
        nothing (401), whatever credential cache let its call through."""
        if not 1 <= len(batch.batch_id) <= 100:
            raise InvalidInput([FieldError("batch_id", "must be 1 to 100 characters")])
        flows, audits = _mapped(batch, principal.hostname)
        claim = _claim(self.session.get_bind().dialect.name)
        try:
            # The batch id first, in one statement: taken already (stored before, or
            # by a parallel delivery now committing), it is a duplicate.
            claimed = self.session.scalar(claim, {
                "batch_id": batch.batch_id, "defender_id": principal.defender_id,
                "received": self.now(), "flows": len(flows), "audits": len(audits),
                "dropped": min(max(batch.dropped, 0), 2**31 - 1)})
            if claimed is None:
                active = self._active(principal.defender_id)
                self.session.rollback()
                if not active:
                    raise Unauthorized("invalid or revoked Defender credential")
                return StoredBatch(duplicate=True, flows=[], audits=[])
            if forward_to is None:
                forward_to = list(self.session.scalars(select(SinkRow.name))) if audits else []
            FlowService(self.session).record_many(flows, commit=False)
            AuditService(self.session).insert_many(audits, commit=False, forward_to=forward_to,
                                                   queued=self.now())
            self.session.commit()
        except IntegrityError:
            # The same batch stored at this moment by a parallel delivery.
            self.session.rollback()
            if self.session.get(ReportBatchRow, (batch.batch_id,
                                                 principal.defender_id)) is not None:
                return StoredBatch(duplicate=True, flows=[], audits=[])
            raise
        except BaseException:
            self.session.rollback()
            raise
        return StoredBatch(duplicate=False, flows=flows, audits=audits, dropped=batch.dropped)

    def _active(self, defender_id: str) -> bool:
        """Whether the Defender is enrolled and not revoked (one row, in the
        current transaction)."""
        return self.session.scalar(select(DefenderRow.id).where(
            DefenderRow.defender_id == defender_id, DefenderRow.revoked.is_(False))) is not None

    def prune_batches(self, cutoff: datetime) -> None:
        """Forget batch ids received before ``cutoff`` (redeliveries come much sooner)."""
        try:
            self.session.execute(delete(ReportBatchRow).where(ReportBatchRow.received < cutoff))
            self.session.commit()
        except BaseException:
            self.session.rollback()
            raise


class Notifier:
    """Wakes coroutines waiting (on any event loop) when :meth:`notify` is called
    from any thread. ``generation`` read before checking the store closes the gap
    between the check and the wait: a change in between wakes at once.

    ``before_wake``, when set, runs on each waiting loop before its waiters are
    woken: the long-polls' shared store read. The read starts at once, and each
    waiting long-poll resumes once, with the new value already at hand (woken
    first, a thousand long-polls each resumed only to await the read, and the
    read itself waited behind all of them in the loop's queue)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = set()
        self.generation = 0
        self.before_wake: Callable[[], Awaitable[object]] | None = None
        self.notified_at = float("-inf")  # time.monotonic() of the last notify

    def notify(self) -> None:
        with self._lock:
            self.generation += 1
            self.notified_at = time.monotonic()
            waiters = list(self._waiters)
        # One call into each event loop wakes all of its waiters: a thousand
        # long-polls are one wakeup of the loop per change, not a thousand.
        by_loop: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = {}
        for loop, future in waiters:
            by_loop.setdefault(loop, []).append(future)
        for loop, futures in by_loop.items():
            with contextlib.suppress(RuntimeError):  # that loop is closed
                loop.call_soon_threadsafe(_wake, futures, self.before_wake)

    async def wait(self, generation: int, timeout: float,
                   future: asyncio.Future[None] | None = None) -> bool:
        """Wait up to ``timeout`` s for a notification after ``generation``; True if one
        came (or ``future``, given by the caller, got a result from elsewhere)."""
        loop = asyncio.get_running_loop()
        if future is None:
            future = loop.create_future()
        entry = (loop, future)
        with self._lock:
            if self.generation != generation:
                return True
            self._waiters.add(entry)
        try:
            await asyncio.wait_for(future, timeout)
            return True
        except TimeoutError:
            return False
        finally:
            with self._lock:
                self._waiters.discard(entry)


_PREPARING: set[asyncio.Task[None]] = set()  # before_wake tasks running (kept referenced)


def _wake(futures: list[asyncio.Future[None]],
          before: Callable[[], Awaitable[object]] | None = None) -> None:
    """On the waiters' loop: wake them, after ``before`` when given."""
    if before is None:
        _set(futures)
        return
    task = asyncio.ensure_future(_prepared(futures, before))
    _PREPARING.add(task)
    task.add_done_callback(_PREPARING.discard)


async def _prepared(futures: list[asyncio.Future[None]],
                    before: Callable[[], Awaitable[object]]) -> None:
    try:
        await before()
    except Exception as exc:
        # A failed read wakes them all the same: each reads again, and answers
        # with that read's error.
        log.warning("Defender link: the store read before waking %d long-polls failed: %s",
                    len(futures), exc)
    finally:
        _set(futures)


def _set(futures: list[asyncio.Future[None]]) -> None:
    for future in futures:
        if not future.done():
            future.set_result(None)

