"""Which Defender records an observed connection, and the queue's folding,
bounds and fairness (cnnf.defender.observation, pure: tables of cases)."""

from __future__ import annotations

import random

import pytest

from cnnf.defender.datapath.conntrack import ObservedConnection
from cnnf.defender.inventory import Inventory
from cnnf.defender.observation import (
    DROPPED_BY_MAX,
    OUTSIDE,
    OUTSIDE_PREFIXES,
    ObservationQueue,
    ObservationScope,
    outside_prefix,
)
from cnnf.model import ContainerIdentity, HostIdentity, Policy
from cnnf.policy.engine import compile_policy

NODE, OTHER = "10.0.0.1", "10.0.0.2"  # this host, another host
WEB, DB = "10.1.0.2", "10.2.0.5"  # a container here, one on the other host
OUT, OUT_NET = "192.0.2.9", "192.0.2.0/24"  # an outside client, its bucket


def scope(cluster: set[str], since: float = 0.0) -> ObservationScope:
    inv = Inventory.build(
        HostIdentity(name="node-1", addresses=(NODE,)),
        [(WEB, ContainerIdentity(image="shop/web:1.0", host="node-1"))],
        [(DB, ContainerIdentity(image="shop/db:13", host="node-2")),
         (OTHER, HostIdentity(name="node-2", addresses=(OTHER,)))])
    return ObservationScope(frozenset(cluster), inv, compile_policy(Policy()), since)


def ev(src: str, dst: str, port: int = 80, *, seen: str = "", at: float = 1.0,
       sport: int = 40000) -> ObservedConnection:
    return ObservedConnection(src, dst, sport, port, at, seen or src)


@pytest.mark.parametrize(("cluster", "event", "owner"), [
    # nothing enforced: by the source's Defender, or the destination's for outsiders
    (set(), ev(WEB, DB), WEB),
    (set(), ev(WEB, OUT), WEB),
    (set(), ev(OUT, WEB), OUTSIDE),
    (set(), ev(OUT, NODE), OUTSIDE),
    (set(), ev(DB, WEB), None),  # the other host's container: its Defender
    (set(), ev(OTHER, NODE), None),
    # hosts enforced: a host's connection is queued by its datapath
    ({NODE, OTHER}, ev(NODE, DB), None),
    ({NODE, OTHER}, ev(WEB, OTHER), None),  # routed: the other host queues it
    ({NODE, OTHER}, ev(WEB, OTHER, seen=NODE), WEB),  # masqueraded: nobody queues it
    ({NODE, OTHER}, ev(WEB, NODE), None),  # this host's datapath queues it
    # containers enforced
    ({WEB, DB}, ev(WEB, OUT), None),
    ({WEB, DB}, ev(OUT, WEB), None),
    ({WEB, DB}, ev(NODE, OUT), NODE),
    ({WEB, DB}, ev(OTHER, WEB), None),
    # a spoofed source another Defender knows: not recorded here
    (set(), ev(DB, NODE), None),
])
def test_the_owner_of_an_observed_connection(
        cluster: set[str], event: ObservedConnection, owner: str | None) -> None:
    assert scope(cluster).owner(event) == owner


def test_repeats_fold_distinct_ones_are_bounded_per_source_and_taken_in_turn() -> None:
    q = ObservationQueue(max_entries=10, max_per_source=3)
    q.set_scope(scope(set()))
    for sport in range(100):  # one connection, again and again
        assert q.offer(ev(WEB, DB, 5432, sport=sport, at=1.0 + sport)) is None
    for port in range(1, 6):  # a scan: 3 kept, 2 dropped against WEB
        q.offer(ev(WEB, DB, port))
    assert q.offer(ev(OUT, NODE, 22)) is None and q.offer(ev(DB, NODE)) is None
    assert (len(q), q.waiting, q.stats.dropped, q.stats.skipped) == (4, 103, 3, 1)
    assert q.top() == [(WEB, 3)]
    taken = q.take(10)
    assert [(p.src, p.port, p.count) for p in taken] == [
        (WEB, 5432, 100), (OUT, 22, 1), (WEB, 1, 1), (WEB, 2, 1)]
    assert (taken[0].first, taken[0].last) == (1.0, 100.0)
    assert (len(q), q.waiting) == (0, 0)


def test_the_bound_in_all_holds_and_a_full_queue_makes_room_at_the_largest_source() -> None:
    q = ObservationQueue(max_entries=2, max_per_source=5)
    q.set_scope(scope(set()))
    assert [q.offer(ev(WEB, DB, p)) for p in (1, 2, 3)] == [None, None, WEB]
    # an outside client's newcomer pushes out WEB's newest, counted against WEB
    assert q.offer(ev(OUT, NODE)) == WEB
    assert q.offer(ev("192.0.2.10", NODE, 81)) == OUT_NET  # same size now: its own dropped
    assert [(p.src, p.port) for p in q.take(10)] == [(WEB, 1), (OUT, 80)]
    assert q.top() == [(WEB, 2), (OUT_NET, 1)] and q.stats.dropped == 3


