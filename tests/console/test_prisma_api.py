"""The Prisma-compatible API (cnnf.console.api.prisma), driven by the public
``prismacloud-api`` SDK against the real Console served over HTTPS with its own
CA, and in-process for the details the SDK does not show (headers, errors,
roles)."""

from __future__ import annotations

import copy
import csv
import gc
import io
import json
import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from consoletest import ApiClient, Console
from prismacloud.api.pc_lib_api import PrismaCloudAPI
from sqlalchemy import Engine
from sqlalchemy.orm import Session
from tests.served import uvicorn_thread

from cnnf.console.app import create_app
from cnnf.console.config import ConsoleConfig
from cnnf.console.security import Role
from cnnf.console.services.records import CSV_COLUMNS, AuditRecord, AuditService
from cnnf.console.services.users import UserService
from cnnf.console.store.db import connect
from cnnf.console.tls import ensure_self_signed
from cnnf.model import Effect
from cnnf.model.records import AuditType

API = "/api/v1"
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
EXPORT = json.loads((EXAMPLES / "prisma-export.json").read_text())
PASSWORD = "correct horse battery"
T0 = datetime(2026, 1, 2, 3, 0, 0, tzinfo=UTC)
# The original's audit fields a migrating script reads.
ORIGINAL_FIELDS = {"_id", "time", "type", "ruleID", "ruleName", "block", "srcImageName",
                   "srcContainerName", "srcHostname", "dstImageName", "dstContainerName",
                   "dstHostname", "dstPort", "dstSubnet", "dstDomain", "msg", "count"}


def _audits(engine: Engine) -> None:
    """120 container audits (every third blocked; 40 from shop/web, 80 from shop/api,
    one minute apart) and 3 host audits."""
    records = []
    for i in range(120):
        src = "shop/web:1" if i % 3 == 0 else "shop/api:2"
        records.append(AuditRecord(
            time=T0 + timedelta(minutes=i), type=AuditType.CONTAINER, rule_id=3,
            rule_name="web-to-internet", blocked=i % 3 == 0,
            effect=Effect.PREVENT if i % 3 == 0 else Effect.ALERT,
            src_image=src, src_container=f"c{i}", src_hostname="node-1",
            dst_image="shop/db:5" if i % 2 else "", dst_subnet="" if i % 2 else "0.0.0.0/0",
            port=443, msg=f"audit {i}", count=1 + i % 4))
    for i in range(3):
        records.append(AuditRecord(
            time=T0 + timedelta(minutes=i), type=AuditType.HOST, rule_id=1,
            rule_name="node-ssh", blocked=False, effect=Effect.ALERT,
            src_hostname="node-1", dst_hostname=f"node-{i + 2}", port=22))
    with Session(engine) as s:
        AuditService(s).insert_many(records)


# --- the SDK against the Console served over HTTPS ---------------------------------


@dataclass
class Served:
    url: str
    ca: Path
    engine: Engine
    tmp: Path


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    db_url = f"sqlite:///{tmp_path / 'console.db'}"
    engine = connect(db_url)
    app = create_app(ConsoleConfig(db_url=db_url, data_dir=tmp_path), engine=engine)
    with Session(engine) as s:
        users = UserService(s)
        users.create_user("admin", Role.ADMIN, PASSWORD)
        users.create_user("auditor", Role.AUDITOR, PASSWORD)
    tls = ensure_self_signed(tmp_path / "tls", ["127.0.0.1", "localhost"])
    try:
        with uvicorn_thread(app, ssl_certfile=str(tls.cert), ssl_keyfile=str(tls.key)) as port:
            yield Served(f"https://127.0.0.1:{port}", tls.ca_cert, engine, tmp_path)
    finally:
        engine.dispose()
        # asyncio leaves the server's end of a TLS connection to the collector when the
        # loop stops before the close_notify exchange ends; collect it here, so that its
        # ResourceWarning does not land on whichever test runs next.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            gc.collect()


