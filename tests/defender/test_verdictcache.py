"""The fast path at run time against an in-memory kernel: what reaches the
kernel, what is counted, with which context, and what happens when the kernel
refuses (no mock of the cache itself: a stand-in for the ipset sets)."""

from __future__ import annotations

import pytest

from cnnf.defender.datapath import DatapathError, FastEntry, FastVerdict
from cnnf.defender.fastpath import FastPathTable
from cnnf.defender.verdictcache import VerdictCache

A, B, C = "10.0.0.1", "10.0.0.2", "10.0.0.3"
ACCEPT = FastVerdict.ACCEPT


class Sets:
    """The kernel's fast-path sets: entries with packet counters."""

    def __init__(self) -> None:
        self.entries: dict[FastEntry, int] = {}
        self.fail_add = self.fail_replace = False
        self.alive = True  # the heartbeat set

    def heartbeat_stop(self) -> None:
        self.alive = False

    def fastpath_add(self, entries: list[FastEntry], timeout: float) -> None:
        for e in entries[:1]:  # a failing restore still adds what came before the error
            self.entries[e] = 0
        if self.fail_add:
            raise DatapathError("ipset restore failed")
        for e in entries:
            self.entries[e] = 0

    def fastpath_replace(self, keep: list[tuple[FastEntry, float]]) -> dict[FastEntry, int]:
        if self.fail_replace:
            raise DatapathError("ipset swap failed")
        final, self.entries = self.entries, {e: 0 for e, _ in keep}
        return final

    def fastpath_counters(self) -> dict[FastEntry, int]:
        return dict(self.entries)

    def hit(self, entry: FastEntry, n: int = 1) -> None:
        if entry in self.entries:
            self.entries[entry] += n


@pytest.fixture
def kernel() -> Sets:
    return Sets()


def cache_on(kernel: Sets) -> VerdictCache:
    return VerdictCache(FastPathTable(ttl=60), kernel)  # type: ignore[arg-type]


def offer(cache: VerdictCache, key: tuple[str, int, str], epoch: int = 0) -> None:
    cache.offer([(ACCEPT, key, "record", epoch, None)], now=0.0)


def counts(cache: VerdictCache) -> list[tuple[tuple[str, int, str], int, object]]:
    return [(c.key, n, ctx) for c, n, ctx in cache.drain()]


def test_repeats_are_counted_with_the_context_of_their_reading(kernel: Sets) -> None:
    cache = cache_on(kernel)
    offer(cache, (A, 80, B))
    assert kernel.entries == {(ACCEPT, A, 80, B): 0}
    kernel.hit((ACCEPT, A, 80, B), 3)
    cache.apply(cache.read(), "ctx-1")
    kernel.hit((ACCEPT, A, 80, B), 2)
    cache.apply(cache.read(), "ctx-2")
    assert counts(cache) == [((A, 80, B), 3, "ctx-1"), ((A, 80, B), 2, "ctx-2")]
    assert cache.hits[ACCEPT] == 5


def test_an_invalidation_settles_the_last_counts_before_the_change(kernel: Sets) -> None:
    cache = cache_on(kernel)
    offer(cache, (A, 80, B))
    offer(cache, (C, 80, B))
    kernel.hit((ACCEPT, A, 80, B), 4)
    kernel.hit((ACCEPT, C, 80, B), 1)
    stale = cache.read()  # taken before the change
    epoch = cache.invalidate([A], "before")
    assert kernel.entries == {(ACCEPT, C, 80, B): 0}  # gone from the kernel at once
    assert sorted(counts(cache)) == [((A, 80, B), 4, "before"), ((C, 80, B), 1, "before")]
    cache.apply(stale, "after")  # would count them again: dropped
    assert counts(cache) == []
    offer(cache, (A, 80, B), epoch=epoch - 1)  # decided before the change: not cached
    assert (ACCEPT, A, 80, B) not in kernel.entries
    offer(cache, (A, 80, B), epoch=epoch)
    assert (ACCEPT, A, 80, B) in kernel.entries


def test_a_failed_add_leaves_nothing_untracked_in_the_kernel(kernel: Sets) -> None:
    cache = cache_on(kernel)
    kernel.fail_add = True
    cache.offer([(ACCEPT, (A, 80, B), None, 0, None), (ACCEPT, (A, 81, B), None, 0, None)],
                now=0.0)
    assert kernel.entries == {} and len(cache) == 0 and not cache.dirty
    kernel.fail_add = False
    offer(cache, (A, 80, B))  # the same epoch: still cacheable
    assert kernel.entries == {(ACCEPT, A, 80, B): 0}


def test_a_failed_swap_is_retried_and_loses_no_count(kernel: Sets) -> None:
    cache = cache_on(kernel)
    offer(cache, (A, 80, B))
    kernel.hit((ACCEPT, A, 80, B), 2)
    kernel.fail_replace = True
    cache.invalidate_all("old policy")
    assert cache.dirty and (ACCEPT, A, 80, B) in kernel.entries  # stale: still there...
    assert not kernel.alive  # ...but the kernel cache is off until a swap succeeds
    kernel.hit((ACCEPT, A, 80, B), 1)
    kernel.fail_replace = False
    cache.expire(0.0, "later")  # the next poll retries
    assert not cache.dirty and kernel.entries == {}
    assert counts(cache) == [((A, 80, B), 3, "old policy")]