def test_several_flooding_sources_do_not_shut_out_a_quiet_one() -> None:
    """Ten flooders (containers, or spoofed neighbours) fill the queue to the
    bound in all; a quiet source's connection still gets in, at a flooder's
    expense, and the drops name the flooders, never the quiet source."""
    q = ObservationQueue(max_entries=20, max_per_source=2)
    inv = Inventory.build(
        HostIdentity(name="node-1", addresses=(NODE,)),
        [(f"10.1.0.{i}", ContainerIdentity(image=f"flood{i}", host="node-1"))
         for i in range(10, 21)], [])
    q.set_scope(ObservationScope(frozenset(), inv, compile_policy(Policy())))
    for i in range(10, 20):
        for port in range(1, 50):
            q.offer(ev(f"10.1.0.{i}", OUT, port))
    assert len(q) == 20
    quiet = "10.1.0.20"
    assert q.offer(ev(quiet, OUT, 443)) == "10.1.0.10"  # the first of the largest
    assert q.offer(ev(quiet, OUT, 444)) == "10.1.0.11"
    assert q.offer(ev(quiet, OUT, 445)) == quiet  # over its own bound (2)
    taken = {(p.src, p.port) for p in q.take(100)}
    assert {(quiet, 443), (quiet, 444)} <= taken and len(taken) == 20
    assert dict(q.top(20))[quiet] == 1
    assert sum(n for a, n in q.top(20) if a != quiet) == q.stats.dropped - 1


@pytest.mark.parametrize(("src", "bucket"), [
    ("192.0.2.9", "192.0.2.0/24"),
    ("198.51.100.200", "198.51.100.0/24"),
    ("2001:db8:1:2:3::9", "2001:db8:1:2::/64"),
    ("2001:db8::1", "2001:db8::/64"),
])
def test_outside_clients_are_bucketed_by_prefix(src: str, bucket: str) -> None:
    assert outside_prefix(src) == bucket
    q = ObservationQueue(max_entries=10, max_per_source=1)
    q.set_scope(scope(set()))
    q.offer(ev(src, NODE, 1))
    assert q.offer(ev(src, NODE, 2)) == bucket  # its own prefix's bound


def test_one_outside_flooder_does_not_silence_other_outside_clients() -> None:
    q = ObservationQueue(max_entries=100, max_per_source=5)
    q.set_scope(scope(set()))
    for port in range(1, 1000):  # a scan from one outside address
        q.offer(ev(OUT, NODE, port))
    assert q.offer(ev("198.51.100.7", NODE, 443)) is None  # another client: room
    assert q.offer(ev("2001:db8::7", WEB, 443)) is None
    assert q.top() == [(OUT_NET, 999 - 5)]


def test_outside_prefixes_are_capped_then_share_one_bucket() -> None:
    q = ObservationQueue(max_entries=10_000, max_per_source=3)
    q.set_scope(scope(set()))
    for i in range(OUTSIDE_PREFIXES + 10):  # a spoofed sweep over many /24s
        for port in range(5):
            q.offer(ev(f"10.{100 + i // 256}.{i % 256}.1", NODE, port))
    assert len(q._buckets) == OUTSIDE_PREFIXES + 1  # the prefixes, and OUTSIDE
    assert len(q) == OUTSIDE_PREFIXES * 3 + 3
    top = dict(q.top(10_000))
    assert top[OUTSIDE] == 10 * 5 - 3 and len(top) == OUTSIDE_PREFIXES + 1
    q.take(10_000)  # emptied: room for new prefixes again
    assert q.offer(ev("203.0.113.1", NODE)) is None and "203.0.113.0/24" in q._buckets


def test_the_drop_counts_remember_a_bounded_number_of_prefixes() -> None:
    q = ObservationQueue(max_entries=10_000, max_per_source=1)
    q.set_scope(scope(set()))
    for i in range(DROPPED_BY_MAX + 300):  # many prefixes, over time
        a = f"10.{100 + i // 256}.{i % 256}.1"
        q.offer(ev(a, NODE, 1))
        q.offer(ev(a, NODE, 2))  # dropped: its prefix's bound
        q.take(10)
    assert len(q.stats.dropped_by) == DROPPED_BY_MAX + 1
    assert q.stats.dropped_by[OUTSIDE] == 300 and q.stats.dropped == DROPPED_BY_MAX + 300


def test_an_event_is_classified_with_the_scope_of_when_it_happened() -> None:
    q = ObservationQueue(max_entries=10, max_per_source=5)
    q.set_scope(scope(set(), since=0.0))  # nothing enforced
    q.set_scope(scope({NODE, OTHER}, since=10.0))  # hosts enforced from 10 s on
    q.offer(ev(WEB, OTHER, at=5.0))  # before: this Defender's
    q.offer(ev(WEB, OTHER, at=15.0))  # after: the other host's datapath queued it
    assert [(p.first, p.scope.since) for p in q.take(10)] == [(5.0, 0.0)]


def test_the_largest_source_is_tracked_through_offers_evictions_and_takes() -> None:

    q = ObservationQueue(max_entries=50, max_per_source=7)
    q.set_scope(scope(set()))
    rnd = random.Random(1)
    for _ in range(5000):
        if rnd.random() < 0.8:
            q.offer(ev(f"10.9.{rnd.randrange(30)}.1", NODE, rnd.randrange(40)))
        else:
            q.take(rnd.randrange(5))
        sizes = {b: len(k) for b, k in q._buckets.items()}
        assert all(sizes.values()) and sum(sizes.values()) == len(q) <= 50
        assert q._largest == max(sizes.values(), default=0)
        assert {n: set(bs) for n, bs in q._by_size.items()} == {
            n: {b for b, m in sizes.items() if m == n} for n in set(sizes.values())}
        assert q.waiting == sum(p.count for p in q._entries.values())