@pytest.fixture
def sdk_logger() -> Iterator[logging.Logger]:
    """The SDK adds a file handler and wraps ``error`` on its module logger at every
    configure; undo both after the test."""
    logger = logging.getLogger("prismacloud.api.pc_lib_api")
    handlers = list(logger.handlers)
    try:
        yield logger
    finally:
        for handler in logger.handlers[:]:
            if handler not in handlers:
                logger.removeHandler(handler)
                handler.close()
        logger.__dict__.pop("error", None)


def _sdk(served: Served, user: str = "admin", password: str = PASSWORD) -> PrismaCloudAPI:
    pc = PrismaCloudAPI()
    pc.error_log = str(served.tmp / "sdk-error.log")
    pc.configure({"url": served.url, "identity": user, "secret": password,
                  "verify": str(served.ca)})
    return pc


def test_sdk_reads_and_writes_the_network_firewall_policy(
        served: Served, sdk_logger: logging.Logger) -> None:
    pc = _sdk(served)
    empty = pc.policies_read("firewall/network")  # logs in at /api/v1/authenticate first
    assert pc.token
    assert empty == {"_id": "networkFirewall", "containerEnabled": False, "containerRules": [],
                     "hostEnabled": False, "hostRules": [], "networkEntities": []}

    answer = pc.policies_write("firewall/network", EXPORT)
    assert answer["revision"] == 1
    assert "networkEntities[4].subnets[0].name: subnet name 'internet-v4' has no native field " \
           "(the CIDR 0.0.0.0/0 is kept)" in answer["unmapped"]
    doc = pc.policies_read("firewall/network")
    assert doc["containerEnabled"] is True and doc["hostEnabled"] is False
    assert [(r["id"], r["name"], r["effect"]) for r in doc["containerRules"]] == [
        (r["id"], r["name"], r["effect"]) for r in EXPORT["containerRules"]]
    names = {e["_id"]: e["name"] for e in doc["networkEntities"]}
    for got, sent in zip(doc["containerRules"], EXPORT["containerRules"], strict=True):
        sent_names = {e["_id"]: e["name"] for e in EXPORT["networkEntities"]}
        assert (names[got["src"]], names[got["dst"]]) == (sent_names[sent["src"]],
                                                          sent_names[sent["dst"]])
        assert [(p["start"], p["end"]) for p in got["ports"]] == [
            (p["start"], p["end"]) for p in sent["ports"]]

    # read, change, write back: the loop a migrating script runs
    doc["containerRules"][1]["effect"] = "prevent"
    doc["containerRules"].reverse()
    assert pc.policies_write("firewall/network", doc)["unmapped"] == []
    again = pc.policies_read("firewall/network")
    assert [r["name"] for r in again["containerRules"]] == [
        "api-to-partner", "web-to-internet", "api-to-db", "frontend-to-api"]
    assert again["containerRules"][1]["effect"] == "prevent"


def test_sdk_writes_a_generated_policy_numbered_from_zero(
        served: Served, sdk_logger: logging.Logger) -> None:
    """What a rule generator writes from the audit CSV: rule ids from 0, no names."""
    generated = {
        "_id": "networkFirewall", "containerEnabled": True, "hostEnabled": False,
        "hostRules": [],
        "networkEntities": [
            {"_id": 0, "name": "shop-web", "type": "container",
             "collections": [{"name": "shop-web", "images": ["shop/web:1"]}]},
            {"_id": 1, "name": "shop-db", "type": "container",
             "collections": [{"name": "shop-db", "images": ["shop/db:5"]}]},
            {"_id": 2, "name": "internet", "type": "subnet",
             "subnets": [{"name": "internet", "cidr": "0.0.0.0/0"}]}],
        "containerRules": [
            {"id": 0, "src": 0, "dst": 1, "effect": "allow",
             "ports": [{"start": 5432, "end": 5432, "deny": False}]},
            {"id": 1, "src": 0, "dst": 2, "effect": "alert",
             "ports": [{"start": 443, "end": 443, "deny": False}]}],
    }
    pc = _sdk(served)
    answer = pc.policies_write("firewall/network", generated)
    assert answer["unmapped"] == [
        "containerRules[0].id: 0 renumbered to 1 (ids start at 1)",
        "containerRules[1].id: 1 renumbered to 2 (ids start at 1)",
        "containerRules[0].name: missing; named 'rule-1'",
        "containerRules[1].name: missing; named 'rule-2'",
    ]
    doc = pc.policies_read("firewall/network")
    assert [(r["id"], r["name"], r["effect"]) for r in doc["containerRules"]] == [
        (1, "rule-1", "allow"), (2, "rule-2", "alert")]


