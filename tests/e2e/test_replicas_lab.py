"""Console replicas with real Defenders in the lab: three Console processes on
one real PostgreSQL; the Defender of node-1 linked to replica B (then A), the
one of node-2 to C (then A). A policy change made through A is enforced on
both hosts; after B is killed with SIGKILL, node-1's Defender moves to A and
still gets the next change."""

from __future__ import annotations

import signal
from collections.abc import Iterator

import pytest

from tests import postgres
from tests.e2e.managed import RULES, ManagedCluster, managed_shop, policy_spec, poll

pytestmark = [pytest.mark.lab, pytest.mark.postgres]

LAB = "cnnfrep"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManagedCluster]:
    reason = postgres.available()
    if reason:
        pytest.fail(f"cannot run: {reason}")
    with postgres.postgres_server() as server:
        db = server.create_database().replace("postgresql+psycopg://", "postgresql://")
        with managed_shop(LAB, tmp_path_factory.mktemp("replicas"), db=db, replicas=3,
                          consoles=lambda i, urls: f"{urls[i + 1]},{urls[0]}") as c:
            yield c


def test_a_change_through_one_replica_is_enforced_by_defenders_on_the_others(
        cluster: ManagedCluster) -> None:
    c = cluster
    a, b, _ = c.replicas
    assert [d.console.split(",")[0] for d in c.defenders] == [r.url for r in c.replicas[1:]]
    assert c.lab.connect("payments", "db", 5432).outcome == "refused"  # node-2, default
    assert c.lab.connect("frontend", "cache", 6379).outcome == "refused"  # node-1, prevent
    rules = [{**r, "effect": "allow"} if r["id"] == 3 else r for r in RULES] + [
        {"id": 8, "name": "payments-to-db", "src": "payments", "dst": "db", "ports": [5432],
         "effect": "allow"}]
    revision = c.set_policy(policy_spec(rules))  # through A
    c.wait_applied(revision, timeout=10)
    assert c.lab.connect("payments", "db", 5432).ok
    assert c.lab.connect("frontend", "cache", 6379).ok

    # B dies: node-1's Defender moves to A and enforces the next change.
    b.kill(signal.SIGKILL)
    revision = c.set_policy(policy_spec())
    c.wait_applied(revision, timeout=40)
    assert c.lab.connect("frontend", "cache", 6379).outcome == "refused"
    assert c.lab.connect("payments", "db", 5432).outcome == "refused"
    node1 = c.defenders[0]
    assert poll(lambda: "moving to the next" in node1.log.read_text(), 10), \
        node1.log.read_text()[-2000:]
    listed = {d["hostname"]: d["status"] for d in c.api.get("/api/v1/defenders").json()}
    assert listed == {"node-1": "connected", "node-2": "connected"}
    assert a.proc is not None and a.proc.poll() is None
