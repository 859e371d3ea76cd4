"""The Console's Prometheus metrics, served at ``GET /metrics``.

Served by the API listener itself and, like every API route, only with a token
(any role: give Prometheus an auditor's API token as its bearer credential).
One listener keeps TLS and authentication in one place; the figures name hosts
and traffic rates, so they are not public.

- ``cnnf_console_verdicts_total{verdict}``: connections reported by Defenders,
  by verdict (allow, alert, prevent, observed);
- ``cnnf_console_audits_total{blocked,would}``: audit events (folded repeats
  counted); ``would="true"``: "would" audits (nothing enforced);
- ``cnnf_console_ingested_records_total{kind}``: flow and audit records stored
  (its ``rate()`` is the ingestion rate), and
  ``cnnf_console_ingestion_records_per_second``: the same over the last minute;
- ``cnnf_console_report_batches_total{result}``: stored or duplicate batches;
- ``cnnf_console_defender_spool_dropped_total``: records Defenders' spools dropped;
- ``cnnf_console_defenders{status}``: Defenders connected, disconnected, revoked;
- ``cnnf_console_forwarded_audits_total{sink,result}``: audits this process sent
  (``sent``) or tried to send in batches that failed (``failed``: kept, tried again),
  or set aside because the sink refuses them on their own (``parked``: a poison
  record, logged as an error, never sent again; the rest of the outbox goes on);
- ``cnnf_console_forward_backlog_audits{sink}``: audits stored and not yet taken by
  the sink (the durable outbox, the same figure on every replica),
  ``cnnf_console_forward_lag_seconds{sink}``: how long the oldest of them waits,
  ``cnnf_console_forward_oldest_undelivered_timestamp_seconds{sink}``: its time;
- ``cnnf_console_forward_pruned_undelivered_total{sink}``: audits retention pruned
  before the sink took them (logged as errors too);
- ``cnnf_console_change_notices_total{topic}``: policy and inventory changes and
  Defender revocations (``credentials``) this replica heard of from other replicas
  through the change feed (PostgreSQL LISTEN/NOTIFY; its own are not counted);
- ``cnnf_console_long_poll_answer_seconds{topic}``: a histogram of the time from
  this process learning of a policy or inventory change (its own commit, or
  another replica's notice) to each waiting Defender long-poll woken by it
  having written its answer to the connection: the Console's share of
  propagation;
- ``cnnf_console_lease_held{lease}``: 1 in the one replica doing the singleton work
  (forwarding, retention);
- ``cnnf_console_flow_classes_backfilled_total``: flows stored before migration
  0013 given their identity classes in the background by this process, and
  ``cnnf_console_flow_classes_backfill_progress``: the part of them walked (0 to 1;
  1 when done or when there was nothing to do), exported only by the replica
  walking (the one holding the lease: ``cnnf_console_lease_held``);
- ``cnnf_console_policy_revision``, ``cnnf_console_inventory_revision``.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from cnnf.console.services.forwarding import Backlog
from cnnf.console.services.records import AuditRecord
from cnnf.console.services.records import FlowRecord as StoredFlowRecord

RATE_WINDOW = 60.0


class IngestionRate:
    """Records stored per second over the last ``window`` seconds (injected clock)."""

    def __init__(self, window: float = RATE_WINDOW, clock: Callable[[], float] = time.monotonic):
        self.window = window
        self.clock = clock
        self._events: deque[tuple[float, int]] = deque()
        self._lock = threading.Lock()

    def add(self, records: int) -> None:
        with self._lock:
            self._events.append((self.clock(), records))

    def per_second(self) -> float:
        with self._lock:
            now = self.clock()
            while self._events and self._events[0][0] <= now - self.window:
                self._events.popleft()
            return sum(n for _, n in self._events) / self.window


@dataclass(frozen=True)
class LiveFigures:
    """What the scrape reads from the store and the forwarder."""

    defenders: dict[str, int]  # status -> count
    forwarded: list[tuple[str, str, int]]  # (sink, result, audits)
    policy_revision: int
    inventory_revision: int
    backlog: list[Backlog] = field(default_factory=list)
    now: datetime | None = None
    leases: dict[str, bool] = field(default_factory=dict)


class _Live(Collector):
    def __init__(self, read: Callable[[], LiveFigures], rate: IngestionRate) -> None:
        self.read = read
        self.rate = rate

    def collect(self) -> Iterator[Metric]:
        data = self.read()
        defenders = GaugeMetricFamily("cnnf_console_defenders", "Enrolled Defenders by status",
                                      labels=["status"])
        for status in ("connected", "disconnected", "revoked"):
            defenders.add_metric([status], data.defenders.get(status, 0))
        yield defenders
        forwarded = CounterMetricFamily("cnnf_console_forwarded_audits", "Audits forwarded, "
                                        "per sink and result", labels=["sink", "result"])
        for sink, result, count in data.forwarded:
            forwarded.add_metric([sink, result], count)
        yield forwarded
        backlog = GaugeMetricFamily("cnnf_console_forward_backlog_audits", "Audits stored "
                                    "and not yet taken by the sink", labels=["sink"])
        lag = GaugeMetricFamily("cnnf_console_forward_lag_seconds", "How long the oldest "
                                "undelivered audit has waited for the sink", labels=["sink"])
        oldest = GaugeMetricFamily("cnnf_console_forward_oldest_undelivered_timestamp_seconds",
                                   "The time of the oldest audit the sink has not taken",
                                   labels=["sink"])
        pending = {b.sink: b for b in data.backlog}
        for sink in sorted({name for name, _, _ in data.forwarded} | set(pending)):
            b = pending.get(sink)
            backlog.add_metric([sink], b.audits if b else 0)
            waited = (data.now - b.oldest_queued).total_seconds() \
                if b and b.oldest_queued and data.now else 0.0
            lag.add_metric([sink], max(waited, 0.0))
            if b and b.oldest_audit:
                oldest.add_metric([sink], b.oldest_audit.timestamp())
        yield backlog
        yield lag
        yield oldest
        held = GaugeMetricFamily("cnnf_console_lease_held", "1 in the Console process doing "
                                 "the singleton work (forwarding, retention)", labels=["lease"])
        for name, is_held in data.leases.items():
            held.add_metric([name], 1 if is_held else 0)
        yield held
        yield GaugeMetricFamily("cnnf_console_policy_revision", "The policy revision",
                                value=data.policy_revision)
        yield GaugeMetricFamily("cnnf_console_inventory_revision",
                                "The cluster inventory revision", value=data.inventory_revision)
        yield GaugeMetricFamily("cnnf_console_ingestion_records_per_second",
                                "Flow and audit records stored per second over the last minute",
                                value=self.rate.per_second())


class _ClassProgress(Collector):
    def __init__(self, metrics: ConsoleMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        value = self.metrics.class_backfill_progress
        if value is not None:
            yield GaugeMetricFamily(
                "cnnf_console_flow_classes_backfill_progress", "The part of the flows "
                "stored without identity classes that this process has walked giving them "
                "classes (0 to 1; 1: done or nothing to do); only on the replica walking",
                value=value)


class ConsoleMetrics:
    """One registry per Console app (tests build many apps in one process)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.registry = CollectorRegistry()
        self.rate = IngestionRate(clock=clock)
        self.verdicts = Counter("cnnf_console_verdicts", "Connections reported by Defenders, "
                                "by verdict", ["verdict"], registry=self.registry)
        self.audits = Counter("cnnf_console_audits", "Audit events reported by Defenders "
                              "(folded repeats counted); would: what a staged rule or "
                              "enforcement off would have done, nothing enforced",
                              ["blocked", "would"], registry=self.registry)
        self.ingested = Counter("cnnf_console_ingested_records", "Flow and audit records "
                                "stored", ["kind"], registry=self.registry)
        self.batches = Counter("cnnf_console_report_batches", "Report batches received",
                               ["result"], registry=self.registry)
        self.spool_dropped = Counter("cnnf_console_defender_spool_dropped", "Records "
                                     "Defenders' spools dropped when full",
                                     registry=self.registry)
        self.pruned_undelivered = Counter("cnnf_console_forward_pruned_undelivered",
                                          "Audits retention pruned before the sink took "
                                          "them", ["sink"], registry=self.registry)
        self.notices = Counter("cnnf_console_change_notices", "Change notices heard from "
                               "other replicas through the change feed (PostgreSQL), by "
                               "topic", ["topic"],
                               registry=self.registry)
        self.fast = Counter("cnnf_console_link_fast_path", "Defender link requests "
                            "answered by the fast path (before the API's router), by "
                            "request (policy, inventory: long-polls; reports) and status",
                            ["request", "status"], registry=self.registry)
        self.answered = Histogram(
            "cnnf_console_long_poll_answer_seconds", "From this process learning of a "
            "change (its own commit, or another replica's notice) to a waiting Defender "
            "long-poll answering with it, by topic", ["topic"], registry=self.registry,
            buckets=(0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0,
                     10.0))
        self.class_backfilled = Counter(
            "cnnf_console_flow_classes_backfilled", "Flows stored without identity classes "
            "(before migration 0013, or by a previous-version replica) given them by this "
            "process", registry=self.registry)
        #: the walk's progress, exported only while this process walks or has
        #: looked (None: another replica holds the lease, or not looked yet)
        self.class_backfill_progress: float | None = None
        self.registry.register(_ClassProgress(self))
        for verdict in ("allow", "alert", "prevent", "observed"):
            self.verdicts.labels(verdict)
        for blocked, would in (("true", "false"), ("false", "false"), ("false", "true")):
            self.audits.labels(blocked, would)
        for kind in ("flow", "audit"):
            self.ingested.labels(kind)
        for result in ("stored", "duplicate"):
            self.batches.labels(result)
        for request, status in (("policy", "200"), ("policy", "204"), ("inventory", "200"),
                                ("inventory", "204"), ("reports", "200")):
            self.fast.labels(request, status)
        self._live: _Live | None = None

    def live(self, read: Callable[[], LiveFigures]) -> None:
        """Register the scrape-time figures (once)."""
        if self._live is None:
            self._live = _Live(read, self.rate)
            self.registry.register(self._live)

    def batch(self, *, duplicate: bool, flows: Sequence[StoredFlowRecord] = (),
              audits: Sequence[AuditRecord] = (), dropped: int = 0) -> None:
        if duplicate:
            self.batches.labels("duplicate").inc()
            return
        self.batches.labels("stored").inc()
        # Summed here first: one increment per label, not one per record (each is a
        # label lookup and a lock).
        verdicts: dict[str, int] = {}
        for f in flows:
            verdicts[f.verdict] = verdicts.get(f.verdict, 0) + f.count
        for verdict, count in verdicts.items():
            self.verdicts.labels(verdict).inc(count)
        folded: dict[tuple[bool, bool], int] = {}
        for a in audits:
            key = (a.blocked, a.would)
            folded[key] = folded.get(key, 0) + a.count
        for (blocked, would), count in folded.items():
            self.audits.labels("true" if blocked else "false",
                               "true" if would else "false").inc(count)
        self.ingested.labels("flow").inc(len(flows))
        self.ingested.labels("audit").inc(len(audits))
        if dropped > 0:
            self.spool_dropped.inc(dropped)
        self.rate.add(len(flows) + len(audits))

    def render(self) -> bytes:
        return generate_latest(self.registry)
