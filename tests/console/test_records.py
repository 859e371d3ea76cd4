"""Audits (filters, paging, CSV) and flows (aggregation, filters)."""

from __future__ import annotations

import asyncio
import csv
import io
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from consoletest import ApiClient, Console
from pydantic import ValidationError

import cnnf.console.app as app_module
from cnnf.console.app import prune_expired
from cnnf.console.services.records import (
    CSV_COLUMNS,
    AuditFilter,
    AuditRecord,
    AuditService,
    FlowRecord,
    FlowService,
    Pruned,
)
from cnnf.model import Effect

API = "/api/v1"
T0 = datetime(2026, 1, 2, 0, 0, tzinfo=UTC)


def _audit(minute: int, **extra: object) -> AuditRecord:
    data: dict[str, object] = {
        "time": T0 + timedelta(minutes=minute), "type": "container", "rule_id": 3,
        "rule_name": "api-to-db", "blocked": True, "effect": Effect.PREVENT,
        "src_image": "shop/api:1.2", "src_container": "api-1", "src_hostname": "node-1",
        "dst_image": "shop/db:15", "dst_container": "db-1", "dst_hostname": "node-2",
        "port": 5432, "msg": "blocked by api-to-db", "count": 1,
    }
    data.update(extra)
    return AuditRecord.model_validate(data)


AUDITS = [
    _audit(0),
    _audit(1, blocked=False, effect=Effect.ALERT, rule_name="web-alert", rule_id=4,
           src_image="shop/web:3", src_hostname="node-2", dst_image="shop/api:1.2",
           port=8080, src_namespace="shop", src_pod="web-7d4b-x2k8p", dst_namespace="shop"),
    _audit(2, dst_image="", dst_container="", dst_hostname="", dst_subnet="0.0.0.0/0",
           dst_domain="api.partner.example", port=443, msg='quote " and, comma', count=7),
    _audit(3, type="host", src_image="", src_container="", dst_image="", dst_container="",
           rule_name="ssh", port=22),
    _audit(90, dst_namespace="data", dst_pod="db-0"),
]


@pytest.fixture
def audits(console: Console) -> Console:
    with console.session() as s:
        assert AuditService(s).insert_many(AUDITS) == len(AUDITS)
    return console


FILTER_CASES: list[tuple[dict[str, str], list[int]]] = [
        ({}, [90, 3, 2, 1, 0]),
        ({"blocked": "true"}, [90, 3, 2, 0]),
        ({"blocked": "false"}, [1]),
        ({"src_image": "shop/api:1.2"}, [90, 2, 0]),
        ({"src_image": "shop/web*"}, [1]),
        ({"dst_image": "shop/api*"}, [1]),
        ({"host": "node-2"}, [90, 3, 1, 0]),
        ({"host": "node-1"}, [90, 3, 2, 0]),
        ({"rule": "ssh"}, [3]),
        ({"type": "host"}, [3]),
        ({"rule": "api-*"}, [90, 2, 0]),  # rule names take globs like image names
        ({"namespace": "data"}, [90]),  # source or destination namespace
        ({"namespace": "sh*"}, [1]),
        ({"pod": "web-*"}, [1]),  # source or destination pod
        ({"pod": "db-0"}, [90]),
        ({"pod": "db-0", "namespace": "shop"}, []),
        ({"since": "2026-01-02T00:01:00Z", "until": "2026-01-02T00:03:00Z"}, [2, 1]),
        ({"since": "2026-01-02T01:00:00+00:00"}, [90]),
        ({"src_image": "shop/api:1.2", "blocked": "true", "until": "2026-01-02T00:30:00Z"},
         [2, 0]),
]


