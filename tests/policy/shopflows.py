"""The shop's workloads and flows as the Console stores them, for the learning
and simulation tables (identities go through the stored text and back)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from cnnf.console.services.defenders import endpoint_key
from cnnf.model.records import EndpointInfo
from cnnf.policy.observed import ObservedFlow, endpoint_of, identity_text

T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def workload(app: str, ns: str, *, image: str | None = None, host: str = "node-1",
             label: bool = True, address: str = "10.64.1.2") -> EndpointInfo:
    labels = {"app": app, "tier": "x"} if label else {}
    return EndpointInfo(kind="container", address=address, image=image or f"shop/{app}:1.0",
                        container=app, namespace=ns, host=host, labels=labels)


def host(name: str, address: str = "10.64.0.1") -> EndpointInfo:
    return EndpointInfo(kind="host", host=name, address=address, labels={"zone": "a"})


def external(address: str, domain: str = "") -> EndpointInfo:
    return EndpointInfo(kind="address", address=address, domain=domain)


FRONTEND = workload("frontend", "shop-web")
API = workload("api", "shop-web")
DB = workload("db", "shop-data", host="node-2", address="10.64.2.5")
CACHE = workload("cache", "shop-data")
WORKER = workload("worker", "shop-data", host="node-2", label=False)
PAYMENTS = workload("payments", "shop-data", host="node-2")
PARTNER = external("203.0.113.20", "api.partner.example")
RAW = external("203.0.113.99")


def flow(src: EndpointInfo, dst: EndpointInfo, port: int, *, count: int = 1,
         verdict: str = "observed", rule_id: int = 0, minutes: int = 0) -> ObservedFlow:
    kind = "container" if "container" in (src.kind, dst.kind) else "host"
    s, d = identity_text(src, address=False), identity_text(dst)
    return ObservedFlow(
        kind=kind, src=endpoint_key(src), dst=endpoint_key(dst), port=port,
        src_ep=endpoint_of(s, endpoint_key(src)), dst_ep=endpoint_of(d, endpoint_key(dst)),
        verdict=verdict, rule_id=rule_id, flows=1, count=count,
        first_seen=T0 + timedelta(minutes=minutes),
        last_seen=T0 + timedelta(minutes=minutes + 1))


SHOP = [
    flow(FRONTEND, API, 8080, count=120),
    flow(API, DB, 5432, count=240),
    flow(API, DB, 5433, count=3),
    flow(API, CACHE, 6379, count=200),
    flow(API, PAYMENTS, 9090, count=60),
    flow(WORKER, DB, 5432, count=50),
    flow(PAYMENTS, PARTNER, 443, count=30),
    flow(WORKER, RAW, 80, count=10),
    flow(host("node-1"), host("node-2", "10.64.0.2"), 22, count=4),
]
