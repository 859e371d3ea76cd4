# ruff: noqa: E501  (tables of cases read best one case per line)
"""What-if simulation: drafts evaluated by the real engine against the identities
recorded with each flow (tables)."""

from __future__ import annotations

from typing import Any

import pytest

from cnnf.model import Effect, Policy
from cnnf.policy.simulate import simulate
from tests.policy.shopflows import API, CACHE, DB, FRONTEND, PARTNER, SHOP, WORKER, flow

OBJECTS: list[dict[str, Any]] = [
    {"kind": "container", "name": "api", "selector": {"labels": ["app=api"], "namespaces": ["shop-web"]}},
    {"kind": "container", "name": "db", "selector": {"images": ["shop/db"]}},
    {"kind": "container", "name": "data", "selector": {"namespaces": ["shop-data"]}},
    {"kind": "container", "name": "any", "selector": {"images": ["*"]}},
    {"kind": "dns", "name": "partner", "domains": ["api.partner.example"]},
    {"kind": "subnet", "name": "net203", "cidrs": ["203.0.113.0/24"]},
    {"kind": "subnet", "name": "db-net", "cidrs": ["10.64.2.0/24"]},
]


def policy(rules: list[dict[str, Any]], default: str = "allow") -> Policy:
    return Policy.model_validate({
        "objects": OBJECTS, "default_effect": default,
        "container_rules": [{"id": i + 1, "name": f"r{i + 1}", **r} for i, r in enumerate(rules)],
    })


CURRENT = policy([{"src": "api", "dst": "data", "ports": "*", "effect": "allow"}])

CASES: list[tuple[str, Policy, Policy, dict[str, int], set[tuple[str, str, int]]]] = [
    # name, current, draft, transitions (flows), changed edges (src, dst, port)
    ("identical draft reports nothing", CURRENT, CURRENT, {}, set()),
    ("identical draft, other revision", CURRENT, CURRENT.model_copy(update={"revision": 9}), {}, set()),
    ("prevent api -> db reports exactly api -> db",
     CURRENT, policy([{"src": "api", "dst": "db", "effect": "prevent"}, {"src": "api", "dst": "data", "ports": "*"}]),
     {"allow -> prevent": 2}, {("image:shop/api:1.0", "image:shop/db:1.0", 5432), ("image:shop/api:1.0", "image:shop/db:1.0", 5433)}),
    ("prevent by the destination's address (subnet object)",
     CURRENT, policy([{"src": "any", "dst": "db-net", "ports": [5432], "effect": "prevent"}, {"src": "api", "dst": "data", "ports": "*"}]),
     {"allow -> prevent": 1, "unmatched (allow) -> prevent": 1},
     {("image:shop/api:1.0", "image:shop/db:1.0", 5432), ("image:shop/worker:1.0", "image:shop/db:1.0", 5432)}),
    ("default prevent: every unmatched flow, nothing a rule decides",
     CURRENT, CURRENT.model_copy(update={"default_effect": Effect.PREVENT}),
     {"unmatched (allow) -> unmatched (prevent)": 5},
     {("host:node-1", "host:node-2", 22), ("image:shop/frontend:1.0", "image:shop/api:1.0", 8080), ("image:shop/worker:1.0", "image:shop/db:1.0", 5432),
      ("image:shop/payments:1.0", "dns:api.partner.example", 443), ("image:shop/worker:1.0", "addr:203.0.113.99", 80)}),
    ("an allow rule for a hole: unmatched -> allow",
     CURRENT, policy([{"src": "api", "dst": "data", "ports": "*"}, {"src": "any", "dst": "partner", "ports": [443]}]),
     {"unmatched (allow) -> allow": 1}, {("image:shop/payments:1.0", "dns:api.partner.example", 443)}),
    ("another rule with the same effect is no change",
     CURRENT, policy([{"src": "any", "dst": "db", "ports": "*"}, {"src": "api", "dst": "data", "ports": "*"}]),
     {"unmatched (allow) -> allow": 1}, {("image:shop/worker:1.0", "image:shop/db:1.0", 5432)}),
    ("a disabled rule decides nothing",
     CURRENT, policy([{"src": "api", "dst": "data", "ports": "*", "disabled": True}]),
     {"allow -> unmatched (allow)": 4}, {("image:shop/api:1.0", "image:shop/db:1.0", 5432), ("image:shop/api:1.0", "image:shop/db:1.0", 5433),
                                         ("image:shop/api:1.0", "image:shop/cache:1.0", 6379), ("image:shop/api:1.0", "image:shop/payments:1.0", 9090)}),
]


@pytest.mark.parametrize(("name", "current", "draft", "transitions", "edges"), CASES, ids=[c[0] for c in CASES])
def test_simulate(name: str, current: Policy, draft: Policy, transitions: dict[str, int],
                  edges: set[tuple[str, str, int]]) -> None:
    impact = simulate(current, draft, SHOP)
    assert impact.flows == len(SHOP)
    assert impact.count == sum(f.count for f in SHOP)
    assert impact.transitions == transitions
    assert {(e.src, e.dst, e.port) for e in impact.edges} == edges
    assert impact.changed_flows == sum(transitions.values())
    assert sum(r.flows for r in impact.rules) == impact.changed_flows


def test_grouped_by_edge_and_by_deciding_rule() -> None:
    flows = [flow(API, DB, 5432, count=5, minutes=0), flow(API, DB, 5432, count=7, minutes=10),
             flow(WORKER, DB, 5432, count=2), flow(API, CACHE, 6379, count=1), flow(FRONTEND, PARTNER, 443)]
    draft = policy([{"src": "any", "dst": "db", "effect": "prevent"}, {"src": "api", "dst": "data", "ports": "*"}])
    impact = simulate(CURRENT, draft, flows)
    [api_db, worker_db] = impact.edges  # two edges, the busiest first
    assert (api_db.src, api_db.dst, api_db.port, api_db.flows, api_db.count) == ("image:shop/api:1.0", "image:shop/db:1.0", 5432, 2, 12)
    assert (api_db.before.label, api_db.before.rule_name, api_db.after.label, api_db.after.rule_name) == ("allow", "r1", "prevent", "r1")
    assert api_db.first_seen == flows[0].first_seen and api_db.last_seen == flows[1].last_seen
    assert worker_db.before.label == "unmatched (allow)"
    [rule] = impact.rules
    assert (rule.rule_id, rule.rule_name, rule.effect, rule.flows, rule.count) == (1, "r1", Effect.PREVENT, 3, 14)
    assert rule.transitions == {"allow -> prevent": 2, "unmatched (allow) -> prevent": 1}


def test_recorded_verdict_is_reported_not_compared() -> None:
    # Recorded as prevented by a rule since deleted: the current policy allows it
    # and so does the draft: no change.
    old = flow(API, DB, 5432, verdict="prevent", rule_id=4)
    assert simulate(CURRENT, CURRENT, [old]).edges == []
    impact = simulate(CURRENT, policy([]), [old])
    assert impact.edges[0].recorded == "prevent"