def test_audit_filters(audits: Console, admin: ApiClient) -> None:
    # One store for the whole table: setting a Console up costs more than a query.
    for query, expected in FILTER_CASES:
        r = admin.get(f"{API}/audits", params=query)
        assert r.status_code == 200, r.text
        minutes = [int((datetime.fromisoformat(a["time"]) - T0).total_seconds() // 60)
                   for a in r.json()["items"]]
        assert minutes == expected, query
        assert r.json()["total"] == len(expected), query


def test_audit_paging(audits: Console, admin: ApiClient) -> None:
    first = admin.get(f"{API}/audits", params={"limit": 2}).json()
    second = admin.get(f"{API}/audits", params={"limit": 2, "offset": 2}).json()
    last = admin.get(f"{API}/audits", params={"limit": 2, "offset": 4}).json()
    assert first["total"] == second["total"] == last["total"] == 5
    ids = [a["id"] for page in (first, second, last) for a in page["items"]]
    assert len(ids) == len(set(ids)) == 5
    item = first["items"][0]
    assert item["ruleName"] == "api-to-db" and item["srcImage"] == "shop/api:1.2"
    r = admin.get(f"{API}/audits", params={"limit": 0})
    assert r.status_code == 422 and r.json()["errors"][0]["path"] == "limit"
    r = admin.get(f"{API}/audits", params={"since": "yesterday"})
    assert r.status_code == 422 and r.json()["errors"][0]["path"] == "since"


def test_audit_csv_columns(audits: Console, admin: ApiClient) -> None:
    r = admin.get(f"{API}/audits/csv", params={"blocked": "true"})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(r.text)))
    assert rows[0] == [
        "Time", "Type", "RuleName", "Block", "SrcImageName", "SrcContainerName",
        "DstImageName", "DstContainerName", "Port", "DstSubnet", "DstDomain", "SrcHostname",
        "DstHostname", "Msg", "Count",
        # Ours, after the original product's columns (which keep their places).
        "SrcNamespace", "DstNamespace", "SrcPod", "DstPod", "Would",
    ]
    assert tuple(rows[0]) == CSV_COLUMNS
    assert len(rows) == 1 + 4
    by_port = {row[8]: dict(zip(rows[0], row, strict=True)) for row in rows[1:]}
    partner = by_port["443"]
    assert partner["DstSubnet"] == "0.0.0.0/0" and partner["DstDomain"] == "api.partner.example"
    assert partner["Msg"] == 'quote " and, comma' and partner["Count"] == "7"
    assert partner["Block"] == "true" and partner["RuleName"] == "api-to-db"
    assert {row["Would"] for row in by_port.values()} == {"false"}
    assert by_port["22"]["Type"] == "host"


@pytest.mark.parametrize(("type_", "port", "error"), [
    ("container", 1, None),
    ("host", 65535, None),
    ("overload", 0, None),
    ("overload", 443, None),
    ("container", 0, "port: Input should be greater than or equal to 1 (port 0 only for "
                     "type overload)"),
    ("host", 0, "port: Input should be greater than or equal to 1 (port 0 only for type "
                "overload)"),
    ("overload", -1, "port: Input should be greater than or equal to 0"),
    ("overload", 65536, "port: Input should be less than or equal to 65535"),
    ("flood", 0, "type: Input should be 'container', 'host' or 'overload'"),
])
def test_audit_type_and_port(type_: str, port: int, error: str | None) -> None:
    if error is None:
        record = _audit(0, type=type_, port=port)
        assert (record.type.value, record.port) == (type_, port)
        return
    with pytest.raises(ValidationError) as raised:
        _audit(0, type=type_, port=port)
    first = raised.value.errors()[0]
    assert f"{'.'.join(map(str, first['loc']))}: {first['msg']}" == error


