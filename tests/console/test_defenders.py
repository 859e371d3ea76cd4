"""Defender management and the Defender endpoints, against SQLite and PostgreSQL:
enrollment, credentials (separate from user tokens; revoked -> 401), long-polls
woken by policy and inventory changes (and by the store alone, for changes made
by another Console process), idempotent report batches, the cluster inventory."""

from __future__ import annotations

import asyncio
import csv
import io
import re
import threading
import time
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from consoletest import ApiClient, Console
from sqlalchemy import func, select, update

from cnnf.console.api.defender import SharedRead
from cnnf.console.security import Role
from cnnf.console.services import defenders
from cnnf.console.services.defenders import CredentialCache, DefenderPrincipal, Notifier
from cnnf.console.store.models import DefenderRow, ReportBatchRow, SettingsRow
from cnnf.model import Effect
from cnnf.model.records import (
    AuditEvent,
    EndpointInfo,
    FlowRecord,
    HostInfo,
    InventoryReport,
    ReportBatch,
    WorkloadInfo,
    overload_audit,
)
from cnnf.model.rule import RuleKind
from cnnf.policy.document import load_policy

API = "/api/v1"
T0 = 1_767_322_800.0  # 2026-01-02 03:00:00 UTC


def enrollment_token(admin: ApiClient) -> str:
    r = admin.post(f"{API}/defenders/enrollment-tokens", json={})
    assert r.status_code == 200, r.text
    token: str = r.json()["token"]
    assert token.startswith("cnnfe_")
    return token


