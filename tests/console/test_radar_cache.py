"""The radar endpoint keeps built graphs: a repeated poll is answered from the
cache, and any change to what the graph is made of (flows, audits, policy,
inventory, overlays, time passing a Defender's staleness) shows on the next
request -- also when the change went into the store without the API."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from consoletest import ApiClient, Console

from cnnf.console.services.records import (
    AuditRecord,
    AuditService,
    FlowRecord,
    FlowService,
    prune,
)
from cnnf.model import Effect
from cnnf.model.records import HostInfo, InventoryReport, WorkloadInfo

POLICY = {
    "apiVersion": "cnnf/v1", "kind": "Policy",
    "spec": {
        "objects": [
            {"name": "api", "kind": "container", "selector": {"images": ["shop/api*"]}},
            {"name": "db", "kind": "container", "selector": {"images": ["shop/db*"]}},
        ],
        "containerRules": [{"id": 1, "name": "api-db", "src": "api", "dst": "db",
                            "ports": [5432], "effect": "allow"}],
    },
}
API = WorkloadInfo(address="10.88.0.5", image="shop/api:2", name="api-1", namespace="shop",
                   host="node-1")
DB = WorkloadInfo(address="10.88.0.6", image="shop/db:3", name="db-1", namespace="data",
                  host="node-1")


class Radar:
    """The seeded Console and the one Defender on node-1."""

    def __init__(self, console: Console, admin: ApiClient) -> None:
        self.console = console
        self.admin = admin
        assert admin.post("/api/v1/policy/import", json=POLICY).status_code == 200
        enrollment = admin.post("/api/v1/defenders/enrollment-tokens", json={}).json()["token"]
        self.credential = console.client().post("/api/v1/defenders/enroll", json={
            "enrollment_token": enrollment, "hostname": "node-1"}).json()["credential"]
        self.report([API, DB])
        self.flow(src="image:shop/api", dst="image:shop/db", port=5432, verdict="allow",
                  rule_id=1, count=4)

    def report(self, containers: list[WorkloadInfo]) -> None:
        report = InventoryReport(host=HostInfo(name="node-1", addresses=["10.1.0.1"]),
                                 containers=containers)
        r = self.console.client(self.credential).post("/api/v1/defender/inventory",
                                                      json=report.model_dump(mode="json"))
        assert r.status_code == 204, r.text

    def flow(self, *, age: timedelta = timedelta(0), **fields: Any) -> None:
        """Stored straight into the database (as another Console process would)."""
        now = self.console.clock.now() - age
        with self.console.session() as s:
            FlowService(s).record_many([FlowRecord(first_seen=now, last_seen=now, **fields)])

    def get(self, **params: str) -> dict[str, Any]:
        r = self.admin.get("/api/v1/radar", params=params)
        assert r.status_code == 200, r.text
        graph: dict[str, Any] = r.json()
        return graph

    def edges(self, **params: str) -> dict[str, dict[str, Any]]:
        return {e["id"]: e for e in self.get(**params)["edges"]}

    def nodes(self, **params: str) -> dict[str, dict[str, Any]]:
        return {n["id"]: n for n in self.get(**params)["nodes"]}

    def cached(self) -> int:
        """How many graphs the endpoint has built and kept."""
        return len(self.console.app.state.radar_cache._graphs)


@pytest.fixture
def radar(console: Console, admin: ApiClient) -> Radar:
    return Radar(console, admin)


DB_EDGE = "image:shop/api:2->image:shop/db:3"


def test_a_repeated_poll_is_answered_from_the_cache(radar: Radar) -> None:
    first = radar.admin.get("/api/v1/radar")
    kept = radar.cached()
    again = radar.admin.get("/api/v1/radar")
    assert again.content == first.content and again.headers["etag"] == first.headers["etag"]
    assert radar.cached() == kept == 1
    # Another query is another graph, kept beside the first.
    assert radar.get(view="host")["view"] == "host"
    assert radar.cached() == 2


def test_new_and_folded_flows_show_on_the_next_request(radar: Radar) -> None:
    assert radar.edges()[DB_EDGE]["count"] == 4
    radar.flow(src="image:shop/api", dst="image:shop/db", port=5432, verdict="allow",
               rule_id=1, count=3)  # folded into the same row: only the count moves
    assert radar.edges()[DB_EDGE]["count"] == 7
    radar.flow(src="image:shop/db", dst="image:shop/api", port=9000, verdict="observed")
    assert radar.edges()["image:shop/db:3->image:shop/api:2"]["hole"]


def test_pruned_flows_leave_on_the_next_request(radar: Radar) -> None:
    radar.flow(src="image:shop/db", dst="addr:203.0.113.9", port=443, verdict="observed",
               age=timedelta(days=40))
    assert "image:shop/db:3->internet" in radar.edges()
    with radar.console.session() as s:
        assert prune(s, radar.console.clock.now() - timedelta(days=30)).flows == 1
    assert "image:shop/db:3->internet" not in radar.edges()


def test_a_moving_time_window_reuses_the_graph_until_it_drops_a_flow(radar: Radar) -> None:
    radar.flow(src="image:shop/db", dst="addr:203.0.113.9", port=443, verdict="observed",
               age=timedelta(minutes=30))
    now = radar.console.clock.now()
    since = (now - timedelta(hours=1)).isoformat()
    assert "image:shop/db:3->internet" in radar.edges(since=since)
    kept = radar.cached()
    # Radar sends "now minus the window" on every poll: same flows, same graph.
    assert "image:shop/db:3->internet" in radar.edges(
        since=(now - timedelta(minutes=50)).isoformat())
    assert radar.cached() == kept
    # A start after the flow's last sight drops it.
    edges = radar.edges(since=(now - timedelta(minutes=10)).isoformat())
    assert "image:shop/db:3->internet" not in edges and DB_EDGE in edges


def test_a_policy_change_shows_on_the_next_request(radar: Radar) -> None:
    assert radar.edges()[DB_EDGE]["rules"] == [1]
    r = radar.admin.post("/api/v1/rules/container", json={
        "id": 2, "name": "db-api", "src": "db", "dst": "api", "ports": [7000],
        "effect": "prevent"})
    assert r.status_code in (200, 201), r.text
    edge = radar.edges()["image:shop/db:3->image:shop/api:2"]
    assert (edge["line"], edge["label"]) == ("dotted", "7000 blocked")


def test_an_inventory_change_shows_on_the_next_request(radar: Radar) -> None:
    assert radar.nodes()["image:shop/api:2"]["containers"] == 1
    radar.report([API, DB, API.model_copy(update={"name": "api-2", "address": "10.88.0.7"})])
    assert radar.nodes()["image:shop/api:2"]["containers"] == 2


def test_a_defender_gone_stale_takes_its_containers_off(radar: Radar) -> None:
    assert radar.nodes()["image:shop/db:3"]["containers"] == 1
    # Nothing is written: only time passes beyond the staleness limit.
    radar.console.clock.advance(6 * 60)
    nodes = radar.nodes()
    # No running image left: the flows' untagged image names are the nodes.
    assert "image:shop/db:3" not in nodes and nodes["image:shop/db"]["containers"] == 0


@pytest.mark.parametrize("change", ["replace", "delete"])
def test_an_overlay_change_shows_on_the_next_request(radar: Radar, change: str) -> None:
    def trivy(severity: str) -> dict[str, Any]:
        return {"ArtifactName": "shop/db:3", "Results": [
            {"Vulnerabilities": [{"VulnerabilityID": "CVE-1", "Severity": severity}]}]}

    upload: Callable[[str], Any] = lambda sev: radar.admin.post(  # noqa: E731
        "/api/v1/overlays/image/trivy", json=trivy(sev))
    assert upload("LOW").status_code in (200, 201)
    assert radar.nodes()["image:shop/db:3"]["severity"] == "low"
    if change == "replace":
        assert upload("CRITICAL").status_code in (200, 201)
        assert radar.nodes()["image:shop/db:3"]["severity"] == "critical"
    else:
        assert radar.admin.delete("/api/v1/overlays/image/shop/db:3").status_code == 204
        assert radar.nodes()["image:shop/db:3"]["severity"] == "unknown"


def test_a_new_audit_builds_the_graph_again(radar: Radar) -> None:
    """Audits are not drawn, but they arrive with the flows they belong to: the
    graph is built again rather than trusted."""
    radar.get()
    kept = radar.cached()
    with radar.console.session() as s:
        AuditService(s).insert_many([AuditRecord(
            time=radar.console.clock.now(), blocked=True, effect=Effect.PREVENT, port=22,
            src_image="shop/api:2", dst_image="shop/db:3")])
    radar.get()
    assert radar.cached() == kept + 1
