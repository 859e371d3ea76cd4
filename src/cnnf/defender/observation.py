"""Observed connections (conntrack, an enforcement switch off) on their way to
the recorder: which Defender records each one, and a bounded, fair queue.

Pure: no I/O and no clock; the agent feeds it events from conntrack's reader
threads and takes batches from its main loop.

Each connection is recorded once in the cluster (:meth:`ObservationScope.owner`):

- a SYN some datapath queues is recorded by that verdict loop, not here: one
  from a protected workload (of an enforced kind) by its own node; one to a
  protected workload by the destination's node when the source *as that node
  sees it* is no protected workload. The source it sees is the reply tuple's
  destination: a container masqueraded to its host's address arrives as the
  host, which the destination's node does not queue when hosts are enforced;
- otherwise by the Defender of its source when that is a workload of this
  node (with the source's own identity, not the address it was masqueraded to);
- by the Defender of its destination when the source is no workload any
  Defender knows (an outside client).

Events classified as someone else's are never queued. The queue folds repeats
of one connection (same ends and port, same scope) into one entry with a count,
so a SYN flood at one port is one entry whatever its rate, and counts stay
exact. Distinct entries are bounded per source and in all; when the queue is
full, a newcomer pushes out the newest entry of the largest source (it is
dropped itself only when its own source is the largest), so several flooding
sources cannot shut the others out either, and the drops are counted against
the sources that flooded. Clients no Defender knows are bucketed by source
prefix (/24, /64; at most OUTSIDE_PREFIXES of them, the rest share OUTSIDE),
so one outside flooder does not silence every other outside client. Batches
are taken round robin across sources, so a flooding source cannot push the
others' connections back either.
"""

from __future__ import annotations

import ipaddress
import threading
from collections import OrderedDict, deque
from dataclasses import dataclass, field

from cnnf.defender.datapath.conntrack import ObservedConnection
from cnnf.defender.inventory import Inventory
from cnnf.policy.engine import CompiledPolicy

OUTSIDE = "outside"  # the bucket of outside clients beyond OUTSIDE_PREFIXES
# Clients no Defender knows are bucketed by their /24 (IPv4) or /64 (IPv6), at
# most this many prefixes at a time; the rest share OUTSIDE.
OUTSIDE_PREFIXES = 256
DROPPED_BY_MAX = 1024  # sources remembered in the drop counts (then: OUTSIDE)
# Scopes kept to classify events by the one in force when they happened (the
# reader lags the kernel): at least this many, for this many seconds.
SCOPE_HISTORY = 8
SCOPE_SECONDS = 10.0
SCOPE_MAX = 256  # and never more (containers started and stopped in a loop)


@dataclass(frozen=True, slots=True, eq=False)
class ObservationScope:
    """The address sets as installed, the identities and the policy from
    ``since`` (epoch seconds) on: what an observed connection is classified,
    named and evaluated with."""

    cluster: frozenset[str]  # the datapath's CLUSTER set (protected, enforced kinds)
    inventory: Inventory
    policy: CompiledPolicy
    since: float = 0.0

    def here(self, address: str) -> bool:
        return address in self.inventory.containers or address in self.inventory.node.addresses

    def owner(self, ev: ObservedConnection) -> str | None:
        """The bucket (fairness key) to record ``ev`` under, or None when it is
        not this Defender's to record (another one records it, or a verdict loop
        queued it)."""
        cluster = self.cluster
        if ev.src in cluster:
            return None  # queued by the source's own datapath
        seen = ev.reply_dst or ev.src  # the source the destination's node sees
        if ev.dst in cluster and seen not in cluster:
            return None  # queued by the destination's datapath
        if self.here(ev.src):
            return ev.src
        if self.here(ev.dst) and self.inventory.identity(ev.src) is None:
            return OUTSIDE
        return None  # another node's workload: its Defender records it


@dataclass(slots=True)
class Pending:
    """Connections with the same ends and port, seen under one scope."""

    scope: ObservationScope
    src: str
    dst: str
    port: int
    first: float
    last: float
    count: int = 1


@dataclass(slots=True)
class Offered:
    """What :meth:`ObservationQueue.offer` did with an event."""

    queued: int = 0  # new entries
    folded: int = 0  # repeats added to an entry waiting
    skipped: int = 0  # someone else's to record (never queued)
    dropped: int = 0  # over a bound: lost, counted
    dropped_by: dict[str, int] = field(default_factory=dict)  # bucket -> dropped


def outside_prefix(address: str) -> str:
    """The bucket of an outside client: its /24 (IPv4) or /64 (IPv6)."""
    if ":" not in address:
        head, _, _ = address.rpartition(".")
        return f"{head}.0/24"
    return str(ipaddress.IPv6Network(f"{address}/64", strict=False))


def is_outside(bucket: str) -> bool:
    """Whether a bucket holds outside clients (a prefix or OUTSIDE), not a workload."""
    return bucket == OUTSIDE or "/" in bucket


