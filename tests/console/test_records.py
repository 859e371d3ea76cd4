"""Audits (filters, paging, CSV) and flows (aggregation, filters)."""

from __future__ import annotations

import csv
import io
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from consoletest import ApiClient, Console

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
           port=8080),
    _audit(2, dst_image="", dst_container="", dst_hostname="", dst_subnet="0.0.0.0/0",
           dst_domain="api.partner.example", port=443, msg='quote " and, comma', count=7),
    _audit(3, type="host", src_image="", src_container="", dst_image="", dst_container="",
           rule_name="ssh", port=22),
    _audit(90),
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
    ]
    assert tuple(rows[0]) == CSV_COLUMNS
    assert len(rows) == 1 + 4
    by_port = {row[8]: dict(zip(rows[0], row, strict=True)) for row in rows[1:]}
    partner = by_port["443"]
    assert partner["DstSubnet"] == "0.0.0.0/0" and partner["DstDomain"] == "api.partner.example"
    assert partner["Msg"] == 'quote " and, comma' and partner["Count"] == "7"
    assert partner["Block"] == "true" and partner["RuleName"] == "api-to-db"
    assert by_port["22"]["Type"] == "host"


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
