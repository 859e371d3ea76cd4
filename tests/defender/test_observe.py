"""Observation (conntrack, with an enforcement switch off) with the real Agent:
a flood of observed connections is taken a bounded batch per main-loop turn and
its excess dropped and counted, never stalling the loop; and in mixed mode each
connection is recorded once in the cluster, by the verdict loop of the datapath
that queues it or else as observed, never both (the address sets are the real
Agent's, the queueing rule the iptables plan's)."""

from __future__ import annotations

import itertools
from pathlib import Path
from types import SimpleNamespace

import pytest
from structlog.testing import capture_logs

from cnnf.defender import agent as agent_mod
from cnnf.defender.agent import Agent
from cnnf.defender.config import DefenderConfig
from cnnf.defender.datapath import AddressSet, DatapathStats
from cnnf.defender.datapath.conntrack import ObservedConnection
from cnnf.defender.datapath.dns import DnsCache
from cnnf.defender.discovery.identity import DiscoveredContainer
from cnnf.model import ContainerIdentity, HostIdentity, Policy
from cnnf.model.records import ClusterInventory, HostInfo, WorkloadInfo

OUTSIDE = "192.0.2.9"
HOSTS = {"node-1": "10.0.0.1", "node-2": "10.0.0.2"}
WORKLOADS = {"10.1.0.2": ("shop/web:1.0", "node-1"), "10.2.0.5": ("shop/db:13", "node-2")}


def make_agent(tmp_path: Path, name: str, policy: Policy) -> Agent:
    pol = tmp_path / f"{name}.yaml"
    pol.write_text("apiVersion: cnnf/v1\nkind: Policy\nspec: {}\n")
    a = Agent(DefenderConfig(policy_file=pol, state_dir=tmp_path / name, hostname=name,
                             docker_host="unix:///nonexistent"))
    a.node = HostIdentity(name=name, addresses=(HOSTS[name],))
    a.set_policy(policy)
    a._on_snapshot([DiscoveredContainer(ContainerIdentity(image=image, name=image, host=host),
                                        (addr,), False, True, 1)
                    for addr, (image, host) in WORKLOADS.items() if host == name])
    a.set_cluster(ClusterInventory(
        revision=1, hosts=[HostInfo(name=n, addresses=[h]) for n, h in HOSTS.items()],
        containers=[WorkloadInfo(address=addr, image=image, host=host)
                    for addr, (image, host) in WORKLOADS.items()]))
    # the datapath is not under test: its DNS names (none here) and its counters
    a.datapath = SimpleNamespace(  # type: ignore[assignment]
        domains_for=DnsCache().domains_for, stats=lambda: DatapathStats([], []),
        workers=SimpleNamespace(pids=[]))
    return a


def observed(src: str, dst: str, port: int, sport: int = 40000) -> ObservedConnection:
    return ObservedConnection(src, dst, sport, port, 1.0)


def test_a_flood_is_taken_in_bounded_batches_and_its_excess_dropped_and_counted(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # containers enforced, hosts not: an outside client SYNs the node's address
    a = make_agent(tmp_path, "node-1", Policy(container_enabled=True))
    size = 500
    monkeypatch.setattr(a, "observed", agent_mod.queue.Queue(size))
    with capture_logs() as logs:
        for i in range(size + 30):
            a._on_observed(observed(OUTSIDE, HOSTS["node-1"], 22, 1024 + i))
    assert a.observed.qsize() == size and a.observed_dropped == 30
    # logged once for the burst, not once per dropped event
    warned = [e for e in logs if e["event"].startswith("observed connections dropped")]
    assert len(warned) == 1 and warned[0]["dropped"] == 1
    assert a.status()["observation"] == {"running": False, "waiting": size, "dropped": 30}
    f = a.figures()
    assert (f.observed_waiting, f.observed_dropped) == (size, 30)

    inv, compiled = a.inventory, a.compiled
    # one turn takes at most the batch limit, or one event once the budget is spent
    assert a._collect_observed(inv, compiled, limit=100, budget=60.0) == 100
    assert a.observed.qsize() == size - 100
    assert a._collect_observed(inv, compiled, budget=0.0) == 1
    assert a.observed.qsize() == size - 101
    taken = []  # the main loop's next turns (a budget long enough for the limit)
    while n := a._collect_observed(inv, compiled, limit=128, budget=60.0):
        taken.append(n)
    assert taken == [128, 128, 128, 15] and a.observed.qsize() == 0
    # every event queued was recorded (one flow: same ends and port), none twice
    flows, _ = a.recorder.drain(100.0)
    assert [(f.src.address, f.dst.address, f.port, f.mode, f.count) for f in flows] == [
        (OUTSIDE, HOSTS["node-1"], 22, "observed", size)]
    # drops go on being counted; the next log line says how many since the last
    with capture_logs() as logs:
        for _ in range(size + 3):
            a._on_observed(observed(OUTSIDE, HOSTS["node-1"], 22))
    assert a.observed_dropped == 33 and not logs  # within the minute: not logged again


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


@pytest.mark.parametrize("modes", [(False, False), (True, False), (False, True), (True, True)])
def test_each_connection_is_recorded_once_in_the_cluster(
        tmp_path: Path, modes: tuple[bool, bool]) -> None:
    container, host = modes
    policy = Policy(container_enabled=container, host_enabled=host)
    agents = {n: make_agent(tmp_path, n, policy) for n in HOSTS}
    ends = [*HOSTS.values(), *WORKLOADS, OUTSIDE]
    for src, dst in itertools.permutations(ends, 2):
        seen_on = {n for n in (lives_on(src), lives_on(dst)) if n is not None}
        if not seen_on:
            continue
        records = []
        for n in sorted(seen_on):
            a = agents[n]
            if queued_by(a, src, dst):
                records.append((n, "queued"))
            if not (container and host):  # the observer runs while a switch is off
                a._on_observed(observed(src, dst, 8080))
                a._collect_observed(a.inventory, a.compiled)
                flows, _ = a.recorder.drain(100.0)
                records += [(n, f.mode) for f in flows]
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
    n2._collect_observed(n2.inventory, n2.compiled)
    flows, audits = n2.recorder.drain(100.0)
    assert [(f.dst.address, f.mode) for f in flows] == [(OUTSIDE, "observed")]
    assert audits == []