def test_sdk_refusals_change_nothing(served: Served, sdk_logger: logging.Logger) -> None:
    with pytest.raises(SystemExit, match="Status Code: 401"):
        _sdk(served, password="wrong password").policies_read("firewall/network")
    admin = _sdk(served)
    admin.policies_write("firewall/network", EXPORT)
    before = admin.policies_read("firewall/network")

    auditor = _sdk(served, user="auditor")
    assert auditor.policies_read("firewall/network") == before  # any role reads
    with pytest.raises(SystemExit, match="Status Code: 403"):
        auditor.policies_write("firewall/network", {**before, "containerRules": []})

    bad = copy.deepcopy(EXPORT)
    bad["containerRules"][0]["dst"] = 99
    bad["containerRules"][1]["ports"][0]["end"] = 70000
    with pytest.raises(SystemExit, match="Status Code: 422") as info:
        admin.policies_write("firewall/network", bad)
    assert "containerRules[0].dst: no entity with _id 99" in str(info.value)
    assert "containerRules[1].ports[0].end: 70000 is above 65535" in str(info.value)
    assert admin.policies_read("firewall/network") == before


def test_sdk_pages_through_filtered_audits_and_downloads_the_csv(
        served: Served, sdk_logger: logging.Logger) -> None:
    _audits(served.engine)
    pc = _sdk(served)
    every = pc.audits_list_read("firewall/network/container")  # 50 a page, by Total-Count
    assert len(every) == 120 and len({a["_id"] for a in every}) == 120
    assert set(every[0]) >= ORIGINAL_FIELDS
    assert [a["msg"] for a in every[:2]] == ["audit 119", "audit 118"]  # newest first
    first = every[-1]
    assert (first["srcImageName"], first["srcContainerName"], first["dstPort"], first["block"],
            first["ruleID"], first["ruleName"], first["dstSubnet"], first["type"]) == (
        "shop/web:1", "c0", 443, True, 3, "web-to-internet", "0.0.0.0/0",
        "unexpectedConnection")

    web = pc.audits_list_read("firewall/network/container",
                              query_params={"srcImageName": "shop/web:*"})
    assert len(web) == 40 and {a["srcImageName"] for a in web} == {"shop/web:1"}
    blocked = pc.audits_list_read("firewall/network/container", query_params={"block": "true"})
    assert len(blocked) == 40 and all(a["block"] for a in blocked)
    window = pc.audits_list_read("firewall/network/container", query_params={
        "from": (T0 + timedelta(minutes=10)).isoformat(),
        "to": (T0 + timedelta(minutes=69)).isoformat(),
        "dstImageName": ["shop/db:5", "other"]})
    assert len(window) == 30 and {a["dstImageName"] for a in window} == {"shop/db:5"}
    assert len(pc.audits_list_read("firewall/network/container",
                                   query_params={"srcImageName": "nothing"})) == 0
    hosts = pc.audits_list_read("firewall/network/host")
    assert [(a["srcHostname"], a["dstHostname"], a["dstPort"]) for a in hosts] == [
        ("node-1", "node-4", 22), ("node-1", "node-3", 22), ("node-1", "node-2", 22)]

    text = pc.execute_compute("GET", "api/v1/audits/firewall/network/container/download",
                              query_params={"block": "true"})
    assert isinstance(text, str)  # the SDK decodes only an exact text/csv
    rows = list(csv.reader(io.StringIO(text)))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert len(rows) == 41 and {r[3] for r in rows[1:]} == {"true"}
    text = pc.execute_compute("GET", "api/v1/audits/firewall/network/host/download")
    assert len(list(csv.reader(io.StringIO(text)))) == 4


# --- details, in-process ------------------------------------------------------------


