""""Would" verdicts for real: staged rules, a staged default effect and
enforcement off, with real connections between the shop's containers through
one ``cnnf defender run`` per lab host (root, the lab ``cnnfwould``).

What is proved: a staged prevent rule (and a staged prevent default) refuses
nothing, and its "would prevent" verdicts count exactly the connections made,
also when the kernel's fast path answers the repeats and across hosts; with
enforcement off every connection of a protected workload is recorded once,
with both ends named, as what happened (allowed) and what the policy would do.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.defender.lab.test_defender_lab import (
    RULES,
    Cluster,
    Defender,
    console_process,
    policy,
    poll,
    running_cluster,
)

pytestmark = pytest.mark.lab

LAB = "cnnfwould"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    yield from running_cluster(LAB, tmp_path_factory.mktemp("would"))


def records(c: Cluster, kind: str, revision: int, src: str, dst: str, *,
            port: int) -> list[dict[str, Any]]:
    """The flows or audits of one revision from ``src`` to ``dst`` (a container
    name) on ``port``, from both Defenders."""
    return [r for d in c.defenders for r in d.records(kind)
            if r["revision"] == revision and r["src"].get("container") == src
            and r["dst"].get("container") == dst and r["port"] == port]


def count(rs: list[dict[str, Any]]) -> int:
    return sum(int(r["count"]) for r in rs)


def connect_n(c: Cluster, src: str, dst: str, port: int, n: int) -> None:
    for i in range(n):
        result = c.connect(src, dst, port)
        assert result.ok, f"connection {i + 1} of {n} {src} -> {dst}:{port}: {result}"


def apply(c: Cluster, **spec: Any) -> int:
    revision = c.apply(**spec)
    c.share_inventory()
    return revision


STAGED = [
    # before the rules in force that allow these: as if in force, they would decide
    {"id": 10, "name": "staged-frontend-not-api", "src": "frontend", "dst": "api",
     "ports": [8080], "effect": "prevent", "staged": True},
    {"id": 11, "name": "staged-api-not-payments", "src": "api", "dst": "payments",
     "ports": [9090], "effect": "prevent", "staged": True},
]


def test_a_staged_prevent_rule_refuses_nothing_and_counts_every_would_prevent(
        cluster: Cluster) -> None:
    c = cluster
    rev = apply(c, containerRules=[*STAGED, *RULES])
    connect_n(c, "frontend", "api", 8080, 8)  # one host; the fast path takes the repeats
    connect_n(c, "api", "payments", 9090, 4)  # node-1 -> node-2
    # every repeat counted, with its would verdict, in flows and in would audits
    assert poll(lambda: count(records(c, "flow", rev, "frontend", "api", port=8080)) == 8 and
                count(records(c, "audit", rev, "frontend", "api", port=8080)) == 8, 15)
    local = records(c, "flow", rev, "frontend", "api", port=8080)
    assert {(f["effect"], f["rule_id"], f["would_effect"], f["would_rule_id"], f["mode"])
            for f in local} == {("allow", 1, "prevent", 10, "enforced")}
    audits = records(c, "audit", rev, "frontend", "api", port=8080)
    assert {(a["would"], a["blocked"], a["effect"], a["rule_id"]) for a in audits} == {
        (True, False, "prevent", 10)}
    assert all("not enforced: staged" in a["message"] for a in audits)
    assert poll(lambda: count(records(c, "flow", rev, "api", "payments", port=9090)) == 4, 15)
    remote = records(c, "flow", rev, "api", "payments", port=9090)
    assert {(f["reporter"], f["effect"], f["rule_id"], f["would_effect"], f["would_rule_id"])
            for f in remote} == {("node-1", "alert", 4, "prevent", 11)}
    assert {f["dst"]["host"] for f in remote} == {"node-2"}
    # the alert in force and the staged prevent: one audit each per connection
    assert poll(lambda: count([a for a in records(c, "audit", rev, "api", "payments", port=9090)
                               if a.get("would")]) == 4, 15)
    assert count([a for a in records(c, "audit", rev, "api", "payments", port=9090)
                  if not a.get("would")]) == 4
    # promoted: enforced from that revision on
    promoted = [{**r, "staged": False} for r in STAGED]
    apply(c, containerRules=[*promoted, *RULES])
    assert c.connect("frontend", "api", 8080).outcome == "refused"
    assert c.connect("api", "payments", 9090).outcome == "refused"


def test_a_staged_prevent_default_refuses_nothing_and_counts_every_would_prevent(
        cluster: Cluster) -> None:
    c = cluster
    rev = apply(c, defaultEffect="allow", stagedDefaultEffect="prevent")
    connect_n(c, "worker", "db", 5432, 5)  # no rule: the default decides (node-2)
    connect_n(c, "api", "db", 5432, 2)  # rule 5 allows: no would verdict
    assert poll(lambda: count(records(c, "flow", rev, "worker", "db", port=5432)) == 5 and
                count(records(c, "audit", rev, "worker", "db", port=5432)) == 5, 15)
    holes = records(c, "flow", rev, "worker", "db", port=5432)
    assert {(f["effect"], f["matched"], f["would_effect"], f.get("would_rule_id"),
             f["reporter"]) for f in holes} == {("allow", False, "prevent", None, "node-2")}
    assert all(a["would"] and not a["blocked"]
               for a in records(c, "audit", rev, "worker", "db", port=5432))
    assert poll(lambda: count(records(c, "flow", rev, "api", "db", port=5432)) == 2, 15)
    assert all("would_effect" not in f for f in records(c, "flow", rev, "api", "db", port=5432))
    assert not records(c, "audit", rev, "api", "db", port=5432)
    # the step from allow to prevent, promoted: now refused
    apply(c, defaultEffect="prevent")
    assert c.connect("worker", "db", 5432).outcome == "refused"


@pytest.mark.parametrize("host_enabled", [False, True], ids=["all-off", "containers-off"])
def test_enforcement_off_records_every_connection_and_what_would_happen(
        cluster: Cluster, host_enabled: bool) -> None:
    c = cluster
    rev = apply(c, containerEnabled=False, hostEnabled=host_enabled)
    assert poll(lambda: all((d.status() or {}).get("protected") == [] for d in c.defenders)
                or host_enabled)
    connect_n(c, "frontend", "db", 5432, 3)  # no rule, default prevent; across hosts
    connect_n(c, "frontend", "cache", 6379, 2)  # rule 3 prevents
    connect_n(c, "frontend", "api", 8080, 2)  # rule 1 allows
    assert poll(lambda: count(records(c, "flow", rev, "frontend", "db", port=5432)) == 3 and
                count(records(c, "flow", rev, "frontend", "cache", port=6379)) == 2 and
                count(records(c, "flow", rev, "frontend", "api", port=8080)) == 2, 15)
    lateral = records(c, "flow", rev, "frontend", "db", port=5432)
    # recorded once (by the source's Defender), both ends named
    assert {(f["reporter"], f["mode"], f["effect"], f["matched"], f["would_effect"])
            for f in lateral} == {("node-1", "observed", "allow", False, "prevent")}
    assert {(f["src"]["image"], f["dst"]["image"], f["dst"]["host"]) for f in lateral} == {
        ("shop/frontend:1.0", "shop/db:13", "node-2")}
    blocked = records(c, "flow", rev, "frontend", "cache", port=6379)
    assert {(f["mode"], f["would_effect"], f["would_rule_id"]) for f in blocked} == {
        ("observed", "prevent", 3)}
    allowed = records(c, "flow", rev, "frontend", "api", port=8080)  # covered by rule 1: no hole
    assert {(f["mode"], f["effect"], f["rule_id"], f.get("would_effect")) for f in allowed} == {
        ("observed", "allow", 1, None)}
    assert poll(lambda: count(records(c, "audit", rev, "frontend", "db", port=5432)) == 3, 15)
    assert all(a["would"] and not a["blocked"] and "enforcement is off" in a["message"]
               for a in records(c, "audit", rev, "frontend", "db", port=5432))
    apply(c)
    assert c.connect("frontend", "db", 5432).outcome == "refused"


def test_enforcement_off_reaches_the_consoles_flows_and_radar(cluster: Cluster,
                                                             tmp_path: Path) -> None:
    """Issue 12's finding, end to end with a real Console and a managed Defender
    per host (last in the module: the standalone Defenders stay stopped): with
    container enforcement off, the connections of that window reach
    /api/v1/flows with both ends, cross-host ones too, and Radar says what the
    policy would do apart from what happened, with no hole where a rule applies."""
    c = cluster
    for d in c.defenders:
        if d.proc is not None:
            d.stop()
    with console_process(tmp_path) as (url, token, http):
        defenders = [Defender(c.lab, h, tmp_path, c.policy_file, c.cluster_file,
                              console=(url, token)) for h in ("node-1", "node-2")]
        try:
            def apply(**spec: Any) -> int:
                r = http.post("/api/v1/policy/import", json=policy(0, **spec))
                assert r.status_code == 200 and r.json()["applied"], r.text
                return int(r.json()["revision"])

            revision = apply()
            for d in defenders:
                d.start()
            for d in defenders:
                d.wait_revision(revision)
            assert poll(lambda: len(http.get("/api/v1/inventory").json()["containers"]) == 6
                        and all((d.status() or {}).get("cluster_revision") for d in defenders),
                        20)
            assert c.connect("frontend", "db", 5432).outcome == "refused"  # enforced
            revision = apply(containerEnabled=False)
            for d in defenders:
                d.wait_revision(revision)
            connect_n(c, "frontend", "db", 5432, 3)  # lateral, across hosts
            connect_n(c, "frontend", "api", 8080, 2)  # rule 1 allows
            connect_n(c, "api", "db", 5432, 1)  # rule 5, across hosts
            connect_n(c, "api", "payments", 9090, 1)  # rule 4 alerts, across hosts

            def observed() -> dict[tuple[str, str, int], dict[str, Any]]:
                items = http.get("/api/v1/flows", params={"mode": "observed",
                                                          "limit": 500}).json()["items"]
                return {(f["src"], f["dst"], f["port"]): f for f in items}

            want = {("image:shop/frontend:1.0", "image:shop/db:13", 5432),
                    ("image:shop/frontend:1.0", "image:shop/api:2.1", 8080),
                    ("image:shop/api:2.1", "image:shop/db:13", 5432),
                    ("image:shop/api:2.1", "image:shop/payments:1.4", 9090)}
            assert poll(lambda: want <= set(observed()), 20), observed()
            flows = observed()
            lateral = flows[("image:shop/frontend:1.0", "image:shop/db:13", 5432)]
            assert (lateral["verdict"], lateral["would"], lateral["count"]) == (
                "observed", "prevent", 3)
            allowed = flows[("image:shop/frontend:1.0", "image:shop/api:2.1", 8080)]
            assert (allowed["verdict"], allowed["ruleId"], allowed["would"]) == ("allow", 1, "")
            alert = flows[("image:shop/api:2.1", "image:shop/payments:1.4", 9090)]
            assert (alert["verdict"], alert["would"], alert["wouldRuleId"]) == (
                "observed", "alert", 4)
            would = http.get("/api/v1/audits", params={"would": "true"}).json()["items"]
            assert sum(a["count"] for a in would if a["port"] == 5432) == 3

            edges = {e["id"]: e for e in http.get("/api/v1/radar").json()["edges"]}
            db = edges["image:shop/frontend:1.0->image:shop/db:13"]
            # Enforcement off: Radar says what happened (seen: three connections
            # went through unenforced) apart from what the policy would do (the
            # default prevents), and keeps as the port's history the refused
            # connection and the three only observed (would prevent)
            assert db["label"] == "5432 seen, would prevent"
            [port] = db["ports"]
            assert (port["verdict"], port["seen"], port["count"], port["unenforced"],
                    port["enforced"]) == ("blocked", True, 4, 3, False)
            assert sorted((h["verdict"], h["would"], h["unenforced"])
                          for h in port["history"]) == [("blocked", None, 0),
                                                        ("observed", "blocked", 3)]
            api = edges["image:shop/frontend:1.0->image:shop/api:2.1"]
            assert api["hole"] is False and "observed" not in api["label"]
        finally:
            for d in defenders:
                if d.proc is not None:
                    d.stop()
    for d in defenders:
        assert d.kernel_state() == ("", "")
