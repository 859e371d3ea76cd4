"""Which Defender records an observed connection, and the queue's folding,
bounds and fairness (cnnf.defender.observation, pure: tables of cases)."""

from __future__ import annotations

import pytest

from cnnf.defender.datapath.conntrack import ObservedConnection
from cnnf.defender.inventory import Inventory
from cnnf.defender.observation import OUTSIDE, ObservationQueue, ObservationScope
from cnnf.model import ContainerIdentity, HostIdentity, Policy
from cnnf.policy.engine import compile_policy

NODE, OTHER = "10.0.0.1", "10.0.0.2"  # this host, another host
WEB, DB = "10.1.0.2", "10.2.0.5"  # a container here, one on the other host
OUT = "192.0.2.9"


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


def test_the_bound_in_all_holds() -> None:
    q = ObservationQueue(max_entries=2, max_per_source=5)
    q.set_scope(scope(set()))
    assert [q.offer(ev(WEB, DB, p)) for p in (1, 2, 3)] == [None, None, WEB]
    assert q.offer(ev(OUT, NODE)) == OUTSIDE


def test_an_event_is_classified_with_the_scope_of_when_it_happened() -> None:
    q = ObservationQueue(max_entries=10, max_per_source=5)
    q.set_scope(scope(set(), since=0.0))  # nothing enforced
    q.set_scope(scope({NODE, OTHER}, since=10.0))  # hosts enforced from 10 s on
    q.offer(ev(WEB, OTHER, at=5.0))  # before: this Defender's
    q.offer(ev(WEB, OTHER, at=15.0))  # after: the other host's datapath queued it
    assert [(p.first, p.scope.since) for p in q.take(10)] == [(5.0, 0.0)]