class ObservationQueue:
    """Thread-safe: ``offer`` from the conntrack readers, ``take`` from the main loop."""

    def __init__(self, max_entries: int, max_per_source: int) -> None:
        self.max_entries = max_entries
        self.max_per_source = max_per_source
        self._lock = threading.Lock()
        self._entries: dict[tuple[int, str, str, int], Pending] = {}
        self._buckets: OrderedDict[str, deque[tuple[int, str, str, int]]] = OrderedDict()
        self._scopes: list[ObservationScope] = []
        self.waiting = 0  # connections waiting (repeats included)
        self._prefixes = 0  # buckets of outside prefixes (at most OUTSIDE_PREFIXES)
        # buckets by their number of entries, and the largest number: the
        # source that makes room is found in O(1) (a flood offers every event)
        self._by_size: dict[int, dict[str, None]] = {}
        self._largest = 0
        self.stats = Offered()

    def set_scope(self, scope: ObservationScope) -> None:
        """The scope from ``scope.since`` on; earlier ones are kept a while for
        events that happened under them and are read late."""
        with self._lock:
            scopes = [s for s in self._scopes if s.since <= scope.since]
            scopes.append(scope)
            cut = scope.since - SCOPE_SECONDS
            while len(scopes) > SCOPE_HISTORY and (scopes[1].since <= cut
                                                   or len(scopes) > SCOPE_MAX):
                scopes.pop(0)
            self._scopes = scopes

    def scope_at(self, when: float) -> ObservationScope | None:
        scopes = self._scopes
        for s in reversed(scopes):
            if s.since <= when:
                return s
        return scopes[0] if scopes else None

    def offer(self, ev: ObservedConnection) -> str | None:
        """Classify ``ev`` with the scope in force when it happened and queue it
        if it is this Defender's to record. Returns the bucket a connection
        was dropped from (this one's, over a bound, or the largest's, pushed
        out to make room for it), else None."""
        with self._lock:
            scope = self.scope_at(ev.time)
            bucket = scope.owner(ev) if scope is not None else None
            stats = self.stats
            if scope is None or bucket is None:
                stats.skipped += 1
                return None
            if bucket == OUTSIDE:
                prefix = outside_prefix(ev.src)
                if prefix in self._buckets or self._prefixes < OUTSIDE_PREFIXES:
                    bucket = prefix
            key = (id(scope), ev.src, ev.dst, ev.dport)
            entry = self._entries.get(key)
            if entry is not None:
                entry.count += 1
                entry.first = min(entry.first, ev.time)
                entry.last = max(entry.last, ev.time)
                stats.folded += 1
                self.waiting += 1
                return None
            keys = self._buckets.get(bucket)
            size = len(keys) if keys is not None else 0
            if size >= self.max_per_source:
                self._count_drop(bucket, 1)
                return bucket
            if len(self._entries) >= self.max_entries:
                # full: the largest source makes room, unless it is this one
                sizes = self._by_size.get(self._largest)
                largest = next(iter(sizes)) if sizes else bucket
                its = self._buckets.get(largest)
                if its is None or len(its) <= size:
                    self._count_drop(bucket, 1)
                    return bucket
                evicted = self._entries.pop(its.pop())
                self._resize(largest, len(its) + 1)
                self.waiting -= evicted.count
                self._count_drop(largest, evicted.count)
                if not its:  # it had one entry (as many sources as room)
                    self._drop_bucket(largest)
                dropped_from: str | None = largest
            else:
                dropped_from = None
            if keys is None:
                keys = self._buckets[bucket] = deque()
                if "/" in bucket:
                    self._prefixes += 1
            keys.append(key)
            self._resize(bucket, size)
            self._entries[key] = Pending(scope, ev.src, ev.dst, ev.dport, ev.time, ev.time)
            stats.queued += 1
            self.waiting += 1
            return dropped_from

    def _count_drop(self, bucket: str, n: int) -> None:
        by = self.stats.dropped_by
        if bucket not in by and len(by) >= DROPPED_BY_MAX and "/" in bucket:
            bucket = OUTSIDE  # spoofed prefixes without end: counted together
        self.stats.dropped += n
        by[bucket] = by.get(bucket, 0) + n

    def _resize(self, bucket: str, was: int) -> None:
        """Move ``bucket`` from size ``was`` to its size now (one more or less)."""
        now = len(self._buckets[bucket])
        by = self._by_size
        if was:
            sizes = by[was]
            del sizes[bucket]
            if not sizes:
                del by[was]
        if now:
            by.setdefault(now, {})[bucket] = None
        if now > self._largest:
            self._largest = now
        elif self._largest not in by:  # the largest shrank by one
            self._largest = self._largest - 1 if by else 0

    def _drop_bucket(self, bucket: str) -> None:
        del self._buckets[bucket]
        if "/" in bucket:
            self._prefixes -= 1

    def take(self, limit: int) -> list[Pending]:
        """Up to ``limit`` entries, one per source in turn (round robin)."""
        out: list[Pending] = []
        with self._lock:
            buckets = self._buckets
            while buckets and len(out) < limit:
                bucket, keys = next(iter(buckets.items()))
                entry = self._entries.pop(keys.popleft())
                self._resize(bucket, len(keys) + 1)
                self.waiting -= entry.count
                out.append(entry)
                if keys:
                    buckets.move_to_end(bucket)
                else:
                    self._drop_bucket(bucket)
        return out

    def top(self, n: int = 5) -> list[tuple[str, int]]:
        """The sources (buckets) that lost the most connections, most first."""
        with self._lock:
            items = list(self.stats.dropped_by.items())
        return sorted(items, key=lambda kv: (-kv[1], kv[0]))[:n]

    def __len__(self) -> int:
        return len(self._entries)
