"""Observation (conntrack, with an enforcement switch off) with the real Agent:
a flood of observed connections is taken a bounded batch per main-loop turn and
its excess dropped and counted, never stalling the loop; and in mixed mode each
connection is recorded once in the cluster, by the verdict loop of the datapath
that queues it or else as observed, never both (the address sets are the real
Agent's, the queueing rule the iptables plan's)."""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from structlog.testing import capture_logs

from cnnf.defender import agent as agent_mod
from cnnf.defender import observation
from cnnf.defender.agent import Agent
from cnnf.defender.config import DefenderConfig
from cnnf.defender.datapath import AddressSet, DatapathStats
from cnnf.defender.datapath.conntrack import ObservedConnection
from cnnf.defender.datapath.dns import DnsCache
from cnnf.defender.discovery.identity import DiscoveredContainer
from cnnf.model import ContainerIdentity, Effect, HostIdentity, Policy
from cnnf.model.records import ClusterInventory, HostInfo, WorkloadInfo

OUTSIDE = "192.0.2.9"
HOSTS = {"node-1": "10.0.0.1", "node-2": "10.0.0.2"}
WORKLOADS = {"10.1.0.2": ("shop/web:1.0", "node-1"), "10.2.0.5": ("shop/db:13", "node-2")}


def make_agent(tmp_path: Path, name: str, policy: Policy,
               more: tuple[tuple[str, str], ...] = ()) -> Agent:
    """``more``: other containers on this host, (address, image)."""
    pol = tmp_path / f"{name}.yaml"
    pol.write_text("apiVersion: cnnf/v1\nkind: Policy\nspec: {}\n")
    a = Agent(DefenderConfig(policy_file=pol, state_dir=tmp_path / name, hostname=name,
                             docker_host="unix:///nonexistent"))
    a.node = HostIdentity(name=name, addresses=(HOSTS[name],))
    a.set_policy(policy)
    a._on_snapshot([DiscoveredContainer(ContainerIdentity(image=image, name=image, host=host),
                                        (addr,), False, True, 1)
                    for addr, (image, host) in [*WORKLOADS.items(),
                                                *((m, (i, name)) for m, i in more)]
                    if host == name])
    a.set_cluster(ClusterInventory(
        revision=1, hosts=[HostInfo(name=n, addresses=[h]) for n, h in HOSTS.items()],
        containers=[WorkloadInfo(address=addr, image=image, host=host)
                    for addr, (image, host) in WORKLOADS.items()]))
    # the datapath is not under test: its DNS names (none here) and its counters
    a.datapath = SimpleNamespace(  # type: ignore[assignment]
        domains_for=DnsCache().domains_for, stats=lambda: DatapathStats([], []),
        workers=SimpleNamespace(pids=[], broadcast=lambda message: None,
                                set_local_sources=lambda addresses: None),
        backend=SimpleNamespace(addresses=lambda which: frozenset(),
                                set_addresses=lambda which, addresses: None,
                                ports=dict, set_ports=lambda ports: None))
    return a


def observed(src: str, dst: str, port: int, sport: int = 40000, *,
             seen_as: str = "", at: float | None = None) -> ObservedConnection:
    """A conntrack event now (or ``at``); ``seen_as``: the source masqueraded to it."""
    return ObservedConnection(src, dst, sport, port, time.time() if at is None else at,
                              seen_as or src)


