"""The verdict workers' fair waiting room (pure: the time is passed in)."""

from __future__ import annotations

import pytest

from cnnf.defender.datapath.fairqueue import FairQueue

A, B, C = b"\x0a\x00\x00\x01", b"\x0a\x00\x00\x02", b"\x0a\x00\x00\x03"


def pop_all(q: FairQueue[str], now: float = 0.0) -> list[str]:
    out = []
    while True:
        item, stale = q.pop(now)
        assert stale == []
        if item is None:
            return out
        out.append(item)


def test_sources_are_served_in_turn_whatever_one_of_them_holds() -> None:
    q: FairQueue[str] = FairQueue(per_source=100, total=1000)
    for i in range(50):
        assert q.push(A, f"a{i}", 0.0) == []
    q.push(B, "b0", 0.0)
    q.push(C, "c0", 0.0)
    q.push(B, "b1", 0.0)
    # B's and C's first SYNs come after one of A's, not after fifty
    assert pop_all(q)[:6] == ["a0", "b0", "c0", "a1", "b1", "a2"]
    assert len(q) == 0


def test_a_source_over_its_bound_loses_its_oldest_and_no_one_else_loses() -> None:
    q: FairQueue[str] = FairQueue(per_source=3, total=100)
    q.push(B, "b0", 0.0)
    pushed_out = [q.push(A, f"a{i}", 0.0) for i in range(5)]
    assert pushed_out == [[], [], [], [(A, "a0")], [(A, "a1")]]
    assert q.waiting(A) == 3 and q.waiting(B) == 1
    assert sorted(pop_all(q)) == ["a2", "a3", "a4", "b0"]


@pytest.mark.parametrize(
    ("pushes", "out", "left"),
    [
        # full: the source holding the most loses its oldest, also to a newcomer
        ([(A, "a0"), (A, "a1"), (A, "a2"), (B, "b0")], [(A, "a0")], {A: 2, B: 1, C: 0}),
        # the newcomer's own source holds the most: it loses its own oldest
        ([(A, "a0"), (B, "b0"), (B, "b1"), (B, "b2")], [(B, "b0")], {A: 1, B: 2, C: 0}),
        # one each and full: the newcomer's source, tied for the most, loses its oldest
        ([(A, "a0"), (B, "b0"), (C, "c0"), (A, "a1")], [(A, "a0")], {A: 1, B: 1, C: 1}),
    ],
)
def test_a_full_room_pushes_out_the_oldest_of_the_source_holding_the_most(
    pushes: list[tuple[bytes, str]], out: list[tuple[bytes, str]], left: dict[bytes, int]
) -> None:
    q: FairQueue[str] = FairQueue(per_source=3, total=3)
    got = []
    for source, item in pushes:
        got += q.push(source, item, 0.0)
    assert got == out
    assert {s: q.waiting(s) for s in left} == left and len(q) == 3
    assert len(pop_all(q)) == 3 and len(q) == 0


def test_a_syn_that_waited_too_long_is_handed_back_to_drop_not_to_decide() -> None:
    q: FairQueue[str] = FairQueue(per_source=10, total=10, max_wait=1.0)
    q.push(A, "old", 0.0)
    q.push(B, "older", 0.0)
    q.push(A, "new", 1.5)
    item, stale = q.pop(2.0)
    assert item == "new" and stale == [(A, "old"), (B, "older")]
    assert q.pop(2.0) == (None, [])


def test_drain_hands_back_everything_waiting() -> None:
    q: FairQueue[str] = FairQueue()
    q.push(A, "a0", 0.0)
    q.push(B, "b0", 0.0)
    assert sorted(q.drain()) == [(A, "a0"), (B, "b0")]
    assert len(q) == 0 and q.pop(0.0) == (None, [])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"per_source": 0}, "per_source must be >= 1"),
        ({"per_source": 10, "total": 5}, "total >= per_source"),
        ({"max_wait": 0.0}, "max_wait must be > 0"),
    ],
)
def test_bad_bounds_are_refused(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FairQueue(**kwargs)  # type: ignore[arg-type]


def test_the_source_holding_the_most_is_found_among_many_without_a_scan() -> None:
    """Thousands of one-SYN sources (forged addresses) and one heavy source:
    the heavy one loses its oldest while it holds the most; then the others."""
    q: FairQueue[int] = FairQueue(per_source=2000, total=3000)
    for i in range(2000):
        q.push(A, i, 0.0)
    sources = [i.to_bytes(4, "big") for i in range(1, 1001)]
    for s in sources:
        q.push(s, -1, 0.0)
    assert len(q) == 3000
    out = q.push(B, 7, 0.0)
    assert out == [(A, 0)] and q.waiting(A) == 1999 and q.waiting(B) == 1
    for i in range(1998):  # A shrinks to one, then ties: anyone holding one goes
        q.push(B if i % 2 else C, i, 0.0)
    assert len(q) == 3000 and q.waiting(A) + q.waiting(B) + q.waiting(C) <= 2000
    served = 0
    while q.pop(0.0)[0] is not None:
        served += 1
    assert served == 3000 and len(q) == 0


def test_forged_sources_keep_the_turns_bounded_and_a_real_one_is_served() -> None:
    """A flood of one-SYN sources (forged addresses) through a full room: each
    push pushes out another one-SYN source; the ring of turns stays bounded and
    a source pushed out and back again has one turn, not two."""
    q: FairQueue[int] = FairQueue(per_source=10, total=10)
    for i in range(100_000):
        q.push(i.to_bytes(4, "big"), i, 0.0)
        assert len(q._ring) <= 2 * q.total + 1
    q.push(A, -1, 0.0)
    q.push(A, -2, 0.0)
    items = []
    while (item := q.pop(0.0)[0]) is not None:
        items.append(item)
    assert len(items) == 10 and -2 in items and -1 not in items  # A: its own oldest went


def test_a_source_keeps_its_burst_until_the_loop_is_behind_for_it() -> None:
    q: FairQueue[str] = FairQueue(per_source=2, total=100, patience=0.2)
    assert [q.push(A, f"a{i}", 0.0) for i in range(5)] == [[], [], [], [], []]
    assert q.waiting(A) == 5  # a burst, just read: it waits
    assert q.push(A, "late", 0.3) == [(A, "a0")]  # its oldest waited 0.3 s: over its line
