"""End to end in the lab: learn the shop's policy from its own traffic, then
enforce it with default prevent. The shop runs under an empty policy
(enforcement on, default allow: every SYN evaluated and recorded with its
identities) until each normal pattern connected 5 times (at most a minute; the
slowest makes one connection every 2 s); the Console learns from that window;
the proposal is applied with default effect prevent (one revision); the shop's normal patterns keep
working (nothing refused), while a connection never seen in the window (a
lateral move) is refused and audited."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from cnnf.lab.traffic import Traffic
from tests.e2e.managed import ManagedCluster, managed_shop, poll

pytestmark = pytest.mark.lab

LAB = "cnnflrn"
EMPTY: dict[str, Any] = {"containerEnabled": True, "hostEnabled": False,
                         "defaultEffect": "allow", "blockMode": "reset", "objects": [],
                         "containerRules": [], "hostRules": []}


TIMES = 5  # connections of each normal pattern in each phase


def run_until_each_connected(c: ManagedCluster, patterns: list[Any]) -> dict[str, Any]:
    """The patterns' traffic until every one of them connected ``TIMES`` times (at
    most a minute); what each got, refusals and timeouts too."""
    return Traffic(c.lab, patterns).run(60, until=lambda t: all(
        t.counts[p.label]["connected"] >= TIMES for p in patterns))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManagedCluster]:
    with managed_shop(LAB, tmp_path_factory.mktemp("learn")) as c:
        yield c


def test_learn_apply_with_default_prevent_keeps_the_shop_and_refuses_a_lateral_move(
        cluster: ManagedCluster) -> None:
    c = cluster
    revision = c.set_policy(EMPTY)
    c.wait_applied(revision)
    normal = [p for p in c.lab.topology.traffic if not p.label.startswith("lateral")]
    start = time.time()
    counts = run_until_each_connected(c, normal)
    for p in normal:
        assert counts[p.label]["connected"] >= TIMES and set(counts[p.label]) == {"connected"}, (
            p.label, counts[p.label])
    # Every pattern's flows reached the Console before learning.
    expected = {(f"image:{c.lab.topology.container(p.source).image}", p.port) for p in normal}

    def arrived() -> bool:
        seen = {(f["src"], f["port"]) for f in c.flows(verdict="observed")}
        return expected <= seen

    assert poll(arrived, 30), (expected, c.flows())

    r = c.api.post("/api/v1/policy/proposals", json={
        "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(start - 5)),
        "defaultEffect": "prevent"})
    assert r.status_code == 201, r.text
    proposal = r.json()
    assert proposal["unallowed"] == 0 and proposal["skipped"] == {}
    assert proposal["learntFlows"] >= len(normal)
    # One rule per observed source/destination pair, by the workloads' app label.
    pairs = {(r["rule"]["src"], r["rule"]["dst"]) for r in proposal["proposed"]}
    assert ("shop-web:app=frontend", "shop-web:app=api") in pairs
    assert ("shop-web:app=api", "shop-data:app=db") in pairs
    assert ("shop-data:app=worker", "shop-data:app=db") in pairs
    assert not any(dst == "shop-data:app=db" and src == "shop-web:app=frontend"
                   for src, dst in pairs)  # never seen: not learnt
    for rule in proposal["proposed"]:
        assert rule["evidence"]["connections"] > 0 and rule["evidence"]["edges"]

    r = c.api.post(f"/api/v1/policy/proposals/{proposal['id']}/apply", json={})
    assert r.status_code == 200, r.text
    applied = r.json()["revision"]
    assert applied == revision + 1
    c.wait_applied(applied)
    policy = c.api.get("/api/v1/policy").json()
    assert policy["defaultEffect"] == "prevent" and policy["containerEnabled"] is True

    # The normal patterns keep working: nothing refused.
    counts = run_until_each_connected(c, normal)
    for p in normal:
        assert counts[p.label]["connected"] >= TIMES and set(counts[p.label]) == {"connected"}, (
            p.label, counts[p.label])
    # A lateral move never seen in the window: refused and audited (the default).
    assert c.lab.connect("frontend", "db", 5432).outcome == "refused"

    def audited() -> list[dict[str, Any]]:
        return [a for a in c.audits(blocked=True)
                if a["srcContainer"] == "frontend" and a["dstContainer"] == "db"
                and a["port"] == 5432]

    [audit] = poll(audited, 20)
    assert audit["ruleName"] == "" and audit["effect"] == "prevent"
    assert "the default effect (prevent)" in audit["msg"]
    # And the normal traffic raised no audit at all since the proposal was applied.
    assert [a for a in c.audits(blocked=True) if a["revision"] == applied
            and not (a["srcContainer"] == "frontend" and a["dstContainer"] == "db")] == []
