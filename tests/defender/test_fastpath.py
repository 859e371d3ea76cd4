"""The fast path's bookkeeping (pure): which decisions may be cached, and the
counts that come back from the kernel's counters."""

from __future__ import annotations

import pytest

from cnnf.defender.datapath import FastVerdict
from cnnf.defender.fastpath import MAX_ADDRESS_EPOCHS, FastPathTable

A, B, C = "10.0.0.1", "10.0.0.2", "10.0.0.3"
AB = (A, 80, B)
CB = (C, 80, B)
ACCEPT, REJECT = FastVerdict.ACCEPT, FastVerdict.REJECT


def test_a_current_decision_is_cached_once() -> None:
    t = FastPathTable(ttl=60)
    cached = t.offer(ACCEPT, AB, "rec", epoch=0, now=0.0)
    assert cached is not None and cached.entry == (ACCEPT, A, 80, B) and cached.expires == 60
    assert t.offer(ACCEPT, AB, "rec", epoch=0, now=1.0) is None  # already there
    assert len(t) == 1


@pytest.mark.parametrize(
    ("change", "decided_at", "key", "cached"),
    [
        # a policy change refuses every decision made before it
        ("all", "before", AB, False),
        ("all", "after", AB, True),
        # an address change refuses older decisions that involve the address
        ("address A", "before", AB, False),
        ("address B", "before", AB, False),
        ("address A", "before", CB, True),
        ("address A", "after", AB, True),
    ],
)
def test_decisions_older_than_a_change_that_touches_them_are_not_cached(
    change: str, decided_at: str, key: tuple[str, int, str], cached: bool
) -> None:
    t = FastPathTable()
    before = t.epoch
    if change == "all":
        after, _ = t.invalidate_all()
    else:
        after, _ = t.invalidate([A if change == "address A" else B])
    epoch = before if decided_at == "before" else after
    assert (t.offer(ACCEPT, key, None, epoch, 0.0) is not None) is cached


def test_invalidation_removes_the_entries_of_an_address_only() -> None:
    t = FastPathTable()
    t.offer(ACCEPT, AB, None, 0, 0.0)
    t.offer(REJECT, CB, None, 0, 0.0)
    t.offer(ACCEPT, (C, 443, A), None, 0, 0.0)
    _, removed = t.invalidate([A])
    assert sorted(c.key for c in removed) == [(A, 80, B), (C, 443, A)]
    assert list(t.entries) == [CB]
    _, removed = t.invalidate([B])
    assert [c.key for c in removed] == [CB] and len(t) == 0
    _, removed = t.invalidate_all()
    assert removed == []


def test_too_many_remembered_addresses_become_a_full_invalidation() -> None:
    t = FastPathTable()
    t.offer(ACCEPT, AB, None, 0, 0.0)
    many = (f"10.1.{i // 256}.{i % 256}" for i in range(MAX_ADDRESS_EPOCHS + 1))
    epoch, removed = t.invalidate(many)
    assert [c.key for c in removed] == [AB]
    assert t.offer(ACCEPT, CB, None, epoch - 1, 0.0) is None  # every older decision refused


def test_expiry_and_the_room_left() -> None:
    t = FastPathTable(ttl=10, max_entries=2)
    t.offer(ACCEPT, AB, None, 0, 0.0)
    t.offer(ACCEPT, CB, None, 0, 5.0)
    assert t.offer(ACCEPT, (A, 81, B), None, 0, 5.0) is None  # full
    assert [c.key for c in t.expire(10.0)] == [AB]
    assert t.kernel_timeouts(now=10.0, grace=30) == [((ACCEPT, C, 80, B), 35.0)]
    assert t.offer(ACCEPT, (A, 81, B), None, 0, 10.0) is not None


def test_counters_become_deltas_and_a_rebuild_settles_them() -> None:
    t = FastPathTable()
    ab = t.offer(ACCEPT, AB, "ab", 0, 0.0)
    cb = t.offer(REJECT, CB, "cb", 0, 0.0)
    assert ab is not None and cb is not None
    assert t.counted({ab.entry: 3, cb.entry: 0}) == [(ab, 3)]
    assert t.counted({ab.entry: 5}) == [(ab, 2)]
    assert t.counted({ab.entry: 1}) == [(ab, 1)]  # re-added in the kernel: counting restarted
    # A rebuild removed cb and kept ab: the swapped-out sets' last counters
    # give both their remaining packets; ab's new counter starts at zero.
    _, removed = t.invalidate([C])
    assert [c.key for c in removed] == [CB]
    settled = t.settled({ab.entry: 4, cb.entry: 7}, removed)
    assert sorted((c.key, n) for c, n in settled) == [(AB, 3), (CB, 7)]
    assert t.counted({ab.entry: 2}) == [(ab, 2)]


def test_one_source_cannot_fill_the_table() -> None:
    t = FastPathTable(max_per_source=3)
    for port in range(3):
        assert t.offer(REJECT, (A, port, B), None, 0, 0.0) is not None
    assert t.offer(REJECT, (A, 99, B), None, 0, 0.0) is None  # a scan stops here
    assert t.offer(ACCEPT, CB, None, 0, 0.0) is not None  # others are not affected
    t.invalidate([C])
    t.expire(61.0)
    assert len(t) == 0 and t.offer(REJECT, (A, 99, B), None, 0, 61.0) is not None


def test_an_entry_ends_with_the_dns_names_it_was_decided_with() -> None:
    t = FastPathTable(ttl=60)
    cached = t.offer(ACCEPT, AB, None, 0, 0.0, until=20.0)
    assert cached is not None and cached.expires == 20.0
    assert t.offer(ACCEPT, CB, None, 0, 0.0, until=100.0).expires == 60.0  # type: ignore[union-attr]
    assert t.offer(ACCEPT, (A, 81, B), None, 0, 30.0, until=20.0) is None  # already lapsed
    assert [c.key for c in t.expire(20.0)] == [AB]


def test_entries_that_did_not_reach_the_kernel_are_discarded() -> None:
    t = FastPathTable(max_per_source=2)
    t.offer(ACCEPT, AB, None, 0, 0.0)
    t.offer(ACCEPT, (A, 81, B), None, 0, 0.0)
    t.discard([AB, (A, 81, B), CB])
    assert len(t) == 0
    assert t.offer(ACCEPT, AB, None, 0, 0.0) is not None  # room again, same epoch: cacheable
