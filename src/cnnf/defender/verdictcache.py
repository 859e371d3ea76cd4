"""The kernel fast path at run time: a :class:`FastPathTable` (which triples
are cached, pure) and the backend's fast-path sets (the kernel), kept in step.

The caller serialises every method but :meth:`VerdictCache.read` with one lock
(the Agent's), the same lock under which it broadcasts changes to the verdict
workers, so an invalidation, its kernel swap and its broadcast are one step
for the offers. Counts are not recorded here: every counted repeat is queued
with the context it belongs to (the inventory and policy in force when it was
counted, so repeats of a stopped container are not credited to the one that
reused its address), and the Agent's main loop records them, as the only
writer of its Recorder.
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from collections.abc import Iterable

import structlog

from cnnf.defender.datapath import FASTPATH_GRACE, DatapathError, FastVerdict, FirewallBackend
from cnnf.defender.fastpath import Cached, FastPathTable, Key

log = structlog.get_logger(__name__)

# Entries past their TTL are removed in batches, at most this often (their
# kernel timeout is FASTPATH_GRACE longer, so a late removal is harmless).
EXPIRE_EVERY = 10.0


class VerdictCache:
    def __init__(self, table: FastPathTable, backend: FirewallBackend) -> None:
        self.table = table
        self.backend = backend
        self.hits = dict.fromkeys(FastVerdict, 0)
        self.generation = 0  # bumped by every rebuild: a reading from before is stale
        self.dirty = False  # the kernel may hold entries the table does not: rebuild
        self.counted: deque[tuple[Cached, int, object]] = deque()
        self._unsettled: list[tuple[Cached, object]] = []  # removed, last counts not read
        self._next_expiry = 0.0

    def __len__(self) -> int:
        return len(self.table)

    @property
    def epoch(self) -> int:
        return self.table.epoch

    # -- changes (lock held) ------------------------------------------------------------

    def invalidate_all(self, context: object) -> int:
        """Nothing decided before now may answer (a policy change); the kernel's
        sets are swapped empty before this returns. The new epoch."""
        epoch, removed = self.table.invalidate_all()
        self._rebuild(removed, context, force=True)
        return epoch

    def invalidate(self, addresses: Iterable[str], context: object) -> int:
        """Nothing decided before now about ``addresses`` may answer (their
        identity or names changed); their entries leave the kernel before this
        returns. The new epoch."""
        epoch, removed = self.table.invalidate(addresses)
        self._rebuild(removed, context)
        return epoch

    def offer(self, offers: list[tuple[FastVerdict, Key, object, int, float | None]],
              now: float) -> None:
        """Cache decided triples (verdict, key, record, epoch, expiry cap) that no
        change since their decision touched."""
        new = [c for fv, key, rec, epoch, until in offers
               if (c := self.table.offer(fv, key, rec, epoch, now, until=until)) is not None]
        if not new:
            return
        try:
            self.backend.fastpath_add([c.entry for c in new], self.table.ttl + FASTPATH_GRACE)
        except DatapathError as exc:
            # A restore stops at its first error: some may be in the kernel. The
            # next rebuild leaves only what the table holds.
            log.error("fast path: cached verdicts not added", error=str(exc), entries=len(new))
            self.table.discard(c.key for c in new)
            self.dirty = True
            self._rebuild([], None)

    def expire(self, now: float, context: object) -> None:
        if now >= self._next_expiry or self.dirty:
            self._next_expiry = now + EXPIRE_EVERY
            self._rebuild(self.table.expire(now), context)

    def _rebuild(self, removed: list[Cached], context: object, force: bool = False) -> None:
        """Swap in sets holding what the table keeps (counters from zero), and
        queue the last counts of everything swapped out."""
        self._unsettled += [(c, context) for c in removed]
        if not (self._unsettled or self.dirty or force):
            return
        try:
            final = self.backend.fastpath_replace(
                self.table.kernel_timeouts(time.monotonic(), FASTPATH_GRACE))
        except DatapathError as exc:
            # Stale entries may still be there: the kernel cache goes off (the
            # heartbeat pauses while dirty) until a rebuild succeeds, every poll.
            self.dirty = True
            log.error("fast path: cached verdicts could not be replaced; off until they "
                      "are, retrying", error=str(exc))
            with contextlib.suppress(DatapathError):
                self.backend.heartbeat_stop()
            return
        self.dirty = False
        self.generation += 1
        unsettled, self._unsettled = self._unsettled, []
        gone = [c for c, _ in unsettled]
        where = {id(c): ctx for c, ctx in unsettled}
        for cached, n in self.table.settled(final, gone):
            self._count(cached, n, where.get(id(cached), context))

    # -- counting ---------------------------------------------------------------------------

    def read(self) -> tuple[int, dict[tuple[FastVerdict, str, int, str], int]]:
        """The kernel's counters, without the lock (a few ``ipset save``)."""
        generation = self.generation
        return generation, (self.backend.fastpath_counters() if len(self.table) else {})

    def apply(self, reading: tuple[int, dict[tuple[FastVerdict, str, int, str], int]],
              context: object) -> None:
        """Queue what a reading counted (lock held); dropped if a rebuild came
        in between (the rebuild counted those packets itself)."""
        generation, counters = reading
        if generation == self.generation:
            for cached, n in self.table.counted(counters):
                self._count(cached, n, context)

    def _count(self, cached: Cached, n: int, context: object) -> None:
        self.hits[cached.verdict] += n
        self.counted.append((cached, n, context))

    def drain(self) -> list[tuple[Cached, int, object]]:
        out = []
        while self.counted:
            out.append(self.counted.popleft())
        return out
