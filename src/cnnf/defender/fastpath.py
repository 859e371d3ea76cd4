"""The kernel fast path's bookkeeping, without I/O.

Once the verdict loop has decided a (source, destination port, destination)
triple, the Defender puts the verdict in kernel sets so that repeat SYNs of the
triple are accepted, reset or dropped without reaching userspace. This module
decides which triples may go there and turns the sets' packet counters back
into counts for flows and audits; the backend does the kernel side.

Staleness is ruled out with epochs. Every change that can change a verdict
(policy, an address's identity, a DNS answer) takes a new epoch and is sent to
the verdict workers with it; each decision carries the epoch it was made
under. A decision is cached only if no change since its epoch touched it: a
full invalidation (policy) refuses every older decision, an address
invalidation those of its triples. Invalidations and offers are serialised by
the caller (one lock), and the caller (:class:`~cnnf.defender.verdictcache.
VerdictCache`) removes the invalidated entries from the kernel before the
change reaches the verdict workers, so no SYN decided after a change meets a
verdict cached before it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from cnnf.defender.datapath.backend import FastEntry, FastVerdict

Key = tuple[str, int, str]  # (source address, destination port, destination address)
# Addresses remembered with their invalidation epoch; beyond, a full invalidation.
MAX_ADDRESS_EPOCHS = 100_000
# Entries one source address may have: a port scan would otherwise fill the
# table (and every repeat of every scanned port would become a flow to count);
# beyond it, the source's new triples go to the verdict loop, through the
# admission limit.
MAX_PER_SOURCE = 1000


@dataclass(slots=True)
class Cached:
    """One triple whose verdict the kernel holds."""

    verdict: FastVerdict
    key: Key
    record: object  # what the caller records for each repeat (its decision)
    expires: float  # monotonic time after which the entry is removed
    packets: int = 0  # the kernel counter as last read

    @property
    def entry(self) -> FastEntry:
        src, port, dst = self.key
        return (self.verdict, src, port, dst)


@dataclass
class FastPathTable:
    """Which triples are cached, since which epoch, and what they counted."""

    ttl: float = 60.0
    max_entries: int = 200_000
    max_per_source: int = MAX_PER_SOURCE
    epoch: int = 0
    entries: dict[Key, Cached] = field(default_factory=dict)
    _full_epoch: int = 0
    _address_epoch: dict[str, int] = field(default_factory=dict)
    _by_address: dict[str, set[Key]] = field(default_factory=dict)
    _per_source: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.entries)

    # -- changes --------------------------------------------------------------------

    def invalidate_all(self) -> tuple[int, list[Cached]]:
        """A new epoch before which nothing may be cached; returns it and the
        entries removed (the caller swaps the kernel sets empty)."""
        self.epoch += 1
        self._full_epoch = self.epoch
        self._address_epoch.clear()
        removed = list(self.entries.values())
        self.entries.clear()
        self._by_address.clear()
        self._per_source.clear()
        return self.epoch, removed

    def invalidate(self, addresses: Iterable[str]) -> tuple[int, list[Cached]]:
        """A new epoch before which no triple of ``addresses`` may be cached;
        returns it and the entries removed (the caller rebuilds the kernel sets
        without them when there are any)."""
        addresses = set(addresses)
        if len(self._address_epoch) + len(addresses) > MAX_ADDRESS_EPOCHS:
            return self.invalidate_all()
        self.epoch += 1
        removed: list[Cached] = []
        for a in addresses:
            self._address_epoch[a] = self.epoch
            for key in self._by_address.pop(a, set()):
                cached = self.entries.pop(key, None)
                if cached is not None:
                    removed.append(cached)
                    self._unindex(key)
        return self.epoch, removed

    def discard(self, keys: Iterable[Key]) -> None:
        """Forget entries that did not make it into the kernel."""
        for key in keys:
            if self.entries.pop(key, None) is not None:
                self._unindex(key)

    def expire(self, now: float) -> list[Cached]:
        """Remove the entries whose TTL has passed; the caller rebuilds the sets."""
        gone = [c for c in self.entries.values() if c.expires <= now]
        for c in gone:
            del self.entries[c.key]
            self._unindex(c.key)
        return gone

    # -- decisions --------------------------------------------------------------------

    def admissible(self, src: str, dst: str, epoch: int) -> bool:
        """Was a decision made under ``epoch`` made after every change that touches it?"""
        return (epoch >= self._full_epoch
                and epoch >= self._address_epoch.get(src, 0)
                and epoch >= self._address_epoch.get(dst, 0))

    def offer(self, verdict: FastVerdict, key: Key, record: object, epoch: int, now: float,
              *, until: float | None = None) -> Cached | None:
        """Cache a decided triple if it is current and there is room; returns the
        new entry (for the kernel) or None. ``until``: an earlier end than the
        TTL (the DNS names the verdict was decided with expire then)."""
        src, _, dst = key
        if key in self.entries or len(self.entries) >= self.max_entries:
            return None
        if self._per_source.get(src, 0) >= self.max_per_source:
            return None
        if not self.admissible(src, dst, epoch):
            return None
        expires = now + self.ttl if until is None else min(now + self.ttl, until)
        if expires <= now:
            return None
        cached = Cached(verdict, key, record, expires)
        self.entries[key] = cached
        self._by_address.setdefault(src, set()).add(key)
        self._by_address.setdefault(dst, set()).add(key)
        self._per_source[src] = self._per_source.get(src, 0) + 1
        return cached

    def _unindex(self, key: Key) -> None:
        src, _, dst = key
        left = self._per_source.pop(src, 1) - 1
        if left:
            self._per_source[src] = left
        for a in (src, dst):
            keys = self._by_address.get(a)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._by_address[a]

    # -- counters ----------------------------------------------------------------------

    def kernel_timeouts(self, now: float, grace: float) -> list[tuple[FastEntry, float]]:
        """The live entries with the kernel timeout each should get in a rebuild."""
        return [(c.entry, c.expires - now + grace) for c in self.entries.values()]

    def counted(self, counters: dict[FastEntry, int]) -> list[tuple[Cached, int]]:
        """Packets matched since the last reading, per live entry (a periodic read)."""
        out = []
        for c in self.entries.values():
            now = counters.get(c.entry)
            if now is None:
                continue
            delta = now - c.packets if now >= c.packets else now  # re-added: restarted
            c.packets = now
            if delta:
                out.append((c, delta))
        return out

    def settled(
        self, final: dict[FastEntry, int], removed: Iterable[Cached]
    ) -> list[tuple[Cached, int]]:
        """After a rebuild: the last packets of the swapped-out sets, for the
        removed entries and the kept ones (whose new counters start at zero)."""
        out = []
        for c in [*removed, *self.entries.values()]:
            last = final.get(c.entry, c.packets)
            delta = last - c.packets if last >= c.packets else last
            c.packets = 0
            if delta:
                out.append((c, delta))
        return out