def test_paging_headers_and_errors(console: Console, admin: ApiClient) -> None:
    _audits(console.engine)
    path = f"{API}/audits/firewall/network/container"
    r = admin.get(path, params={"limit": 7, "offset": 112})
    assert r.status_code == 200 and r.headers["Total-Count"] == "120"
    assert [a["msg"] for a in r.json()] == [f"audit {i}" for i in range(7, 0, -1)]
    r = admin.get(path, params={"limit": 50, "offset": 200})
    assert r.json() == [] and r.headers["Total-Count"] == "120"
    r = admin.get(path, params=[("srcImageName", "shop/web:1,shop/api:2"), ("block", "false")])
    assert r.headers["Total-Count"] == "80"
    # bad values are refused, naming the parameter
    for params, name in (({"block": "yes"}, "block"), ({"limit": 0}, "limit"),
                         ({"from": "yesterday"}, "from")):
        r = admin.get(path, params=params)
        assert r.status_code == 422 and r.json()["errors"][0]["path"] == name, r.text
    r = admin.get(f"{path}/download")
    assert r.headers["content-type"] == "text/csv"
    assert r.headers["content-disposition"].startswith("attachment")
    assert console.client().get(path).status_code == 401
    assert console.as_role(Role.AUDITOR).get(path).status_code == 200


def test_authenticate_ping_and_version(console: Console) -> None:
    anonymous = console.client()
    assert anonymous.get(f"{API}/_ping").text == "OK"
    r = anonymous.post(f"{API}/authenticate",
                       json={"username": "operator-user", "password": PASSWORD})
    assert r.status_code == 200, r.text
    token = r.json()["token"]
    # the same token as our own API's: it works there, with the user's role
    me = console.client(token).get(f"{API}/auth/me").json()
    assert (me["name"], me["role"]) == ("operator-user", "operator")
    assert isinstance(console.client(token).get(f"{API}/version").json(), str)
    r = anonymous.post(f"{API}/authenticate",
                       json={"username": "operator-user", "password": "wrong"})
    assert r.status_code == 401
    assert anonymous.post(f"{API}/authenticate", json={"username": "x"}).status_code == 422
    assert anonymous.get(f"{API}/version").status_code == 401


def test_get_reports_what_the_original_shape_cannot_hold(console: Console,
                                                        admin: ApiClient) -> None:
    admin.put(f"{API}/settings", json={**admin.get(f"{API}/settings").json(),
                                       "defaultEffect": "alert"})
    r = admin.get(f"{API}/policies/firewall/network")
    assert r.status_code == 200 and r.headers["X-Cnnf-Unmapped"] == "1"


def test_put_refuses_what_is_not_a_document(console: Console, admin: ApiClient) -> None:
    path = f"{API}/policies/firewall/network"
    before = admin.get(path).json()
    for body in (b"", b"not json", b"[1, 2]", json.dumps({"_id": "somethingElse"}).encode()):
        r = admin.put(path, content=body, headers={"Content-Type": "application/json"})
        assert r.status_code == 422, (body, r.text)
        assert r.json()["detail"]
    assert admin.get(path).json() == before
    assert console.as_role(Role.AUDITOR).put(path, json=EXPORT).status_code == 403
    assert console.client().put(path, json=EXPORT).status_code == 401


def test_would_audits_are_not_original_audits(console: Console, admin: ApiClient) -> None:
    """A "would" audit (staged, or enforcement off) enforced nothing and has no
    equivalent in the original product, where it would read as an alert."""
    _audits(console.engine)
    with Session(console.engine) as s:
        AuditService(s).insert_many([AuditRecord(
            time=datetime(2026, 1, 2, 5, 0, tzinfo=UTC), rule_id=9, rule_name="staged",
            blocked=False, effect=Effect.PREVENT, would=True, src_image="shop/web:1",
            port=5432, msg="would block")])
    path = f"{API}/audits/firewall/network/container"
    r = admin.get(path, params={"limit": 500})
    assert r.headers["Total-Count"] == "120"
    assert "would block" not in [a["msg"] for a in r.json()]
    assert "would block" not in admin.get(f"{path}/download").text
    assert admin.get(f"{API}/audits?would=true").json()["total"] == 1  # CNNF's own API has it
