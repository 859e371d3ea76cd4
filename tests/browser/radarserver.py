"""A Console served over loopback HTTP for browser tests and the Radar
benchmark: the real app (SQLite store, real API) in a uvicorn thread. Policy,
overlays and inventory go in through the API (the inventory as enrolled
Defenders report it); flows and audits through the Console's record services
(what the Defender reports endpoint stores them with).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy.orm import Session
from tests.served import uvicorn_thread

from cnnf.console.app import create_app
from cnnf.console.config import ConsoleConfig
from cnnf.console.security import Role
from cnnf.console.services.records import AuditRecord, AuditService, FlowRecord, FlowService
from cnnf.console.services.users import UserService
from cnnf.console.store.db import connect
from cnnf.console.ui import STATIC
from cnnf.model import Effect
from cnnf.model.records import HostInfo, InventoryReport, WorkloadInfo

ADMIN = ("admin", "radar-test-password")


@dataclass
class RadarConsole:
    url: str
    app: Any
    engine: Any
    token: str
    defenders: dict[str, str] = field(default_factory=dict)  # host name -> credential

    def client(self, token: str | None = None) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=120,
                            headers={"Authorization": f"Bearer {token or self.token}"})

    def report_inventory(self, hosts: list[HostInfo], containers: list[WorkloadInfo]) -> None:
        """Each host's Defender (enrolled on first use) reports its containers."""
        with self.client() as api:
            enrollment = api.post("/api/v1/defenders/enrollment-tokens", json={})
            enrollment.raise_for_status()
            for host in hosts:
                if host.name not in self.defenders:
                    r = api.post("/api/v1/defenders/enroll", json={
                        "enrollment_token": enrollment.json()["token"], "hostname": host.name})
                    r.raise_for_status()
                    self.defenders[host.name] = r.json()["credential"]
                report = InventoryReport(
                    host=host, containers=[c for c in containers if c.host == host.name])
                with self.client(self.defenders[host.name]) as defender:
                    defender.post("/api/v1/defender/inventory",
                                  json=report.model_dump(mode="json")).raise_for_status()

    def add_flows(self, flows: list[FlowRecord]) -> None:
        with Session(self.engine) as s:
            FlowService(s).record_many(flows)

    def add_audits(self, audits: list[AuditRecord]) -> None:
        with Session(self.engine) as s:
            AuditService(s).insert_many(audits)


@contextmanager
def serve(data_dir: Path, static: Path | None = STATIC,
          mount: Callable[[Any], None] | None = None) -> Iterator[RadarConsole]:
    """Start the Console on a free loopback port; stop it on exit. ``static`` names
    the UI build to serve; ``mount`` (with ``static=None``) mounts another way
    (bench/ui_load.py serves the previous build as it used to be served)."""
    db_url = f"sqlite:///{data_dir / 'console.db'}"
    engine = connect(db_url)
    app = create_app(ConsoleConfig(db_url=db_url, data_dir=data_dir,
                                   max_body_bytes=64 * 1024 * 1024), engine=engine,
                     static=static)
    if mount is not None:
        mount(app)
    with Session(engine) as s:
        UserService(s).create_user(ADMIN[0], Role.ADMIN, ADMIN[1])
    try:
        with uvicorn_thread(app) as port:
            url = f"http://127.0.0.1:{port}"
            login = httpx.post(f"{url}/api/v1/auth/login",
                               json={"username": ADMIN[0], "password": ADMIN[1]}, timeout=30)
            login.raise_for_status()
            yield RadarConsole(url=url, app=app, engine=engine, token=login.json()["token"])
    finally:
        engine.dispose()


# --- the "shop" picture used by the browser tests ------------------------------------

SHOP_POLICY = {
    "apiVersion": "cnnf/v1", "kind": "Policy",
    "spec": {
        "objects": [
            {"name": "web", "kind": "container", "selector": {"images": ["shop/web*"]}},
            {"name": "api", "kind": "container", "selector": {"images": ["shop/api*"]}},
            {"name": "db", "kind": "container", "selector": {"images": ["shop/db*"]}},
            {"name": "cache", "kind": "container", "selector": {"images": ["shop/cache*"]}},
            {"name": "lan", "kind": "subnet", "cidrs": ["192.0.2.0/24"]},
            {"name": "payments", "kind": "dns", "domains": ["*.pay.example"]},
            {"name": "nodes", "kind": "host", "selector": {"hosts": ["node-*"]}},
        ],
        "containerRules": [
            {"id": 1, "name": "web-api", "src": "web", "dst": "api", "ports": [8080]},
            {"id": 2, "name": "api-db", "src": "api", "dst": "db", "ports": [5432],
             "effect": "alert"},
            {"id": 3, "name": "api-lan", "src": "api", "dst": "lan", "ports": ["*"],
             "effect": "prevent"},
            {"id": 4, "name": "web-cache", "src": "web", "dst": "cache", "ports": [6379]},
        ],
        "hostRules": [{"id": 1, "name": "ssh", "src": "nodes", "dst": "nodes", "ports": [22]}],
    },
}


