"""End to end in the lab: the Console as a real process and one Defender per lab
host, enrolled with an enrollment token. Rules set through the API are enforced
on both hosts; flows and audits arrive in the Console, one audit per blocked
attempt; the Console killed (SIGKILL) and restarted while traffic runs loses no
audit; a revoked Defender is refused."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.managed import RULES, ManagedCluster, managed_shop, policy_spec, poll

pytestmark = pytest.mark.lab

LAB = "cnnfe2e"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManagedCluster]:
    with managed_shop(LAB, tmp_path_factory.mktemp("e2e")) as c:
        yield c


def produced(c: ManagedCluster, src: str, dst: str, port: int) -> list[dict[str, Any]]:
    """Audits the Defenders wrote (their JSON lines hold what they also spooled)."""
    return [a for d in c.defenders for a in d.records("audit")
            if a["src"].get("container") == src and a["dst"].get("container") == dst
            and a["port"] == port]


def stored(c: ManagedCluster, src: str, dst: str, port: int) -> list[dict[str, Any]]:
    return [a for a in c.audits(blocked=True)
            if a["srcContainer"] == src and a["dstContainer"] == dst and a["port"] == port]


def total(audits: list[dict[str, Any]]) -> int:
    return sum(int(a["count"]) for a in audits)


def test_rules_set_through_the_api_are_enforced_on_both_hosts(cluster: ManagedCluster) -> None:
    c = cluster
    assert c.lab.connect("frontend", "api", 8080).ok  # node-1, allow
    assert c.lab.connect("frontend", "cache", 6379).outcome == "refused"  # node-1, prevent
    assert c.lab.connect("api", "payments", 9090).ok  # node-1 -> node-2, alert
    assert c.lab.connect("frontend", "payments", 9090).outcome == "refused"  # cross, prevent
    assert c.lab.connect("worker", "db", 5432).ok  # node-2, allow
    assert c.lab.connect("payments", "db", 5432).outcome == "refused"  # node-2, default

    # A change through the API: payments may reach db now (node-2), frontend may
    # reach cache (node-1).
    rules = [{**r, "effect": "allow"} if r["id"] == 3 else r for r in RULES] + [
        {"id": 8, "name": "payments-to-db", "src": "payments", "dst": "db", "ports": [5432],
         "effect": "allow"}]
    revision = c.set_policy(policy_spec(rules))
    c.wait_applied(revision, timeout=5)
    assert c.lab.connect("payments", "db", 5432).ok
    assert c.lab.connect("frontend", "cache", 6379).ok
    revision = c.set_policy(policy_spec())
    c.wait_applied(revision, timeout=5)
    assert c.lab.connect("frontend", "cache", 6379).outcome == "refused"

    listed = {d["hostname"]: d for d in c.api.get("/api/v1/defenders").json()}
    assert {h: d["status"] for h, d in listed.items()} == {"node-1": "connected",
                                                           "node-2": "connected"}
    assert listed["node-1"]["protected"] == 3 and listed["node-2"]["protected"] == 3


def test_flows_and_audits_arrive_one_audit_per_blocked_attempt(cluster: ManagedCluster) -> None:
    c = cluster
    attempts = 3
    for _ in range(attempts):  # node-1 -> node-2, both ends protected: evaluated once
        assert c.lab.connect("frontend", "payments", 22).outcome == "refused"
    assert poll(lambda: total(stored(c, "frontend", "payments", 22)) >= attempts, 20)
    # A second (wrong) evaluation by node-2's Defender would reach the Console no
    # later than the audit of a SYN node-2 decides afterwards (its reports go in order).
    assert c.lab.connect("payments", "db", 5433).outcome == "refused"  # node-2: default
    assert poll(lambda: [a for a in stored(c, "payments", "db", 5433)
                         if a["defender"] == "node-2"], 20)
    mine = stored(c, "frontend", "payments", 22)
    assert total(mine) == attempts, mine
    assert {a["defender"] for a in mine} == {"node-1"}
    assert {(a["ruleName"], a["dstHostname"], a["srcImage"]) for a in mine} == {
        ("frontend-not-payments", "node-2", "shop/frontend:1.0")}
    assert total(produced(c, "frontend", "payments", 22)) == attempts
    flows = [f for f in c.flows(src="image:shop/frontend*", port=22)
             if f["dst"].startswith("image:shop/payments")]
    assert [(f["verdict"], f["count"]) for f in flows] == [("prevent", attempts)]
    # Rule matches carry the rule; allowed flows too (this test makes its own: it
    # must not depend on an earlier test's traffic).
    assert c.lab.connect("frontend", "api", 8080).ok
    assert poll(lambda: [f for f in c.flows(port=8080, verdict="allow")
                         if f["ruleName"] == "frontend-to-api"], 20)


def test_console_killed_and_restarted_while_traffic_runs_loses_no_audit(
    cluster: ManagedCluster,
) -> None:
    c = cluster
    outcomes: list[str] = []
    stop = threading.Event()

    def traffic() -> None:
        while not stop.is_set():  # node-1 -> node-2, no rule: default prevent, audited
            outcomes.append(c.lab.connect("frontend", "db", 5432).outcome)
            time.sleep(0.05)

    worker = threading.Thread(target=traffic)
    worker.start()
    try:
        assert poll(lambda: len(outcomes) >= 5, 30)
        c.console.kill()  # SIGKILL, mid-traffic
        down_at = len(outcomes)
        assert poll(lambda: len(outcomes) >= down_at + 10, 30)
        assert poll(lambda: any(d.spooled() for d in c.defenders), 10)  # waiting in spools
        c.console.start()
        c.login()  # sessions survive in the store, but log in afresh anyway
        restarted_at = len(outcomes)
        assert poll(lambda: len(outcomes) >= restarted_at + 5, 30)
    finally:
        stop.set()
        worker.join(60)
    assert set(outcomes) == {"refused"}, outcomes
    assert poll(lambda: total(produced(c, "frontend", "db", 5432)) == len(outcomes), 20)
    assert poll(lambda: not any(d.spooled() for d in c.defenders), 60)
    made = total(produced(c, "frontend", "db", 5432))
    assert poll(lambda: total(stored(c, "frontend", "db", 5432)) == made, 30), (
        made, total(stored(c, "frontend", "db", 5432)))
    assert made == len(outcomes)  # one audit per blocked attempt, none lost, none twice
    # After the restart, policy changes still reach the Defenders.
    revision = c.set_policy(policy_spec())
    c.wait_applied(revision, timeout=15)


def test_a_revoked_defender_is_refused_and_keeps_its_last_policy(
    cluster: ManagedCluster,
) -> None:
    c = cluster
    node2 = c.defenders[1]
    r = c.api.delete(f"/api/v1/defenders/{c.defender_id('node-2')}")
    assert r.status_code == 204
    assert poll(lambda: "refused the credential (401)" in node2.log.read_text(), 40), (
        node2.log.read_text()[-2000:])
    hosts = [h["name"] for h in c.api.get("/api/v1/inventory").json()["hosts"]]
    assert hosts == ["node-1"]
    revoked = [d for d in c.api.get("/api/v1/defenders").json() if d["hostname"] == "node-2"]
    assert [d["status"] for d in revoked] == ["revoked"]
    # Refused, it still enforces the policy it had.
    assert c.lab.connect("worker", "db", 5432).ok
    assert c.lab.connect("payments", "db", 5432).outcome == "refused"
    # Its new reports stay in its spool: the Console stores nothing more from it.
    before = total(stored(c, "payments", "db", 5432))
    assert poll(node2.spooled, 10)
    assert total(stored(c, "payments", "db", 5432)) == before