def test_a_flood_is_taken_in_bounded_batches_and_its_excess_dropped_and_counted(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # containers enforced, hosts not: an outside client SYNs the node's address,
    # each SYN at another port (a scan: nothing to fold)
    a = make_agent(tmp_path, "node-1", Policy(container_enabled=True))
    size = 500
    monkeypatch.setattr(a.observed, "max_per_source", size)
    with capture_logs() as logs:
        for i in range(size + 30):
            a._on_observed(observed(OUTSIDE, HOSTS["node-1"], 1 + i))
    assert len(a.observed) == a.observed.waiting == size and a.observed_dropped == 30
    # logged once for the burst, not once per dropped event, naming the source
    warned = [e for e in logs if e["event"].startswith("observed connections dropped")]
    assert len(warned) == 1 and warned[0]["dropped"] == 1 and warned[0]["source"] == "192.0.2.0/24"
    assert a.status()["observation"] == {
        "running": False, "waiting": size, "dropped": 30, "overruns": 0, "restarts": 0,
        "unparsed": 0,
        "top": [{"address": "192.0.2.0/24", "name": "", "dropped": 30}]}
    f = a.figures()
    assert (f.observed_waiting, f.observed_dropped) == (size, 30)

    # one turn takes at most the batch limit, or one chunk once the budget is spent
    assert a._collect_observed(limit=100, budget=60.0) == 100
    assert a.observed.waiting == size - 100
    assert a._collect_observed(budget=0.0) == agent_mod.OBSERVED_TAKE_CHUNK
    left = size - 100 - agent_mod.OBSERVED_TAKE_CHUNK
    assert a.observed.waiting == left
    taken = []  # the main loop's next turns (a budget long enough for the limit)
    while n := a._collect_observed(limit=128, budget=60.0):
        taken.append(n)
    assert sum(taken) == left and max(taken) <= 128 and a.observed.waiting == 0
    # every event queued was recorded once: one flow per port
    flows, _ = a.recorder.drain(time.time() + 100)
    assert sorted((f.src.address, f.port, f.mode, f.count) for f in flows) == [
        (OUTSIDE, 1 + i, "observed", 1) for i in range(size)]
    # drops go on being counted; the next log line says how many since the last
    with capture_logs() as logs:
        for i in range(size + 3):
            a._on_observed(observed(OUTSIDE, HOSTS["node-1"], 1 + i))
    assert a.observed_dropped == 33 and not logs  # within the minute: not logged again


def test_repeats_of_a_connection_are_folded_and_counted_exactly(tmp_path: Path) -> None:
    """A SYN flood at one port (hping3: a new source port each SYN) is one entry
    waiting whatever its length, and every SYN is counted."""
    a = make_agent(tmp_path, "node-1", Policy(host_enabled=True, default_effect=Effect.PREVENT))
    t0 = time.time()
    for i in range(50_000):
        a._on_observed(observed("10.1.0.2", "10.2.0.5", 5432, 1024 + i % 60_000,
                                at=t0 + i / 100_000))
    assert len(a.observed) == 1 and a.observed.waiting == 50_000 and a.observed_dropped == 0
    assert a._collect_observed() == 1 and a.observed.waiting == 0
    flows, audits = a.recorder.drain(t0 + 100)
    assert [(f.src.image, f.count, f.first_seen,
             f.last_seen) for f in flows] == [("shop/web:1.0", 50_000, t0,
                                               pytest.approx(t0 + 0.49999))]
    # would prevent (the default), every one of them
    assert sum(x.count for x in audits) == 50_000 and all(x.would for x in audits)


def test_a_flooding_workload_cannot_push_out_or_delay_another_ones_connections(
        tmp_path: Path) -> None:
    a = make_agent(tmp_path, "node-1", Policy(host_enabled=True),
                   more=(("10.1.0.3", "shop/api:2.1"),))
    # web scans every port of db (each one a distinct connection)
    for port in range(1, 30_001):
        a._on_observed(observed("10.1.0.2", "10.2.0.5", port))
    for port in (5432, 6379, 9090):  # api's real connections, during the scan
        a._on_observed(observed("10.1.0.3", "10.2.0.5", port))
    assert a.observed.waiting == agent_mod.OBSERVED_SOURCE_MAX + 3
    assert a.observed_dropped == 30_000 - agent_mod.OBSERVED_SOURCE_MAX
    assert a.status()["observation"]["top"] == [
        {"address": "10.1.0.2", "name": "shop/web:1.0",
         "dropped": 30_000 - agent_mod.OBSERVED_SOURCE_MAX}]
    # the first turn already records api's three (round robin across sources)
    assert a._collect_observed(limit=6) == 6
    flows, _ = a.recorder.drain(time.time() + 100)
    assert sorted(f.port for f in flows if f.src.address == "10.1.0.3") == [5432, 6379, 9090]


def test_connections_are_named_with_the_identities_of_when_they_happened(
        tmp_path: Path) -> None:
    """Address reuse: web stops, its address goes to a new container before the
    main loop took web's last connection; that connection stays web's."""
    a = make_agent(tmp_path, "node-1", Policy(host_enabled=True))
    t0 = time.time()
    a._on_observed(observed("10.1.0.2", "10.2.0.5", 5432, at=t0))
    a._on_snapshot([DiscoveredContainer(ContainerIdentity(image="evil/x:1", name="x",
                                                          host="node-1"),
                                        ("10.1.0.2",), False, True, 1)])
    a._on_observed(observed("10.1.0.2", "10.2.0.5", 5432, at=time.time() + 0.01))
    a._collect_observed()
    flows, _ = a.recorder.drain(time.time() + 100)
    assert sorted((f.src.image, f.count)
                  for f in flows) == [("evil/x:1", 1), ("shop/web:1.0", 1)]


def test_the_real_bounds_leave_the_loop_a_short_turn() -> None:
    assert agent_mod.OBSERVED_BATCH_SECONDS <= 0.05
    assert 0 < agent_mod.OBSERVED_BATCH_MAX <= agent_mod.OBSERVED_QUEUE_MAX


def queued_by(a: Agent, src: str, dst: str) -> bool:
    """Whether ``a``'s datapath queues the SYN (the iptables plan: from LOCAL or
    HOST; to LOCAL or HOST from outside CLUSTER)."""
    sets = a.wanted_sets()
    mine = sets[AddressSet.LOCAL] | sets[AddressSet.HOST]
    return src in mine or (dst in mine and src not in sets[AddressSet.CLUSTER])


def lives_on(address: str) -> str | None:
    for name, host in HOSTS.items():
        if address == host:
            return name
    return WORKLOADS[address][1] if address in WORKLOADS else None


# Masqueraded with containers enforced and hosts not is left out: the far
# node's datapath sees a host (not protected) connect to a protected container
# and queues it too, as it must for the host's own connections (the two cannot
# be told apart there); routed container networks avoid that double decision.
MODES = [(False, False), (True, False), (False, True), (True, True)]


@pytest.mark.parametrize(("modes", "masquerade"), [(m, False) for m in MODES]
                         + [(m, True) for m in MODES if m != (True, False)])
def test_each_connection_is_recorded_once_in_the_cluster(
        tmp_path: Path, modes: tuple[bool, bool], masquerade: bool) -> None:
    """Masqueraded: a container's connection leaves its node with the node's
    address as its source; the source's node sees the container (its conntrack
    reply tuple says which address the far end sees), the far end the node."""
    container, host = modes
    policy = Policy(container_enabled=container, host_enabled=host)
    agents = {n: make_agent(tmp_path, n, policy) for n in HOSTS}
    ends = [*HOSTS.values(), *WORKLOADS, OUTSIDE]
    for src, dst in itertools.permutations(ends, 2):
        src_on, dst_on = lives_on(src), lives_on(dst)
        if src_on is None and dst_on is None:
            continue
        seen = src  # the source the destination sees
        if masquerade and src in WORKLOADS and src_on != dst_on:
            seen = HOSTS[WORKLOADS[src][1]]
        records = []
        views = {}  # node -> (the event its conntrack reports, whether its datapath queues it)
        if dst_on is not None:
            views[dst_on] = (observed(seen, dst, 8080), queued_by(agents[dst_on], seen, dst))
        if src_on is not None:  # (filter rules see the source before its masquerade)
            views[src_on] = (observed(src, dst, 8080, seen_as=seen),
                             queued_by(agents[src_on], src, dst))
        for n, (event, queued) in sorted(views.items()):
            a = agents[n]
            if queued:
                records.append((n, "queued"))
            if not (container and host):  # the observer runs while a switch is off
                a._on_observed(event)
                a._collect_observed()
                flows, _ = a.recorder.drain(time.time() + 100)
                records += [(n, f.mode) for f in flows]
                # named with the true source, not the address it was masqueraded to
                assert all(f.src.address == src for f in flows if n == src_on), (src, dst)
        assert len(records) == 1, f"{src} -> {dst} (modes {modes}): {records}"


def test_mixed_mode_cross_host_is_not_also_recorded_as_not_enforced(tmp_path: Path) -> None:
    """The reviewer's case: containers on, hosts off; host node-2 connects to a
    container on node-1. node-1 queues it; node-2 records nothing (it recorded a
    false "observed/allow" flow and "would block ... not enforced" audit)."""
    policy = Policy(container_enabled=True)
    n1, n2 = (make_agent(tmp_path, n, policy) for n in HOSTS)
    assert queued_by(n1, HOSTS["node-2"], "10.1.0.2")
    n2._on_observed(observed(HOSTS["node-2"], "10.1.0.2", 80))
    n2._on_observed(observed(HOSTS["node-2"], OUTSIDE, 443))  # not queued anywhere
    n2._collect_observed()
    flows, audits = n2.recorder.drain(time.time() + 100)
    assert [(f.dst.address, f.mode) for f in flows] == [(OUTSIDE, "observed")]
    assert audits == []


def test_turning_enforcement_off_observes_before_the_sets_shrink(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No connection between the two: queued by nobody and not yet observed."""
    a = make_agent(tmp_path, "node-1", Policy(container_enabled=True, host_enabled=True))
    steps: list[str] = []
    sets = dict(a.wanted_sets())
    assert sets[AddressSet.LOCAL] == {"10.1.0.2"}

    def set_addresses(which: AddressSet, addresses: frozenset[str]) -> None:
        steps.append(f"set {which.name} {sorted(addresses)}")
        sets[which] = addresses

    a.datapath.backend = SimpleNamespace(addresses=sets.get, set_addresses=set_addresses,
                                         ports=dict, set_ports=lambda ports: None)

    class Observer:
        def __init__(self, *args: object, **kwargs: object) -> None:
            self.running = True

        def start(self) -> None:
            steps.append("observe")

        def stop(self) -> None:
            steps.append("stop observing")

    monkeypatch.setattr(agent_mod, "ConntrackObserver", Observer)
    a.set_policy(Policy(container_enabled=False, host_enabled=True))
    assert steps[0] == "observe" and "set LOCAL []" in steps, steps
    # and back on: the sets are filled before observation stops
    steps.clear()
    a.set_policy(Policy(container_enabled=True, host_enabled=True))
    assert steps[-1] == "stop observing" and "set LOCAL ['10.1.0.2']" in steps, steps


def test_the_scopes_kept_are_bounded(tmp_path: Path) -> None:
    a = make_agent(tmp_path, "node-1", Policy(host_enabled=True))
    for _ in range(1000):  # inventory changes in a burst: all within the 10 s kept
        a._publish_inventory()
    assert len(a.observed._scopes) == observation.SCOPE_MAX
    # an event of now is classified with the newest
    a._on_observed(observed("10.1.0.2", "10.2.0.5", 5432))
    [p] = a.observed.take(10)
    assert p.scope is a.observed._scopes[-1]