def _trivy(name: str, severities: list[str]) -> dict[str, Any]:
    return {"SchemaVersion": 2, "ArtifactName": name, "Results": [
        {"Target": name, "Vulnerabilities": [
            {"VulnerabilityID": f"CVE-2026-{i:04d}", "PkgName": "pkg", "Severity": s}
            for i, s in enumerate(severities)]},
        {"Target": "config", "MisconfSummary": {"Successes": 12, "Failures": 2}}]}


def seed_shop(console: RadarConsole) -> None:
    with console.client() as api:
        api.post("/api/v1/policy/import", json=SHOP_POLICY).raise_for_status()
        for name, sev in [("shop/db:15", ["CRITICAL", "HIGH"]), ("shop/api:2.0", ["HIGH", "LOW"]),
                          ("shop/web:1.4", ["MEDIUM"]), ("shop/cache:7", [])]:
            api.post("/api/v1/overlays/image/trivy", json=_trivy(name, sev)).raise_for_status()
    w = WorkloadInfo
    console.report_inventory(
        hosts=[HostInfo(name="node-1", addresses=["10.10.0.1"], labels={"zone": "a"}),
               HostInfo(name="node-2", addresses=["10.10.0.2"], labels={"zone": "b"})],
        containers=[
            w(address="10.88.1.2", image="shop/web:1.4", name="web-1", namespace="shop",
              host="node-1", labels={"app": "web"}),
            w(address="10.88.1.3", image="shop/web:1.4", name="web-2", namespace="shop",
              host="node-2", labels={"app": "web"}),
            w(address="10.88.1.4", image="shop/web:1.4", name="web-3", namespace="shop",
              host="node-1", labels={"app": "web"}),
            w(address="10.88.1.5", image="shop/api:2.0", name="api-1", namespace="shop",
              host="node-1", labels={"app": "api"}),
            w(address="10.88.1.6", image="shop/api:2.0", name="api-2", namespace="shop",
              host="node-2", labels={"app": "api"}),
            w(address="10.88.1.7", image="shop/db:15", name="db-1", namespace="data",
              host="node-2", labels={"app": "db"}),
            w(address="10.88.1.8", image="shop/cache:7", name="cache-1", namespace="shop",
              host="node-1", labels={"app": "cache"}),
            w(address="10.88.1.9", image="monitoring/agent:1", name="agent-1",
              namespace="monitoring", host="node-1"),
            w(address="10.88.1.10", image="monitoring/agent:1", name="agent-2",
              namespace="monitoring", host="node-2"),
        ])
    now = datetime.now(UTC)
    hour = timedelta(hours=1)

    def flow(src: str, dst: str, port: int, verdict: str = "observed",
             rule: tuple[int, str] = (0, ""), *, count: int = 10,
             kind: str = "container") -> FlowRecord:
        return FlowRecord(kind=kind, src=src, dst=dst, port=port, verdict=verdict,
                          rule_id=rule[0], rule_name=rule[1], count=count,
                          first_seen=now - 5 * hour, last_seen=now - hour / 6)

    console.add_flows([
        flow("image:shop/web", "image:shop/api", 8080, "allow", (1, "web-api"), count=1200),
        flow("image:shop/api", "image:shop/db", 5432, "alert", (2, "api-db"), count=340),
        flow("image:shop/api", "addr:192.0.2.10", 443, "prevent", (3, "api-lan"), count=7),
        flow("image:monitoring/agent", "image:shop/api", 9100, count=55),
        flow("image:monitoring/agent", "image:shop/api", 9101, count=5),
        flow("image:shop/api", "dns:api.pay.example", 443, count=31),
        flow("image:shop/web", "addr:203.0.113.50", 443, count=3),
        flow("host:node-1", "host:node-2", 22, "allow", (1, "ssh"), count=4, kind="host"),
    ])

    def audit(dst_image: str, port: int, blocked: bool, rule_id: int, rule: str,
              **extra: str) -> AuditRecord:
        return AuditRecord(time=now - hour / 3, type="container", rule_id=rule_id,
                           rule_name=rule, blocked=blocked,
                           effect=Effect.PREVENT if blocked else Effect.ALERT,
                           src_image="shop/api:2.0", src_container="api-1",
                           src_namespace="shop", src_hostname="node-1", dst_image=dst_image,
                           port=port, count=3,
                           msg=f"{'blocked' if blocked else 'alerted on'} connection from "
                               f"shop/api:2.0 port {port} by rule {rule!r}", **extra)

    console.add_audits([
        audit("shop/db:15", 5432, False, 2, "api-db", dst_container="db-1",
              dst_hostname="node-2"),
        audit("", 443, True, 3, "api-lan", dst_address="192.0.2.10",
              dst_subnet="192.0.2.0/24"),
    ])
