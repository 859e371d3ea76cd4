"""The radar endpoint and the data overlays (Trivy report ingestion) through the API."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from consoletest import ApiClient, Console
from fastapi import FastAPI

from cnnf.console.security import Role
from cnnf.console.services.overlays import summarise_trivy
from cnnf.console.services.records import FlowRecord, FlowService
from cnnf.console.ui import mount_ui
from cnnf.model.records import HostInfo, InventoryReport, WorkloadInfo

TRIVY = {
    "SchemaVersion": 2,
    "ArtifactName": "shop/db:3",
    "ArtifactType": "container_image",
    "Results": [
        {"Target": "shop/db:3 (debian 12)", "Class": "os-pkgs", "Vulnerabilities": [
            {"VulnerabilityID": "CVE-2026-0001", "PkgName": "libssl3", "Severity": "CRITICAL",
             "InstalledVersion": "3.0.1", "FixedVersion": "3.0.9", "Title": "bad"},
            {"VulnerabilityID": "CVE-2026-0002", "PkgName": "zlib", "Severity": "HIGH"},
            {"VulnerabilityID": "CVE-2026-0003", "PkgName": "zlib", "Severity": "HIGH"},
            {"VulnerabilityID": "CVE-2026-0004", "PkgName": "tar", "Severity": "LOW"},
            {"VulnerabilityID": "CVE-2026-0005", "PkgName": "x", "Severity": "WEIRD"},
        ]},
        {"Target": "Dockerfile", "Class": "config", "MisconfSummary": {"Successes": 20,
                                                                       "Failures": 3}},
        {"Target": "app", "Class": "lang-pkgs", "Vulnerabilities": None},
    ],
}

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


def _seed(console: Console, admin: ApiClient) -> None:
    r = admin.post("/api/v1/policy/import", json=POLICY)
    assert r.status_code == 200, r.text
    now = console.clock.now()
    flows = [
        FlowRecord(src="image:shop/api", dst="image:shop/db", port=5432, verdict="allow",
                   rule_id=1, rule_name="api-db", count=4, first_seen=now - timedelta(hours=3),
                   last_seen=now),
        FlowRecord(src="image:shop/api", dst="addr:203.0.113.9", port=443, verdict="observed",
                   count=2, first_seen=now - timedelta(hours=5),
                   last_seen=now - timedelta(hours=2)),
    ]
    with console.session() as s:
        FlowService(s).record_many(flows)
    # The host's Defender enrolls and reports what runs there.
    enrollment = admin.post("/api/v1/defenders/enrollment-tokens", json={}).json()["token"]
    credential = console.client().post("/api/v1/defenders/enroll", json={
        "enrollment_token": enrollment, "hostname": "node-1"}).json()["credential"]
    report = InventoryReport(
        host=HostInfo(name="node-1", addresses=["10.1.0.1"]),
        containers=[WorkloadInfo(address="10.88.0.5", image="shop/api:2", name="api-1",
                                 namespace="shop", host="node-1"),
                    WorkloadInfo(address="10.88.0.6", image="shop/db:3", name="db-1",
                                 namespace="data", host="node-1")])
    r = console.client(credential).post("/api/v1/defender/inventory",
                                        json=report.model_dump(mode="json"))
    assert r.status_code == 204, r.text


def test_summarise_trivy_counts_by_severity_and_compliance() -> None:
    name, counts, compliance, top = summarise_trivy(TRIVY)
    assert name == "shop/db:3"
    assert counts == {"critical": 1, "high": 2, "medium": 0, "low": 1, "unknown": 1}
    assert compliance == {"passed": 20, "failed": 3}
    assert [f.id for f in top][:3] == ["CVE-2026-0001", "CVE-2026-0002", "CVE-2026-0003"]
    misconf = {"ArtifactName": "node-1", "Results": [{"Misconfigurations": [
        {"ID": "a", "Status": "PASS"}, {"ID": "b", "Status": "FAIL"}, {"ID": "c"}]}]}
    assert summarise_trivy(misconf)[2] == {"passed": 1, "failed": 2}


@pytest.mark.parametrize(("report", "path"), [
    ([], "body"),
    ({"hello": 1}, "body"),
    ({"ArtifactName": "x", "Results": {"a": 1}}, "Results"),
    ({"ArtifactName": "x", "Results": [1]}, "Results[0]"),
    ({"ArtifactName": "x", "Results": [{"Vulnerabilities": [3]}]},
     "Results[0].Vulnerabilities[0]"),
    ({"ArtifactName": "x", "Results": [{"Vulnerabilities": False}]},
     "Results[0].Vulnerabilities"),
    ({"ArtifactName": "x", "Results": [{"MisconfSummary": {"Successes": "3"}}]},
     "Results[0].MisconfSummary.Successes"),
    ({"Results": []}, "body"),
    ({"ArtifactName": " ", "Results": []}, "ArtifactName"),
    ({"ArtifactName": 7}, "ArtifactName"),
])
def test_bad_trivy_reports_name_the_field(admin: ApiClient, report: Any, path: str) -> None:
    r = admin.post("/api/v1/overlays/image/trivy", json=report)
    assert r.status_code == 422, r.text
    assert r.json()["errors"][0]["path"].endswith(path)
    assert admin.get("/api/v1/overlays").json() == []


def test_overlay_ingest_replace_read_delete(console: Console, admin: ApiClient) -> None:
    r = admin.post("/api/v1/overlays/image/trivy", json=TRIVY)
    assert r.status_code == 200, r.text
    assert r.json()["worst"] == "critical"
    fixed = {**TRIVY, "Results": [{"Vulnerabilities": [
        {"VulnerabilityID": "CVE-1", "Severity": "MEDIUM"}]}]}
    assert admin.post("/api/v1/overlays/image/trivy", json=fixed).json()["worst"] == "medium"
    got = admin.get("/api/v1/overlays/image/shop/db:3").json()
    assert got["vulnerabilities"]["critical"] == 0 and got["vulnerabilities"]["medium"] == 1
    r = admin.post("/api/v1/overlays/host/trivy?name=node-1",
                   json={"ArtifactName": "/", "Results": []})
    assert r.json()["worst"] == "none"
    assert [(o["kind"], o["name"]) for o in admin.get("/api/v1/overlays").json()] == [
        ("host", "node-1"), ("image", "shop/db:3")]
    auditor = console.as_role(Role.AUDITOR)
    assert auditor.post("/api/v1/overlays/image/trivy", json=TRIVY).status_code == 403
    assert admin.delete("/api/v1/overlays/image/shop/db:3").status_code == 204
    assert admin.get("/api/v1/overlays/image/shop/db:3").status_code == 404


def test_radar_graph_from_policy_flows_inventory_and_overlays(console: Console,
                                                              admin: ApiClient) -> None:
    _seed(console, admin)
    admin.post("/api/v1/overlays/image/trivy", json=TRIVY)
    g = console.as_role(Role.AUDITOR).get("/api/v1/radar").json()
    nodes = {n["id"]: n for n in g["nodes"]}
    assert set(nodes) == {"image:shop/api:2", "image:shop/db:3", "internet"}
    assert nodes["image:shop/db:3"]["severity"] == "critical"
    assert nodes["image:shop/db:3"]["parent"] == "group:namespace:data"
    edges = {e["id"]: e for e in g["edges"]}
    db_edge = edges["image:shop/api:2->image:shop/db:3"]
    assert (db_edge["line"], db_edge["label"], db_edge["count"]) == ("solid", "5432 allowed", 4)
    assert edges["image:shop/api:2->internet"]["hole"]
    assert g["inventoryRevision"] >= 1 and g["revision"] >= 1

    # The time window drops the flow last seen 2 hours ago.
    since = (console.clock.now() - timedelta(hours=1)).isoformat()
    g = admin.get("/api/v1/radar", params={"since": since}).json()
    assert "image:shop/api:2->internet" not in {e["id"] for e in g["edges"]}

    g = admin.get("/api/v1/radar", params={"verdict": "observed"}).json()
    assert [e["id"] for e in g["edges"]] == ["image:shop/api:2->internet"]
    g = admin.get("/api/v1/radar", params={"view": "host"}).json()
    assert [n["id"] for n in g["nodes"]] == ["host:node-1"]


def test_radar_counts_pods_and_lists_every_pods_images(console: Console,
                                                        admin: ApiClient) -> None:
    # A Kubernetes node's Defender reports one record per pod address: a pod of
    # one container with two addresses, a pod with a sidecar; and a container in no pod.
    def pod(name: str, address: str, *images: str) -> WorkloadInfo:
        return WorkloadInfo(address=address, image="kube/web:1.0", name="web",
                            namespace="storefront", pod=name, host="node-3",
                            images=list(images))

    enrollment = admin.post("/api/v1/defenders/enrollment-tokens", json={}).json()["token"]
    credential = console.client().post("/api/v1/defenders/enroll", json={
        "enrollment_token": enrollment, "hostname": "node-3"}).json()["credential"]
    report = InventoryReport(host=HostInfo(name="node-3", addresses=["10.10.0.3"]), containers=[
        pod("web-a", "10.65.1.2"), pod("web-a", "fd00::2"),
        pod("web-b", "10.65.1.3", "kube/web:1.0", "kube/log-agent:0.3"),
        WorkloadInfo(address="10.88.0.7", image="kube/web:1.0", name="web-plain", id="c7",
                     host="node-3")])
    r = console.client(credential).post("/api/v1/defender/inventory",
                                        json=report.model_dump(mode="json"))
    assert r.status_code == 204, r.text
    web = {n["id"]: n for n in admin.get("/api/v1/radar").json()["nodes"]}["image:kube/web:1.0"]
    assert (web["podCount"], web["containers"], web["containerNames"]) == (2, 1, ["web-plain"])
    assert [(p["name"], p["images"]) for p in web["pods"]] == [
        ("web-a", ["kube/web:1.0"]), ("web-b", ["kube/web:1.0", "kube/log-agent:0.3"])]
    host = admin.get("/api/v1/radar", params={"view": "host"}).json()["nodes"][0]
    assert (host["id"], host["podCount"], host["containers"]) == ("host:node-3", 2, 1)
    # The OpenAPI description says what the counts mean.
    described = console.app.openapi()["paths"]["/api/v1/radar"]["get"]["description"]
    assert "`podCount`" in described and "`containers`: the containers that run in no pod" in (
        " ".join(described.split()))


@pytest.mark.parametrize(("params", "field"), [
    ({"view": "pods"}, "view"), ({"verdict": "green"}, "verdict"),
    ({"since": "yesterday"}, "since"), ({"group": "zone"}, "group"),
])
def test_radar_refuses_bad_parameters(admin: ApiClient, params: dict[str, str],
                                      field: str) -> None:
    r = admin.get("/api/v1/radar", params=params)
    assert r.status_code == 422
    assert r.json()["errors"][0]["path"] == field


def test_radar_needs_credentials(console: Console) -> None:
    assert console.client().get("/api/v1/radar").status_code == 401


def test_without_a_build_root_says_how_to_build_it(tmp_path: Any) -> None:
    app = FastAPI()
    mount_ui(app, tmp_path / "no-build")
    client = ApiClient(app)
    try:
        r = client.get("/")
        assert r.status_code == 200
        assert "The web UI is not built" in r.text and "scripts/bootstrap.sh" in r.text
    finally:
        client.close()


def test_the_console_serves_the_ui_after_the_api(console: Console) -> None:
    # The UI is mounted at / after every API route: it must not shadow them.
    assert console.client().get("/").status_code == 200
    assert console.client().get("/api/v1/radar").status_code == 401


def test_an_unchanged_graph_is_answered_with_304(console: Console, admin: ApiClient) -> None:
    _seed(console, admin)
    first = admin.get("/api/v1/radar")
    etag = first.headers["etag"]
    again = admin.get("/api/v1/radar", headers={"If-None-Match": etag})
    assert (again.status_code, again.content) == (304, b"")
    # Any change (here a new rule) is a new graph with a new tag.
    admin.post("/api/v1/objects", json={"name": "lan", "kind": "subnet",
                                        "cidrs": ["192.0.2.0/24"]})
    changed = admin.get("/api/v1/radar", headers={"If-None-Match": etag})
    assert changed.status_code == 200 and changed.headers["etag"] != etag
    assert "subnet:lan" in {n["id"] for n in changed.json()["nodes"]}