def test_overload_audits_are_published_in_the_openapi_document(console: Console) -> None:
    spec = console.client().get(f"{API}/openapi.json").json()
    schemas = spec["components"]["schemas"]
    assert schemas["AuditType"]["enum"] == ["container", "host", "overload"]
    # What the Defenders send and what the API answers name the same type.
    assert schemas["AuditEvent"]["properties"]["type"] == {"$ref": "#/components/schemas/AuditType"}
    stored = schemas["StoredAudit"]["properties"]
    assert stored["type"]["$ref"] == "#/components/schemas/AuditType"
    assert (stored["port"]["minimum"], stored["port"]["maximum"]) == (0, 65535)
    assert "overload" in stored["port"]["description"]
    # an overload audit's ruleName says what dropped it (no rule did)
    for what in ("admission limit (tightened)", "verdict loop", "anti-spoofing"):
        assert what in stored["ruleName"]["description"]
    for path in (f"{API}/audits", f"{API}/audits/csv"):
        [param] = [p for p in spec["paths"][path]["get"]["parameters"] if p["name"] == "type"]
        assert {"$ref": "#/components/schemas/AuditType"} in param["schema"]["anyOf"]


def test_overload_audits_through_the_service(console: Console, admin: ApiClient) -> None:
    with console.session() as s:
        AuditService(s).insert_many([
            *AUDITS,
            _audit(5, type="overload", rule_id=None, rule_name="", src_image="shop/web:3",
                   src_container="web-1", dst_image="", dst_container="",
                   dst_hostname="node-1", port=0, count=9000,
                   msg="overload: the admission limit (1000 new connections/s per source) "
                       "dropped 9,000 SYNs from shop/web:3 (web-1) in 20 s"),
        ])
    r = admin.get(f"{API}/audits", params={"type": "overload"}).json()
    assert [(a["type"], a["port"], a["count"], a["ruleId"]) for a in r["items"]] == [
        ("overload", 0, 9000, None)]
    with console.session() as s:
        page = AuditService(s).query(AuditFilter(type="overload"), limit=10, offset=0)
        lines = list(AuditService(s).csv_lines(AuditFilter(type="overload"), max_rows=10))
    assert page.total == 1 and page.items[0].port == 0
    [row] = list(csv.reader(io.StringIO(lines[1])))
    assert (row[1], row[8], row[14]) == ("overload", "", "9000")
    # The other filters take them like any audit.
    for query, expected in [
        ({}, [90, 5, 3, 2, 1, 0]),
        ({"type": "container"}, [90, 2, 1, 0]),
        ({"src_image": "shop/web*"}, [5, 1]),
        ({"host": "node-1", "type": "overload"}, [5]),
        ({"host": "node-2", "type": "overload"}, []),
        ({"blocked": "false"}, [1]),
    ]:
        minutes = [int((datetime.fromisoformat(a["time"]) - T0).total_seconds() // 60)
                   for a in admin.get(f"{API}/audits", params=query).json()["items"]]
        assert minutes == expected, query


def _flow(src: str, dst: str, port: int, minute: int, *, verdict: str = "observed",
          count: int = 1, rule_id: int = 0, rule_name: str = "") -> FlowRecord:
    at = T0 + timedelta(minutes=minute)
    return FlowRecord(src=src, dst=dst, port=port, verdict=verdict, count=count,
                      rule_id=rule_id, rule_name=rule_name, first_seen=at, last_seen=at)


def test_flows_aggregate_across_batches(console: Console, admin: ApiClient) -> None:
    with console.session() as s:
        flows = FlowService(s)
        flows.record_many([
            _flow("image:shop/api", "image:shop/db", 5432, 5, count=2),
            _flow("image:shop/api", "image:shop/db", 5432, 1, count=3),  # same key, same batch
            _flow("image:shop/web", "image:shop/api", 8080, 2, verdict="allow", rule_id=1,
                  rule_name="web-api"),
        ])
        flows.record_many([
            _flow("image:shop/api", "image:shop/db", 5432, 9, count=10),
            _flow("image:shop/api", "image:shop/db", 5432, 7, verdict="prevent", rule_id=2,
                  rule_name="no-db"),
        ])
    page = admin.get(f"{API}/flows").json()
    assert page["total"] == 3
    hole = next(f for f in page["items"]
                if f["verdict"] == "observed" and f["dst"] == "image:shop/db")
    assert hole["count"] == 15
    assert hole["firstSeen"].startswith("2026-01-02T00:01")
    assert hole["lastSeen"].startswith("2026-01-02T00:09")
    r = admin.get(f"{API}/flows", params={"verdict": "prevent"}).json()
    assert [(f["ruleName"], f["count"]) for f in r["items"]] == [("no-db", 1)]
    r = admin.get(f"{API}/flows", params={"src": "image:shop/*", "port": 8080}).json()
    assert [f["ruleId"] for f in r["items"]] == [1]
    r = admin.get(f"{API}/flows", params={"since": "2026-01-02T00:08:00Z"}).json()
    assert [f["verdict"] for f in r["items"]] == ["observed"]
    assert admin.get(f"{API}/flows", params={"verdict": "maybe"}).status_code == 422


def test_retention_prunes_old_audits_and_flows(console: Console, admin: ApiClient) -> None:
    now = console.clock.now()
    with console.session() as s:
        AuditService(s).insert_many([
            _audit(0, time=now - timedelta(days=31)),
            _audit(0, time=now - timedelta(days=29)),
            _audit(0, time=now),
        ])
        old = _flow("image:a", "image:b", 80, 0)
        FlowService(s).record_many([
            old.model_copy(update={"first_seen": now - timedelta(days=40),
                                   "last_seen": now - timedelta(days=35)}),
            old.model_copy(update={"port": 81, "first_seen": now - timedelta(days=40),
                                   "last_seen": now - timedelta(days=1)}),
        ])
    state = console.app.state.console
    assert state.config.retention_days == 30
    assert prune_expired(state) == Pruned(audits=1, flows=1)
    assert admin.get(f"{API}/audits").json()["total"] == 2
    assert [f["port"] for f in admin.get(f"{API}/flows").json()["items"]] == [81]
    assert prune_expired(state) == Pruned(audits=0, flows=0)
    state.config = replace(state.config, retention_days=0)  # keep forever
    console.clock.advance(400 * 86400)
    assert prune_expired(state) is None
    with console.session() as s:
        assert AuditService(s).query(AuditFilter(), limit=10, offset=0).total == 2


def test_retention_runs_at_start_and_then_every_hour(console: Console,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The Console's retention task: a prune at once, then one per
    ``retention_interval_seconds`` (an hour by default), in the process holding the
    singleton lease (it looks every quarter lease ttl). The task's sleeps are played
    on the injected clock, five minutes each."""
    state = console.app.state.console
    link = console.app.state.link
    assert state.config.retention_interval_seconds == 3600.0
    now = console.clock.now()
    with console.session() as s:  # old at start; the second one 30 days and 30 minutes old
        AuditService(s).insert_many([
            _audit(0, time=now - timedelta(days=31)),
            _audit(0, time=now - timedelta(days=30) + timedelta(minutes=30)),
            _audit(0, time=now),
        ])
    start = console.clock.mono
    seen: list[tuple[float, int]] = []

    async def sleep(seconds: float) -> None:
        assert seconds == link.lease.ttl / 4
        with console.session() as s:
            total = AuditService(s).query(AuditFilter(), limit=1, offset=0).total
        seen.append((console.clock.mono - start, total))
        if console.clock.mono - start >= 2 * 3600:
            raise asyncio.CancelledError
        console.clock.advance(300)

    monkeypatch.setattr(app_module.asyncio, "sleep", sleep)
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(app_module._retention_loop(state, link))
    # At start the 31-day-old audit went. The second turned 30 days old after half
    # an hour, and went at the next hourly prune; today's stays.
    assert [t for t, total in seen if total == 2] == [300.0 * i for i in range(12)]
    assert [t for t, total in seen if total == 1] == [300.0 * i for i in range(12, 25)]