def enroll(console: Console, admin: ApiClient, hostname: str = "node-1") -> tuple[str, ApiClient]:
    r = console.client().post(f"{API}/defenders/enroll", json={
        "enrollment_token": enrollment_token(admin), "hostname": hostname, "version": "0.1.0"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["credential"].startswith("cnnfd_")
    return body["defender_id"], console.client(body["credential"])


def container(name: str, image: str, address: str, host: str = "node-1") -> EndpointInfo:
    return EndpointInfo(kind="container", address=address, image=image, container=name,
                        host=host, namespace="shop")


API_EP = container("api", "shop/api", "10.1.0.2")
DB_EP = container("db", "shop/db", "10.2.0.3", host="node-2")


def audit(port: int = 5432, count: int = 1, **kw: Any) -> AuditEvent:
    data: dict[str, Any] = {
        "time": T0, "type": RuleKind.CONTAINER, "effect": Effect.PREVENT, "blocked": True,
        "rule_id": 6, "rule_name": "api-not-db", "src": API_EP, "dst": DB_EP, "port": port,
        "message": "blocked connection", "count": count, "reporter": "node-1"}
    data.update(kw)
    return AuditEvent(**data)


def flow(port: int = 5432, count: int = 3, **kw: Any) -> FlowRecord:
    data: dict[str, Any] = {
        "src": API_EP, "dst": DB_EP, "port": port, "effect": Effect.PREVENT, "matched": True,
        "rule_id": 6, "rule_name": "api-not-db", "rule_kind": RuleKind.CONTAINER,
        "count": count, "first_seen": T0, "last_seen": T0 + 5}
    data.update(kw)
    return FlowRecord(**data)


def post_batch(defender: ApiClient, batch: ReportBatch) -> httpx.Response:
    return defender.post(f"{API}/defender/reports", content=batch.model_dump_json(),
                         headers={"Content-Type": "application/json"})


def report(host: str, *containers: tuple[str, str]) -> InventoryReport:
    return InventoryReport(
        host=HostInfo(name=host, addresses=[f"192.168.0.{len(host)}"]),
        containers=[WorkloadInfo(address=a, image="shop/api", name=n, host=host)
                    for n, a in containers],
        version="0.1.0", protected=len(containers))


# --- enrollment, credentials, the list ------------------------------------------------


def test_enroll_then_the_credential_fetches_the_policy_and_the_list_shows_it(
    console: Console, admin: ApiClient
) -> None:
    defender_id, defender = enroll(console, admin)
    r = defender.get(f"{API}/defender/policy", params={"revision": -1, "wait": 0})
    assert r.status_code == 200
    policy = load_policy(r.json()["document"])
    assert r.json()["revision"] == policy.revision == 0
    # The same revision again: nothing new (204), also after a short wait.
    assert defender.get(f"{API}/defender/policy", params={"revision": 0}).status_code == 204
    [info] = console.as_role(Role.AUDITOR).get(f"{API}/defenders").json()
    assert info["id"] == defender_id
    assert (info["hostname"], info["version"], info["status"]) == ("node-1", "0.1.0",
                                                                  "connected")
    console.clock.advance(31)
    [info] = admin.get(f"{API}/defenders").json()
    assert info["status"] == "disconnected"
    defender.get(f"{API}/defender/policy", params={"revision": 0})
    [info] = admin.get(f"{API}/defenders").json()
    assert info["status"] == "connected"


@pytest.mark.parametrize(("token", "status"), [
    ("cnnfe_wrong", 401),  # well formed, unknown
    ("", 422), ("x" * 201, 422),  # malformed: refused at the edge
])
def test_a_bad_enrollment_token_is_refused_and_nothing_is_enrolled(
    console: Console, admin: ApiClient, token: str, status: int
) -> None:
    enrollment_token(admin)  # a valid one exists, but is not the one sent
    r = console.client().post(f"{API}/defenders/enroll",
                              json={"enrollment_token": token, "hostname": "node-1"})
    assert r.status_code == status, r.text
    if status == 422:
        assert r.json()["errors"][0]["path"] == "enrollment_token"
    else:
        assert r.json()["detail"]
    assert admin.get(f"{API}/defenders").json() == []


def test_an_expired_enrollment_token_is_refused(console: Console, admin: ApiClient) -> None:
    r = admin.post(f"{API}/defenders/enrollment-tokens", json={"expiresInHours": 1})
    token = r.json()["token"]
    console.clock.advance(3601)
    r = console.client().post(f"{API}/defenders/enroll",
                              json={"enrollment_token": token, "hostname": "node-1"})
    assert r.status_code == 401
    assert "expired" in r.json()["detail"]


def test_only_admins_create_enrollment_tokens_and_revoke(console: Console) -> None:
    for role in (Role.OPERATOR, Role.AUDITOR):
        client = console.as_role(role)
        assert client.post(f"{API}/defenders/enrollment-tokens", json={}).status_code == 403
        assert client.delete(f"{API}/defenders/abc").status_code == 403


def test_user_tokens_get_403_on_defender_endpoints_and_credentials_401_elsewhere(
    console: Console, admin: ApiClient
) -> None:
    _, defender = enroll(console, admin)
    assert admin.get(f"{API}/defender/policy").status_code == 403
    assert "defender" in admin.get(f"{API}/defender/policy").json()["detail"]
    assert defender.get(f"{API}/policy").status_code == 401
    assert defender.get(f"{API}/defenders").status_code == 401


def test_the_matrix_with_a_defender_credential(console: Console, admin: ApiClient) -> None:
    """Every published operation with a Defender credential: the Defender
    endpoints accept it; every user endpoint refuses it (401)."""
    _, defender = enroll(console, admin)
    spec = console.app.openapi()
    seen = 0
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            if "security" not in operation:
                continue  # public
            url = re.sub(r"{(\w+)}", "x", path)
            body = {} if method in ("post", "put", "patch") else None
            r = defender.request(method.upper(), url, json=body,
                                 params={"revision": -1, "wait": 0})
            if path.startswith(f"{API}/defender/"):
                (scopes,) = operation["security"][0].values()
                assert scopes == ["defender"]
                assert r.status_code not in (401, 403), f"{method} {path}: {r.text}"
                seen += 1
            else:
                assert r.status_code == 401, f"{method} {path}: {r.status_code}"
    assert seen == 4


def test_a_revoked_defender_gets_401_on_every_call(console: Console, admin: ApiClient) -> None:
    defender_id, defender = enroll(console, admin)
    assert admin.delete(f"{API}/defenders/{defender_id}").status_code == 204
    for method, path in (("GET", "policy"), ("GET", "inventory"), ("POST", "inventory"),
                         ("POST", "reports")):
        r = defender.request(method, f"{API}/defender/{path}", json={})
        assert r.status_code == 401, (method, path, r.status_code)
        assert r.headers["www-authenticate"] == "Bearer"
    [info] = admin.get(f"{API}/defenders").json()
    assert info["status"] == "revoked"
    assert admin.delete(f"{API}/defenders/no-such").status_code == 404


# --- reports ---------------------------------------------------------------------------


def test_batch_ids_are_per_defender_another_defenders_id_is_stored_not_a_duplicate(
    console: Console, admin: ApiClient
) -> None:
    """A duplicate is the same Defender's batch again; two Defenders sending one id
    (a state directory copied to another node) each get theirs stored, where the
    second was taken for a duplicate and its records dropped without a trace."""
    _, d1 = enroll(console, admin, "node-1")
    _, d2 = enroll(console, admin, "node-2")
    assert post_batch(d1, ReportBatch(batch_id="b-1", audits=[audit(count=2)])).json() == {
        "accepted": True, "duplicate": False}
    r = post_batch(d2, ReportBatch(batch_id="b-1", audits=[audit(count=5)],
                                   flows=[flow(count=9)]))
    assert r.json() == {"accepted": True, "duplicate": False}, r.text
    audits = admin.get(f"{API}/audits").json()["items"]
    assert sorted((a["defender"], a["count"]) for a in audits) == [("node-1", 2), ("node-2", 5)]
    [f] = admin.get(f"{API}/flows").json()["items"]
    assert f["count"] == 9
    for d in (d1, d2):  # each one's own redelivery: a duplicate, stored once
        again = post_batch(d, ReportBatch(batch_id="b-1", audits=[audit(count=7)]))
        assert again.json() == {"accepted": True, "duplicate": True}
    assert admin.get(f"{API}/audits").json()["total"] == 2


def test_a_batch_is_stored_once_flows_merged_and_audits_folded(
    console: Console, admin: ApiClient
) -> None:
    _, defender = enroll(console, admin)
    batch = ReportBatch(batch_id="b-1", flows=[flow(count=3)], audits=[audit(count=2)])
    r = post_batch(defender, batch)
    assert r.status_code == 200
    assert r.json() == {"accepted": True, "duplicate": False}
    again = post_batch(defender, batch)  # redelivered after a lost answer
    assert again.json() == {"accepted": True, "duplicate": True}
    more = ReportBatch(batch_id="b-2", flows=[flow(count=4, last_seen=T0 + 60)])
    assert post_batch(defender, more).json()["duplicate"] is False

    [f] = admin.get(f"{API}/flows").json()["items"]
    assert (f["src"], f["dst"], f["port"], f["verdict"], f["ruleName"]) == (
        "image:shop/api", "image:shop/db", 5432, "prevent", "api-not-db")
    assert f["count"] == 7  # 3 + 4, the redelivery not counted
    page = admin.get(f"{API}/audits").json()
    assert page["total"] == 1
    [a] = page["items"]
    assert (a["srcImage"], a["dstContainer"], a["dstHostname"], a["blocked"], a["count"],
            a["defender"]) == ("shop/api", "db", "node-2", True, 2, "node-1")
    assert a["time"].startswith("2026-01-02T03:00:00")

    # The audit names the Defender whose credential sent it, whatever the body claims.
    spoof = ReportBatch(batch_id="b-3", audits=[audit(port=22, reporter="node-2")])
    assert post_batch(defender, spoof).status_code == 200
    items = admin.get(f"{API}/audits").json()["items"]
    assert sorted((i["port"], i["defender"]) for i in items) == [(22, "node-1"), (5432, "node-1")]


WEB_POD = EndpointInfo(kind="container", address="10.65.1.2", image="kube/web:1.0",
                       container="web", namespace="storefront", pod="web-7d4b9c6f5-x2k8p",
                       host="node-1", labels={"app": "web"})
PG_POD = EndpointInfo(kind="container", address="10.65.2.3", image="kube/postgres:15",
                      container="postgres", namespace="data", pod="postgres-0", host="node-2")


def test_audits_name_the_pods_in_the_api_and_the_csv(console: Console, admin: ApiClient) -> None:
    _, defender = enroll(console, admin)
    batch = ReportBatch(batch_id="b-1", audits=[audit(src=WEB_POD, dst=PG_POD),
                                                audit(port=22)])
    assert post_batch(defender, batch).status_code == 200
    items = {a["port"]: a for a in admin.get(f"{API}/audits").json()["items"]}
    pod = items[5432]
    assert {k: pod[k] for k in ("srcImage", "srcContainer", "srcNamespace", "srcPod",
                                "dstImage", "dstContainer", "dstNamespace", "dstPod")} == {
        "srcImage": "kube/web:1.0", "srcContainer": "web", "srcNamespace": "storefront",
        "srcPod": "web-7d4b9c6f5-x2k8p", "dstImage": "kube/postgres:15",
        "dstContainer": "postgres", "dstNamespace": "data", "dstPod": "postgres-0"}
    # A container that is no pod names none.
    assert (items[22]["srcPod"], items[22]["dstPod"]) == ("", "")

    header, *rows = csv.reader(io.StringIO(admin.get(f"{API}/audits/csv").text))
    assert header[-5:] == ["SrcNamespace", "DstNamespace", "SrcPod", "DstPod", "Would"]
    by_port = {row[header.index("Port")]: dict(zip(header, row, strict=True)) for row in rows}
    assert {k: by_port["5432"][k] for k in header[-5:-1]} == {
        "SrcNamespace": "storefront", "DstNamespace": "data",
        "SrcPod": "web-7d4b9c6f5-x2k8p", "DstPod": "postgres-0"}
    assert (by_port["22"]["SrcPod"], by_port["22"]["DstPod"]) == ("", "")

    # Longer than the column: cut, as the other names are, not refused.
    long = ReportBatch(batch_id="b-2", audits=[audit(port=80, src=WEB_POD.model_copy(
        update={"pod": "p" * 400}))])
    assert post_batch(defender, long).status_code == 200
    [cut] = admin.get(f"{API}/audits", params={"limit": 1}).json()["items"]
    assert cut["port"] == 80 and cut["srcPod"] == "p" * 300

    # The published API document names them as the answers do.
    stored = console.client().get(f"{API}/openapi.json").json()[
        "components"]["schemas"]["StoredAudit"]["properties"]
    assert {k: (stored[k]["type"], stored[k]["maxLength"]) for k in ("srcPod", "dstPod")} == {
        "srcPod": ("string", 300), "dstPod": ("string", 300)}


def test_unmatched_flows_are_observed_unless_the_default_blocks(
    console: Console, admin: ApiClient
) -> None:
    _, defender = enroll(console, admin)
    batch = ReportBatch(batch_id="b-1", flows=[
        flow(port=80, effect=Effect.ALLOW, matched=False, rule_id=None, rule_name=None,
             rule_kind=None),
        flow(port=81, effect=Effect.PREVENT, matched=False, rule_id=None, rule_name=None,
             rule_kind=None,
             dst=EndpointInfo(kind="address", address="203.0.113.9", domain="x.example")),
    ])
    assert post_batch(defender, batch).status_code == 200
    items = {f["port"]: f for f in admin.get(f"{API}/flows").json()["items"]}
    assert (items[80]["verdict"], items[80]["ruleId"]) == ("observed", 0)
    assert (items[81]["verdict"], items[81]["dst"]) == ("prevent", "dns:x.example")


def test_a_batch_with_a_bad_record_is_refused_whole_naming_it(
    console: Console, admin: ApiClient
) -> None:
    _, defender = enroll(console, admin)
    bad = ReportBatch(batch_id="b-1", flows=[flow()], audits=[audit(), audit(port=0)])
    r = post_batch(defender, bad)
    assert r.status_code == 422
    assert r.json()["errors"][0]["path"] == "audits[1].port"
    assert admin.get(f"{API}/flows").json()["total"] == 0
    assert admin.get(f"{API}/audits").json()["total"] == 0
    # Nothing of it was kept, not even its id: the corrected batch is stored.
    good = ReportBatch(batch_id="b-1", flows=[flow()], audits=[audit()])
    assert post_batch(defender, good).json()["duplicate"] is False
    assert admin.get(f"{API}/audits").json()["total"] == 1


# --- overload audits ------------------------------------------------------------------

FRONTEND_EP = EndpointInfo(kind="container", address="10.1.0.9", image="shop/frontend:1.0",
                           container="frontend", namespace="shop", host="node-1")
FLOOD_MESSAGE = ("overload: the admission limit (1000 new connections/s per source) dropped "
                 "52,311 SYNs from shop/frontend:1.0 (frontend) in 20 s")


def overloads() -> list[AuditEvent]:
    """What node-1's Defender reports for its two top flooding sources."""
    return [
        overload_audit(T0 + 20, FRONTEND_EP, host="node-1", dropped=52_311, seconds=20,
                       rate=1000, reporter="node-1"),
        overload_audit(T0 + 20, EndpointInfo(kind="address", address="203.0.113.9"),
                       host="node-1", dropped=880, seconds=20, rate=1000, reporter="node-1"),
    ]


def test_overload_audits_are_stored_listed_filtered_and_downloaded(
    console: Console, admin: ApiClient
) -> None:
    _, defender = enroll(console, admin)
    batch = ReportBatch(batch_id="b-1", audits=[audit(), *overloads()])
    r = post_batch(defender, batch)
    assert r.status_code == 200, r.text
    assert r.json() == {"accepted": True, "duplicate": False}

    page = admin.get(f"{API}/audits", params={"type": "overload"}).json()
    assert page["total"] == 2
    other, flood = page["items"]  # newest first; at the same time, the last stored first
    assert {k: flood[k] for k in (
        "type", "effect", "blocked", "ruleId", "ruleName", "srcImage", "srcContainer",
        "srcNamespace", "srcHostname", "srcAddress", "dstImage", "dstContainer",
        "dstHostname", "dstAddress", "port", "count", "msg", "defender")} == {
        "type": "overload", "effect": "prevent", "blocked": True, "ruleId": None,
        "ruleName": "admission limit", "srcImage": "shop/frontend:1.0", "srcContainer": "frontend",
        "srcNamespace": "shop", "srcHostname": "node-1", "srcAddress": "10.1.0.9",
        "dstImage": "", "dstContainer": "", "dstHostname": "node-1", "dstAddress": "",
        "port": 0, "count": 52_311, "msg": FLOOD_MESSAGE, "defender": "node-1"}
    assert flood["time"].startswith("2026-01-02T03:00:20")
    assert (other["srcImage"], other["srcAddress"], other["count"]) == ("", "203.0.113.9", 880)

    # The other filters work on them as on any audit; the rule audits stay apart.
    def total(**params: str) -> int:
        r = admin.get(f"{API}/audits", params=params)
        assert r.status_code == 200, r.text
        count: int = r.json()["total"]
        return count

    assert total() == 3
    assert total(type="container") == 1 and total(type="host") == 0
    assert total(type="overload", src_image="shop/frontend*") == 1
    assert total(type="overload", host="node-1") == 2
    assert total(type="overload", blocked="false") == 0
    r = admin.get(f"{API}/audits", params={"type": "flood"})
    assert r.status_code == 422 and r.json()["errors"][0]["path"] == "type"

    r = admin.get(f"{API}/audits/csv", params={"type": "overload"})
    assert r.status_code == 200
    header, *rows = csv.reader(io.StringIO(r.text))
    by_count = {row[header.index("Count")]: dict(zip(header, row, strict=True)) for row in rows}
    assert set(by_count) == {"52311", "880"}
    assert by_count["52311"] == {
        "Time": "2026-01-02T03:00:20+00:00", "Type": "overload", "RuleName": "admission limit",
        "Block": "true",
        "SrcImageName": "shop/frontend:1.0", "SrcContainerName": "frontend",
        "DstImageName": "", "DstContainerName": "", "Port": "", "DstSubnet": "",
        "DstDomain": "", "SrcHostname": "node-1", "DstHostname": "node-1",
        "Msg": FLOOD_MESSAGE, "Count": "52311", "SrcNamespace": "shop", "DstNamespace": "",
        "SrcPod": "", "DstPod": "", "Would": "false"}
    every = list(csv.reader(io.StringIO(admin.get(f"{API}/audits/csv").text)))
    assert sorted((row[1], row[8]) for row in every[1:]) == [
        ("container", "5432"), ("overload", ""), ("overload", "")]


def test_overload_audits_draw_no_edge_on_radar(console: Console, admin: ApiClient) -> None:
    _, defender = enroll(console, admin)
    r = defender.post(f"{API}/defender/inventory", json=InventoryReport(
        host=HostInfo(name="node-1", addresses=["192.168.0.1"]),
        containers=[WorkloadInfo(address="10.1.0.9", image="shop/frontend:1.0",
                                 name="frontend", namespace="shop", host="node-1"),
                    WorkloadInfo(address="10.1.0.2", image="shop/api", name="api",
                                 namespace="shop", host="node-1")],
        protected=2).model_dump(mode="json"))
    assert r.status_code == 204
    assert post_batch(defender, ReportBatch(batch_id="b-1", flows=[flow()])).status_code == 200
    before = {view: admin.get(f"{API}/radar", params={"view": view}).json()
              for view in ("container", "host")}
    assert before["container"]["edges"]
    assert post_batch(defender, ReportBatch(batch_id="b-2", audits=overloads())).json() == {
        "accepted": True, "duplicate": False}
    for view, graph in before.items():
        after = admin.get(f"{API}/radar", params={"view": view})
        assert after.status_code == 200, after.text
        assert (after.json()["nodes"], after.json()["edges"]) == (graph["nodes"],
                                                                  graph["edges"]), view


@pytest.mark.parametrize("kind", [RuleKind.CONTAINER, RuleKind.HOST])
def test_port_zero_is_refused_unless_the_audit_is_an_overload(
    console: Console, admin: ApiClient, kind: RuleKind
) -> None:
    _, defender = enroll(console, admin)
    r = post_batch(defender, ReportBatch(batch_id="b-1",
                                         audits=[*overloads(), audit(port=0, type=kind)]))
    assert r.status_code == 422
    [error] = r.json()["errors"]
    assert error == {"path": "audits[2].port", "message": (
        "Input should be greater than or equal to 1 (port 0 only for type overload)")}
    assert admin.get(f"{API}/audits").json()["total"] == 0
    r = post_batch(defender, ReportBatch(batch_id="b-1", audits=[
        *overloads(), overloads()[0].model_copy(update={"port": 65536})]))
    assert r.status_code == 422
    assert [e["path"] for e in r.json()["errors"]] == ["audits[2].port"]


# --- inventory -------------------------------------------------------------------------


def test_inventories_merge_into_the_cluster_inventory(console: Console, admin: ApiClient) -> None:
    id1, d1 = enroll(console, admin, "node-1")
    _, d2 = enroll(console, admin, "node-2")
    r1 = report("node-1", ("api", "10.1.0.2"))
    r2 = report("node-2", ("db", "10.2.0.3"), ("cache", "10.2.0.4"))

    def post(d: ApiClient, r: InventoryReport) -> None:
        resp = d.post(f"{API}/defender/inventory", content=r.model_dump_json(),
                      headers={"Content-Type": "application/json"})
        assert resp.status_code == 204, resp.text

    start = d1.get(f"{API}/defender/inventory").json()["revision"]
    post(d1, r1)
    post(d2, r2)
    inv = d1.get(f"{API}/defender/inventory", params={"revision": start}).json()
    assert inv["revision"] == start + 2
    assert [h["name"] for h in inv["hosts"]] == ["node-1", "node-2"]
    assert {c["name"] for c in inv["containers"]} == {"api", "db", "cache"}
    post(d2, r2)  # the same report again: no new revision
    # An address that is no IP is refused, naming it, and changes nothing.
    bad = report("node-2", ("db", "10.2.0.3"), ("x", "not-an-ip"))
    resp = d2.post(f"{API}/defender/inventory", content=bad.model_dump_json(),
                   headers={"Content-Type": "application/json"})
    assert resp.status_code == 422
    assert resp.json()["errors"] == [{"path": "containers[1].address",
                                      "message": "'not-an-ip' is not an IP address"}]
    assert d1.get(f"{API}/defender/inventory",
                  params={"revision": start + 2}).status_code == 204
    # Users see it cluster-wide; the list counts protected workloads.
    users = console.as_role(Role.AUDITOR).get(f"{API}/inventory").json()
    assert users == inv
    listed = {d["hostname"]: d for d in admin.get(f"{API}/defenders").json()}
    assert (listed["node-2"]["protected"], listed["node-2"]["workloads"]) == (2, 2)
    # A revoked Defender's workloads leave the cluster inventory.
    admin.delete(f"{API}/defenders/{id1}")
    inv = d2.get(f"{API}/defender/inventory", params={"revision": start + 2}).json()
    assert inv["revision"] == start + 3
    assert [h["name"] for h in inv["hosts"]] == ["node-2"]


def test_reported_images_are_normalised_as_discovery_names_them(
    console: Console, admin: ApiClient
) -> None:
    """A report naming docker.io/shop/db:13 (an older Defender, or a hand-made one)
    is stored, served and drawn as shop/db:13, the identity rules select."""
    _, d1 = enroll(console, admin, "node-1")
    body = {"host": {"name": "node-1", "addresses": ["192.168.0.6"]}, "protected": 2,
            "containers": [
                {"address": "10.1.0.5", "image": "docker.io/shop/db:13", "name": "db-1"},
                {"address": "10.1.0.6", "image": "docker.io/library/redis:7", "name": "cache"},
                {"address": "10.1.0.7", "image": "quay.io/x/y:1", "name": "y"}]}
    r = d1.post(f"{API}/defender/inventory", json=body)  # raw JSON: no model client-side
    assert r.status_code == 204, r.text
    images = ["shop/db:13", "redis:7", "quay.io/x/y:1"]
    inv = admin.get(f"{API}/inventory").json()
    assert [c["image"] for c in inv["containers"]] == images
    assert [c["image"] for c in d1.get(f"{API}/defender/inventory").json()["containers"]] == (
        images)
    with console.session() as s:  # stored normalised, not only served so
        (stored,) = [row.inventory for row in s.scalars(select(DefenderRow))]
    assert [c["image"] for c in stored["containers"]] == images
    nodes = {n["id"] for n in admin.get(f"{API}/radar").json()["nodes"]}
    assert {"image:shop/db:13", "image:redis:7"} <= nodes
    # The same report again (now normalised) is no change.
    revision = inv["revision"]
    assert d1.post(f"{API}/defender/inventory", json=body).status_code == 204
    assert admin.get(f"{API}/inventory").json()["revision"] == revision


# --- long-polls ------------------------------------------------------------------------


def _poll_while(console: Console, credential: str, path: str, revision: int,
                change: Any) -> httpx.Response:
    """A long-poll (wait 20 s) with ``change()`` made while it waits."""
    return asyncio.run(_poll_while_async(console, credential, path, revision, change))


async def _poll_while_async(console: Console, credential: str, path: str, revision: int,
                            change: Any) -> httpx.Response:
    transport = httpx.ASGITransport(app=console.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://console.test") as c:
        headers = {"Authorization": f"Bearer {credential}"}
        poll = asyncio.create_task(c.get(f"{API}/defender/{path}", headers=headers,
                                         params={"revision": revision, "wait": 20}))
        await asyncio.sleep(0.2)  # let the poll start waiting
        assert not poll.done()
        await change(c)
        return await poll


def _answered(console: Console, topic: str) -> tuple[float, float]:
    """How many long-polls answered with a change they were notified of, and how
    many of those took over 5 s (cnnf_console_long_poll_answer_seconds)."""
    registry = console.app.state.link.metrics.registry
    count = registry.get_sample_value("cnnf_console_long_poll_answer_seconds_count",
                                      {"topic": topic}) or 0.0
    within = registry.get_sample_value("cnnf_console_long_poll_answer_seconds_bucket",
                                       {"topic": topic, "le": "5.0"}) or 0.0
    return count, count - within


def _credential(defender: ApiClient) -> str:
    return defender._client.headers["Authorization"].removeprefix("Bearer ")

def policy_long_polls(c: httpx.AsyncClient,
                      credentials: list[str]) -> list[asyncio.Task[httpx.Response]]:
    """One policy long-poll per Defender credential (from revision 0, up to 20 s)."""
    return [asyncio.create_task(c.get(
        f"{API}/defender/policy", headers={"Authorization": f"Bearer {cred}"},
        params={"revision": 0, "wait": 20})) for cred in credentials]



def test_a_policy_change_wakes_a_waiting_defender(
    console: Console, admin: ApiClient
) -> None:
    _, defender = enroll(console, admin)
    console.app.state.link.store_poll = 3600  # only the notifier can wake it
    admin_token = console.tokens[Role.ADMIN]

    async def change(c: httpx.AsyncClient) -> None:
        r = await c.post(f"{API}/objects", headers={"Authorization": f"Bearer {admin_token}"},
                         json={"kind": "subnet", "name": "internet", "cidrs": ["0.0.0.0/0"]})
        assert r.status_code == 201, r.text

    r = _poll_while(console, _credential(defender), "policy", 0, change)
    assert r.status_code == 200
    assert r.json()["revision"] == 1
    assert [o.name for o in load_policy(r.json()["document"]).objects] == ["internet"]
    # The Console's share of propagation, from the commit's notice to the answer.
    assert _answered(console, "policy") == (1, 0)


def test_a_defender_has_one_waiting_long_poll_per_topic_a_newer_one_ends_the_older(
    console: Console, admin: ApiClient, caplog: pytest.LogCaptureFixture
) -> None:
    """One credential cannot keep thousands of long-polls waiting (each woken and
    answered on every change): a newer long-poll of the same Defender and topic
    ends the older at once with 204; another Defender's is not touched."""
    _, d1 = enroll(console, admin, "node-1")
    _, d2 = enroll(console, admin, "node-2")
    console.app.state.link.store_poll = 3600
    admin_token = console.tokens[Role.ADMIN]

    async def scenario() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=console.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://c.test") as c:
            def poll(d: ApiClient, topic: str = "policy") -> asyncio.Task[httpx.Response]:
                return asyncio.create_task(c.get(
                    f"{API}/defender/{topic}", params={"revision": 0, "wait": 20},
                    headers={"Authorization": f"Bearer {_credential(d)}"}))

            other = poll(d2)
            inventory = poll(d1, "inventory")
            polls = []
            for _ in range(50):
                polls.append(poll(d1))
                await asyncio.sleep(0.02)  # each one waiting before the next comes
            done, _pending = await asyncio.wait(polls[:-1], timeout=10)
            assert len(done) == 49  # ended at once, not after their 20 s
            assert not polls[-1].done() and not other.done() and not inventory.done()
            r = await c.post(f"{API}/objects", headers={"Authorization": f"Bearer {admin_token}"},
                             json={"kind": "subnet", "name": "lan", "cidrs": ["10.0.0.0/8"]})
            assert r.status_code == 201, r.text
            answers = [await p for p in polls] + [await other]
            inventory.cancel()
            return answers

    answers = asyncio.run(scenario())
    assert [r.status_code for r in answers[:-2]] == [204] * 49
    assert [(r.status_code, r.json()["revision"]) for r in answers[-2:]] == [(200, 1), (200, 1)]
    assert console.app.state.link.waiting == {}
    # Said once (not 49 times): two processes sharing one credential end each other's.
    [line] = [r.getMessage() for r in caplog.records if r.name == "cnnf.console.defender"]
    assert "a new policy long-poll replaced one still waiting" in line


def test_an_inventory_change_wakes_a_waiting_defender(
    console: Console, admin: ApiClient
) -> None:
    _, d1 = enroll(console, admin, "node-1")
    _, d2 = enroll(console, admin, "node-2")
    console.app.state.link.store_poll = 3600
    start = d1.get(f"{API}/defender/inventory").json()["revision"]

    async def change(c: httpx.AsyncClient) -> None:
        r = await c.post(f"{API}/defender/inventory",
                         headers={"Authorization": f"Bearer {_credential(d2)}",
                                  "Content-Type": "application/json"},
                         content=report("node-2", ("db", "10.2.0.3")).model_dump_json())
        assert r.status_code == 204

    r = _poll_while(console, _credential(d1), "inventory", start, change)
    assert r.status_code == 200
    assert r.json()["revision"] == start + 1
    assert _answered(console, "inventory") == (1, 0)


def test_a_change_by_another_console_process_is_found_in_the_store(
    console: Console, admin: ApiClient
) -> None:
    _, defender = enroll(console, admin)
    console.app.state.link.store_poll = 0.2

    async def change(_: httpx.AsyncClient) -> None:
        # Written straight to the store: this process's notifier knows nothing.
        with console.session() as s:
            s.execute(update(SettingsRow).values(revision=SettingsRow.revision + 1))
            s.commit()

    r = _poll_while(console, _credential(defender), "policy", 0, change)
    assert r.status_code == 200
    assert r.json()["revision"] == 1
    assert _answered(console, "policy") == (0, 0)  # no notice: not the Console's share


async def test_the_notifier_wakes_a_wait_that_starts_after_the_change() -> None:
    notifier = Notifier()
    generation = notifier.generation
    notifier.notify()  # between reading the store and starting to wait
    assert await notifier.wait(generation, 3600)
    assert not await notifier.wait(notifier.generation, 0.01)


async def test_one_notice_wakes_every_waiter_of_a_loop_with_one_call_into_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A policy change with a thousand long-polls waiting is one wakeup of the event
    loop, not one per long-poll."""
    from cnnf.console.services import defenders

    loop = asyncio.get_running_loop()
    wakes: list[int] = []
    original = loop.call_soon_threadsafe

    def counting(callback: Any, *args: Any, **kw: Any) -> Any:
        if callback is defenders._wake:
            wakes.append(len(args[0]))
        return original(callback, *args, **kw)

    monkeypatch.setattr(loop, "call_soon_threadsafe", counting)
    notifier = Notifier()
    waits = [asyncio.create_task(notifier.wait(0, 60)) for _ in range(50)]
    await asyncio.sleep(0.01)  # every one waiting
    await asyncio.to_thread(notifier.notify)  # from another thread, as a commit does
    assert await asyncio.gather(*waits) == [True] * 50
    assert wakes == [50]


async def test_a_change_starts_the_shared_read_and_wakes_the_waiters_with_it_at_hand() -> None:
    """With the shared read as ``before_wake``, a notice starts the one read at once
    and the waiters resume after it: each finds the new value without awaiting
    (no second resumption per long-poll), and a thousand waiters are one read."""
    notifier = Notifier()
    values = iter([1, 2])
    shared: SharedRead[int] = SharedRead(lambda: next(values), notifier, lambda: 3600.0)
    notifier.before_wake = shared.get
    assert await shared.get() == 1
    found: list[int] = []

    async def long_poll() -> None:
        assert await notifier.wait(notifier.generation, 60)
        step = shared.get()  # a coroutine that finishes at its first step: no await
        with pytest.raises(StopIteration) as done:
            step.send(None)
        found.append(done.value.value)

    waits = [asyncio.create_task(long_poll()) for _ in range(1000)]
    await asyncio.sleep(0.01)  # every one waiting
    await asyncio.to_thread(notifier.notify)  # from another thread, as a commit does
    await asyncio.gather(*waits)
    assert found == [2] * 1000
    assert shared.reads == 2


async def test_a_failed_read_before_the_wake_still_wakes_the_waiters(
    caplog: pytest.LogCaptureFixture,
) -> None:
    notifier = Notifier()

    async def failing() -> None:
        raise RuntimeError("store down")

    notifier.before_wake = failing
    waits = [asyncio.create_task(notifier.wait(0, 60)) for _ in range(3)]
    await asyncio.sleep(0.01)
    notifier.notify()
    assert await asyncio.gather(*waits) == [True] * 3
    assert [r.getMessage() for r in caplog.records if r.name == "cnnf.console.defenders"] == [
        "Defender link: the store read before waking 3 long-polls failed: store down"]


def test_a_silent_defender_leaves_the_cluster_inventory_until_it_calls_again(
    console: Console, admin: ApiClient
) -> None:
    from cnnf.console.api.defender import check_stale

    _, d1 = enroll(console, admin, "node-1")
    _, d2 = enroll(console, admin, "node-2")
    for d, r in ((d1, report("node-1", ("api", "10.1.0.2"))),
                 (d2, report("node-2", ("db", "10.2.0.3")))):
        d.post(f"{API}/defender/inventory", content=r.model_dump_json(),
               headers={"Content-Type": "application/json"})
    link, state = console.app.state.link, console.app.state.console
    assert check_stale(state, link) is False  # nobody is stale
    console.clock.advance(4 * 60)
    d2.get(f"{API}/defender/policy", params={"revision": 0})  # node-2 keeps calling
    console.clock.advance(61)  # node-1 silent for 5 minutes and a second
    before = admin.get(f"{API}/inventory").json()["revision"]
    assert check_stale(state, link) is True
    assert check_stale(state, link) is False  # noticed once
    inv = admin.get(f"{API}/inventory").json()
    assert (inv["revision"], [h["name"] for h in inv["hosts"]]) == (before + 1, ["node-2"])
    assert d1.get(f"{API}/defender/policy", params={"revision": 0}).status_code == 204
    inv = admin.get(f"{API}/inventory").json()  # back: its workloads rejoin
    assert (inv["revision"], [h["name"] for h in inv["hosts"]]) == (before + 2,
                                                                   ["node-1", "node-2"])


def test_a_defender_enrolled_under_an_existing_host_name_stands_for_it_when_seen_last(
    console: Console, admin: ApiClient
) -> None:
    """The README's known limit: enrollment tokens do not bind a host name, so a
    second Defender enrolled as node-1 stands for node-1 in the cluster
    inventory whenever it is the one that called last."""

    def node_1() -> list[tuple[str, str]]:
        inv = admin.get(f"{API}/inventory").json()
        return [(c["name"], c["address"]) for c in inv["containers"] if c["host"] == "node-1"]

    def push(defender: ApiClient, name: str, address: str) -> None:
        console.clock.advance(1)
        r = defender.post(f"{API}/defender/inventory",
                          json=report("node-1", (name, address)).model_dump(mode="json"))
        assert r.status_code in (200, 204), r.text

    first_id, first = enroll(console, admin, "node-1")
    push(first, "api", "10.1.0.2")
    assert node_1() == [("api", "10.1.0.2")]
    second_id, second = enroll(console, admin, "node-1")
    assert second_id != first_id
    push(second, "impostor", "10.1.0.9")
    assert node_1() == [("impostor", "10.1.0.9")]  # replaced, not merged
    push(first, "api", "10.1.0.2")
    assert node_1() == [("api", "10.1.0.2")]  # and back: whichever called last


def test_only_the_lease_holder_checks_for_stale_defenders(
    console: Console, admin: ApiClient
) -> None:
    """Replicas share the store: the process that does not hold the singleton lease
    leaves the stale check to the one that does (no second revision move)."""
    from cnnf.console.api.defender import check_stale
    from cnnf.console.services.leases import Lease

    _, d1 = enroll(console, admin, "node-1")
    d1.post(f"{API}/defender/inventory", content=report(
        "node-1", ("api", "10.1.0.2")).model_dump_json(),
        headers={"Content-Type": "application/json"})
    link, state = console.app.state.link, console.app.state.console
    other = Lease(state.sessions, link.lease.name, holder="another-replica",
                  ttl=link.lease.ttl, clock=console.clock.now,
                  monotonic=console.clock.monotonic)
    console.clock.advance(5 * 60 + 1)  # node-1 went stale
    link.forwarder.close()  # its thread would keep this process's lease renewed
    link.lease.release()
    assert other.renew()  # another replica holds the lease
    before = admin.get(f"{API}/inventory").json()["revision"]
    assert check_stale(state, link) is None
    assert admin.get(f"{API}/inventory").json()["revision"] == before
    console.clock.advance(link.lease.ttl + 1)  # the other replica died: its lease expired
    assert check_stale(state, link) is True  # this one took the lease and the work over
    assert link.lease.held
    assert admin.get(f"{API}/inventory").json()["revision"] == before + 1


def test_one_change_wakes_many_waiting_defenders_with_one_store_read(
    console: Console, admin: ApiClient
) -> None:
    """Fan-out: thirty Defenders long-poll; one policy change answers all of them
    from a single read of the store (not one read per Defender), each getting
    the new revision and the same document."""
    credentials = [_credential(enroll(console, admin, f"node-{i}")[1]) for i in range(30)]
    link = console.app.state.link
    link.store_poll = 3600  # only the notifier wakes them
    admin_token = console.tokens[Role.ADMIN]

    async def run() -> tuple[list[httpx.Response], int]:
        transport = httpx.ASGITransport(app=console.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://console.test") as c:
            polls = policy_long_polls(c, credentials)
            # every poll waiting (its first read done): a fixed half second was not
            # always enough on a loaded machine (a late poll's own read counted)
            deadline = time.monotonic() + 30
            while len(link.policy._waiters) < 30 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert len(link.policy._waiters) == 30
            assert not any(p.done() for p in polls)
            reads = link.current_policy.reads
            r = await c.post(f"{API}/objects", headers={"Authorization": f"Bearer {admin_token}"},
                             json={"kind": "subnet", "name": "internet", "cidrs": ["0.0.0.0/0"]})
            assert r.status_code == 201, r.text
            answers = await asyncio.gather(*polls)
            return answers, link.current_policy.reads - reads

    answers, reads = asyncio.run(run())
    assert [a.status_code for a in answers] == [200] * 30
    assert {a.json()["revision"] for a in answers} == {1}
    assert len({a.content for a in answers}) == 1
    assert reads == 1


# --- the verified-credential cache ---------------------------------------------------------


def test_a_verified_credential_is_not_read_from_the_store_again(
    console: Console, admin: ApiClient
) -> None:
    _, defender = enroll(console, admin)
    cache = console.app.state.link.verified
    assert defender.get(f"{API}/defender/policy").status_code == 200
    misses, hits = cache.misses, cache.hits
    for _ in range(3):
        assert defender.get(f"{API}/defender/policy").status_code == 200
    assert (cache.misses, cache.hits) == (misses, hits + 3)
    assert len(cache) == 1


def test_a_revoked_credential_is_refused_on_its_next_call_despite_the_cache(
    console: Console, admin: ApiClient
) -> None:
    defender_id, defender = enroll(console, admin, "node-1")
    _, other = enroll(console, admin, "node-2")
    console.app.state.link.store_poll = 3600  # no store-poll backstop: the revocation tells
    for d in (defender, other):
        assert d.get(f"{API}/defender/policy").status_code == 200
        assert d.get(f"{API}/defender/policy").status_code == 200  # cached now
    assert admin.delete(f"{API}/defenders/{defender_id}").status_code == 204
    r = defender.get(f"{API}/defender/policy")
    assert r.status_code == 401, r.text
    assert r.json()["detail"] == "invalid or revoked Defender credential"
    assert other.get(f"{API}/defender/policy").status_code == 200  # the others still served
    assert defender.get(f"{API}/defender/policy").status_code == 401  # and never re-cached


def test_a_revocation_by_another_console_process_is_honoured_within_the_store_poll(
    console: Console, admin: ApiClient
) -> None:
    """Another process revoked it (no notice reached this one): the cached credential
    is refused once the store poll's interval has passed, not later."""
    defender_id, defender = enroll(console, admin)
    link = console.app.state.link
    link.store_poll = 0.2
    assert defender.get(f"{API}/defender/policy").status_code == 200
    assert defender.get(f"{API}/defender/policy").status_code == 200
    with console.session() as s:  # straight to the store: this process was told nothing
        s.execute(update(DefenderRow).where(DefenderRow.defender_id == defender_id)
                  .values(revoked=True))
        s.commit()
    deadline = time.monotonic() + 10  # the shared read ages on the real clock
    while (status := defender.get(f"{API}/defender/policy").status_code) == 200:
        assert time.monotonic() < deadline, "the revoked credential was still served"
        time.sleep(0.05)
    assert status == 401


def test_a_revocation_heard_from_the_change_feed_empties_the_cache(
    console: Console, admin: ApiClient
) -> None:
    defender_id, defender = enroll(console, admin)
    link = console.app.state.link
    link.store_poll = 3600
    assert defender.get(f"{API}/defender/policy").status_code == 200
    with console.session() as s:  # another replica's revocation ...
        s.execute(update(DefenderRow).where(DefenderRow.defender_id == defender_id)
                  .values(revoked=True))
        s.commit()
    assert defender.get(f"{API}/defender/policy").status_code == 200  # (not told yet)
    link.heard("credentials")  # ... and its notice
    assert defender.get(f"{API}/defender/policy").status_code == 401


def test_a_revoked_defender_s_writes_are_refused_though_the_cache_was_not_told(
    console: Console, admin: ApiClient
) -> None:
    """Revoked in the store by another process whose notice never came: the cache
    still holds the credential, but its report and inventory are refused (401)
    and nothing of them is stored; the refusal makes the cache look again."""
    defender_id, defender = enroll(console, admin)
    link = console.app.state.link
    link.store_poll = 3600  # no store-poll backstop, no notice: only the write's check
    assert defender.get(f"{API}/defender/policy").status_code == 200
    assert defender.get(f"{API}/defender/policy").status_code == 200  # cached
    with console.session() as s:
        s.execute(update(DefenderRow).where(DefenderRow.defender_id == defender_id)
                  .values(revoked=True))
        s.commit()
    assert defender.get(f"{API}/defender/policy").status_code == 200  # the cache's view
    hits = link.verified.hits
    r = post_batch(defender, ReportBatch(batch_id="b-1", flows=[flow()], audits=[audit()]))
    assert r.status_code == 401, r.text
    assert r.json()["detail"] == "invalid or revoked Defender credential"
    assert link.verified.hits == hits + 1  # the credential came from the cache
    with console.session() as s:
        assert s.scalar(select(func.count()).select_from(ReportBatchRow)) == 0
    assert admin.get(f"{API}/audits").json()["total"] == 0
    assert admin.get(f"{API}/flows").json()["items"] == []
    # The refusal told the cache: the credential is looked up again, and refused.
    assert defender.get(f"{API}/defender/policy").status_code == 401


def test_a_revoked_defender_s_inventory_is_refused_though_the_cache_was_not_told(
    console: Console, admin: ApiClient
) -> None:
    defender_id, defender = enroll(console, admin)
    console.app.state.link.store_poll = 3600
    assert defender.get(f"{API}/defender/policy").status_code == 200
    with console.session() as s:
        s.execute(update(DefenderRow).where(DefenderRow.defender_id == defender_id)
                  .values(revoked=True))
        s.commit()
    r = defender.post(f"{API}/defender/inventory", content=report(
        "node-1", ("api", "10.1.0.2")).model_dump_json(),
        headers={"Content-Type": "application/json"})
    assert r.status_code == 401, r.text
    with console.session() as s:
        assert s.scalar(select(DefenderRow.inventory).where(
            DefenderRow.defender_id == defender_id)) is None


def test_a_waiting_inventory_long_poll_of_a_defender_revoked_meanwhile_gets_401(
    console: Console, admin: ApiClient
) -> None:
    """Its revocation moves the cluster inventory and wakes every waiting long-poll:
    the revoked Defender's gets 401, not the inventory its revocation produced;
    the others get it, with one read of the revoked ids between them."""
    revoked_id, revoked = enroll(console, admin, "node-1")
    others = [enroll(console, admin, f"node-{i}")[1] for i in (2, 3)]
    for d, host in ((revoked, "node-1"), (others[0], "node-2"), (others[1], "node-3")):
        r = d.post(f"{API}/defender/inventory", content=report(
            host, ("api", f"10.1.0.{len(host)}{host[-1]}")).model_dump_json(),
            headers={"Content-Type": "application/json"})
        assert r.status_code == 204, r.text
    link = console.app.state.link
    link.store_poll = 3600
    revision = admin.get(f"{API}/inventory").json()["revision"]
    credentials = [_credential(d) for d in (revoked, *others)]
    admin_token = console.tokens[Role.ADMIN]

    async def run() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=console.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://console.test") as c:
            polls = [asyncio.create_task(c.get(
                f"{API}/defender/inventory", headers={"Authorization": f"Bearer {cred}"},
                params={"revision": revision, "wait": 20})) for cred in credentials]
            await asyncio.sleep(0.3)
            assert not any(p.done() for p in polls)
            reads = link.current_revoked.reads
            r = await c.delete(f"{API}/defenders/{revoked_id}",
                               headers={"Authorization": f"Bearer {admin_token}"})
            assert r.status_code == 204, r.text
            answers = list(await asyncio.gather(*polls))
            assert link.current_revoked.reads == reads + 1
            return answers

    first, *rest = asyncio.run(run())
    assert first.status_code == 401, first.text
    assert first.json()["detail"] == "invalid or revoked Defender credential"
    for answer in rest:
        assert answer.status_code == 200, answer.text
        assert answer.json()["revision"] == revision + 1
        assert [h["name"] for h in answer.json()["hosts"]] == ["node-2", "node-3"]


def test_an_older_revocation_count_read_late_neither_empties_nor_feeds_the_cache() -> None:
    """Two reads of the count finishing out of order: the older count (E after
    E+1) is a miss that leaves the cache as it is, and a credential verified under
    it (before the revocation E+1 counts) is not kept."""
    cache = CredentialCache()
    now = datetime(2026, 1, 1, tzinfo=UTC)
    a, b = DefenderPrincipal("a", "node-1"), DefenderPrincipal("b", "node-2")
    assert cache.lookup("da", 4, now, lambda _: None) is None
    cache.remember("da", a, 4, now)
    assert cache.lookup("db", 5, now, lambda _: None) is None  # a revocation: emptied
    cache.remember("db", b, 5, now)
    assert cache.lookup("da", 4, now, lambda _: None) is None  # the late, older read
    cache.remember("da", a, 4, now)  # verified before the revocation: not kept
    assert cache.lookup("da", 5, now, lambda _: None) is None
    assert cache.lookup("db", 5, now, lambda _: None) == b  # not emptied by the old read
    assert len(cache) == 1


async def test_a_shared_read_keeps_the_newer_value_when_reads_finish_out_of_order() -> None:
    notifier = Notifier()
    release_old = threading.Event()
    started_old = threading.Event()
    counts = iter([4, 5])

    def read() -> int:
        count = next(counts)
        if count == 4:
            started_old.set()
            release_old.wait(10)
        return count

    shared: SharedRead[int] = SharedRead(read, notifier, lambda: 3600.0)
    old = asyncio.ensure_future(shared.get())
    await asyncio.to_thread(started_old.wait, 10)
    notifier.notify()  # a revocation: a new read, which finishes first
    assert await shared.get() == 5
    release_old.set()
    assert await old == 4  # its own caller gets what it read ...
    await asyncio.sleep(0)
    assert await shared.get() == 5  # ... but the shared value stays the newer one
    assert shared.reads == 2


def test_a_cached_defender_keeps_its_last_seen_and_a_stale_one_comes_back(
    console: Console, admin: ApiClient
) -> None:
    """The cache does not skip last_seen: a call 5 s after the last write queues one
    (batched), and a Defender silent past the write-now age goes to the store,
    which brings its workloads back if it went stale."""
    from cnnf.console.api.defender import check_stale, flush_seen

    defender_id, defender = enroll(console, admin, "node-1")
    defender.post(f"{API}/defender/inventory", content=report(
        "node-1", ("api", "10.1.0.2")).model_dump_json(),
        headers={"Content-Type": "application/json"})
    link, state = console.app.state.link, console.app.state.console

    def last_seen() -> Any:
        with console.session() as s:
            return s.scalar(select(DefenderRow.last_seen).where(
                DefenderRow.defender_id == defender_id))

    assert defender.get(f"{API}/defender/policy").status_code == 200  # verified, cached
    console.clock.advance(10)
    assert defender.get(f"{API}/defender/policy").status_code == 200  # a cache hit
    flush_seen(state, link)
    seen = last_seen()
    seen = seen if seen.tzinfo else seen.replace(tzinfo=UTC)
    assert seen == console.clock.now()
    console.clock.advance(5 * 60 + 1)  # silent: stale
    before = admin.get(f"{API}/inventory").json()["revision"]
    assert check_stale(state, link) is True
    assert [h["name"] for h in admin.get(f"{API}/inventory").json()["hosts"]] == []
    assert defender.get(f"{API}/defender/policy").status_code == 200  # not from the cache
    inv = admin.get(f"{API}/inventory").json()
    assert (inv["revision"], [h["name"] for h in inv["hosts"]]) == (before + 2, ["node-1"])


def test_a_policy_change_while_waiting_reaches_cached_defenders_with_the_same_bytes(
    console: Console, admin: ApiClient
) -> None:
    """Cached credentials, long-polls waiting: one change answers every one of them
    with the one serialized document of the new revision."""
    credentials = [_credential(enroll(console, admin, f"node-{i}")[1]) for i in range(5)]
    link = console.app.state.link
    link.store_poll = 3600
    admin_token = console.tokens[Role.ADMIN]

    async def run() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=console.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://console.test") as c:
            for cred in credentials:  # verified once: the long-polls below are cache hits
                r = await c.get(f"{API}/defender/policy",
                                headers={"Authorization": f"Bearer {cred}"})
                assert r.status_code == 200
            hits = link.verified.hits
            polls = policy_long_polls(c, credentials)
            await asyncio.sleep(0.3)
            assert not any(p.done() for p in polls)
            assert link.verified.hits == hits + 5
            r = await c.post(f"{API}/objects", headers={"Authorization": f"Bearer {admin_token}"},
                             json={"kind": "subnet", "name": "internet", "cidrs": ["0.0.0.0/0"]})
            assert r.status_code == 201, r.text
            return list(await asyncio.gather(*polls))

    answers = asyncio.run(run())
    assert [a.status_code for a in answers] == [200] * 5
    assert len({a.content for a in answers}) == 1
    assert answers[0].json()["revision"] == 1


# --- parallel deliveries, batched last-seen ------------------------------------------------


def test_two_deliveries_of_a_batch_at_once_store_it_once(
    console: Console, admin: ApiClient
) -> None:
    """The same batch delivered twice at the same moment (a retry racing its
    original, or two replicas): one stores it, the other is a duplicate, and its
    audits and their outbox rows are written once. Real sessions in threads,
    released together by a barrier, several times over."""
    from cnnf.console.services.defenders import DefenderService
    from cnnf.console.store.models import AuditRow, OutboxRow

    defender_id, _ = enroll(console, admin)
    who = DefenderPrincipal(defender_id, "node-1")
    rounds = 8
    barrier = threading.Barrier(2)
    results: list[tuple[int, bool]] = []
    failures: list[BaseException] = []

    def deliver(batch: ReportBatch, i: int) -> None:
        try:
            with console.session() as s:
                service = DefenderService(s, console.clock.now)
                barrier.wait(10)
                stored = service.store_batch(who, batch, forward_to=["syslog-a", "hook-b"])
                results.append((i, stored.duplicate))
        except BaseException as exc:  # reported below, in the test's thread
            failures.append(exc)

    for i in range(rounds):
        batch = ReportBatch(batch_id=f"race-{i}", flows=[flow(count=2)],
                            audits=[audit(port=1000 + i), audit(port=2000 + i)])
        threads = [threading.Thread(target=deliver, args=(batch, i)) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert not failures, failures
    for i in range(rounds):
        assert sorted(d for r, d in results if r == i) == [False, True], results
    with console.session() as s:
        assert s.scalar(select(func.count()).select_from(ReportBatchRow)) == rounds
        assert s.scalar(select(func.count()).select_from(AuditRow)) == 2 * rounds
        assert s.scalar(select(func.count()).select_from(OutboxRow)) == 2 * 2 * rounds
    [f] = admin.get(f"{API}/flows").json()["items"]
    assert f["count"] == 2 * rounds


def test_many_long_polls_ending_in_one_second_write_last_seen_once(
    console: Console, admin: ApiClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A change answers every waiting long-poll at once: the first to return writes
    the batched last-seen times, the others of that second add theirs to the next
    write (one UPDATE of the Defenders, not one per long-poll)."""
    from sqlalchemy import event

    from cnnf.console.api import defender as link_api
    from cnnf.console.api.defender import flush_seen

    flushes: list[int] = []

    def counted(*args: Any) -> int:  # the real flush, counted (each is a worker thread hop)
        n = flush_seen(*args)
        flushes.append(n)
        return n

    monkeypatch.setattr(link_api, "flush_seen", counted)

    ids_and_clients = [enroll(console, admin, f"node-{i}") for i in range(8)]
    credentials = [_credential(d) for _, d in ids_and_clients]
    link, state = console.app.state.link, console.app.state.console
    link.store_poll = 3600
    admin_token = console.tokens[Role.ADMIN]
    updates: list[str] = []
    console.clock.advance(2)  # last_seen written now differs from the enrollment's

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("UPDATE DEFENDERS"):
            updates.append(statement)

    async def run() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=console.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://console.test") as c:
            polls = policy_long_polls(c, credentials)
            await asyncio.sleep(0.3)
            assert not any(p.done() for p in polls)
            event.listen(console.engine, "before_cursor_execute", count)
            r = await c.post(f"{API}/objects", headers={"Authorization": f"Bearer {admin_token}"},
                             json={"kind": "subnet", "name": "internet", "cidrs": ["0.0.0.0/0"]})
            assert r.status_code == 201, r.text
            return list(await asyncio.gather(*polls))

    try:
        answers = asyncio.run(run())
    finally:
        event.remove(console.engine, "before_cursor_execute", count)
    assert [a.status_code for a in answers] == [200] * len(credentials)
    assert len(flushes) == 1, flushes  # one flush for the second they all returned in
    assert len(updates) == 1, updates  # and one write

    def written() -> int:
        with console.session() as s:
            return sum(1 for t in s.scalars(select(DefenderRow.last_seen))
                       if (t if t.tzinfo else t.replace(tzinfo=UTC)) == console.clock.now())

    # Those that returned before that write began are in it; the others wait in
    # the set for the next one: none is lost, none written twice.
    rest = len(link.seen)
    assert written() >= 1
    assert written() + rest == len(credentials)
    console.clock.advance(1)
    assert flush_seen(state, link) == rest
    assert written() == rest


@pytest.mark.parametrize("name", list(EndpointInfo.model_fields))
def test_a_batch_maps_two_ends_differing_in_any_field_apart(name: str) -> None:
    """The ends mapped once per batch are told apart by every field they have
    (one added later included): two ends that differ in one field only are
    never given one cached identity text."""
    base = EndpointInfo(kind="container", address="10.1.0.2", image="shop/api",
                        container="api", container_id="c1", namespace="shop", pod="api-1",
                        cluster="k1", host="node-1", labels={"app": "api"}, domain="api.shop")
    other = {"kind": "host", "address": "10.1.0.3", "labels": {"app": "db"}}.get(name, "x")
    variant = base.model_copy(update={name: other})
    flows = [flow().model_copy(update={"src": end, "dst": end}) for end in (base, variant)]
    memo: dict[Any, Any] = {}
    mapped = [defenders.flow_record(f, memo) for f in flows]
    assert len(memo) == 2
    assert mapped == [defenders.flow_record(f) for f in flows]  # as without the memo
