# ruff: noqa: E501  (tables of cases read best one case per line)
"""Learning a policy from observed flows (tables over the shop's flows)."""

from __future__ import annotations

from typing import Any

import pytest

from cnnf.model import ConnectionAttempt, Effect, Policy, RuleKind
from cnnf.policy.engine import compile_policy
from cnnf.policy.learn import (
    MAX_ADDRESSES,
    PORT_ZERO,
    REFUSED,
    LearnOptions,
    Scope,
    learn,
    too_many_addresses,
)
from cnnf.policy.simulate import simulate
from tests.policy.shopflows import (
    API,
    CACHE,
    DB,
    FRONTEND,
    PARTNER,
    RAW,
    SHOP,
    WORKER,
    external,
    flow,
    host,
    workload,
)


def by_name(policy: Policy) -> dict[str, Any]:
    return {o.name: o.model_dump(mode="json", by_alias=True, exclude={"name", "description"}, exclude_defaults=True) | {"kind": o.kind.value} for o in policy.objects}


def rules_of(proposal: Any) -> list[tuple[str, str, str, list[str]]]:
    return [(r.kind.value, r.rule.src, r.rule.dst, [str(p) for p in r.rule.ports]) for r in proposal.rules]


def test_empty_policy_learns_the_shop() -> None:
    proposal = learn(Policy(), SHOP, LearnOptions(default_effect=Effect.PREVENT))
    assert rules_of(proposal) == [
        ("container", "shop-data:app=payments", "dns=api.partner.example", ["443"]),
        ("container", "shop-data:image=shop.worker", "addr=203.0.113.99", ["80"]),
        ("container", "shop-data:image=shop.worker", "shop-data:app=db", ["5432"]),
        ("container", "shop-web:app=api", "shop-data:app=cache", ["6379"]),
        ("container", "shop-web:app=api", "shop-data:app=db", ["5432-5433"]),  # two ports, one rule
        ("container", "shop-web:app=api", "shop-data:app=payments", ["9090"]),
        ("container", "shop-web:app=frontend", "shop-web:app=api", ["8080"]),
        ("host", "host=node-1", "host=node-2", ["22"]),
    ]
    objects = by_name(proposal.policy)
    # A stable label when the workload carries one, else namespace and image (any tag).
    assert objects["shop-web:app=api"] == {"kind": "container", "selector": {"labels": ["app=api"], "namespaces": ["shop-web"]}}
    assert objects["shop-data:image=shop.worker"] == {"kind": "container", "selector": {"images": ["shop/worker"], "namespaces": ["shop-data"]}}
    assert objects["dns=api.partner.example"] == {"kind": "dns", "domains": ["api.partner.example"]}
    assert objects["addr=203.0.113.99"] == {"kind": "subnet", "cidrs": ["203.0.113.99/32"]}
    assert objects["host=node-1"] == {"kind": "host", "selector": {"hosts": ["node-1"]}}
    bases = {o.name: o.basis for o in proposal.objects}
    assert bases["shop-web:app=api"] == "label app=api in shop-web"
    assert bases["shop-data:image=shop.worker"] == "image shop/worker in shop-data"
    assert proposal.policy.default_effect is Effect.PREVENT
    assert proposal.learnt_flows == len(SHOP) and proposal.unallowed == 0 and proposal.skipped == {}
    # Evidence: flows, connections, first and last seen, the edges.
    api_db = next(r for r in proposal.rules if r.rule.dst == "shop-data:app=db" and r.rule.src == "shop-web:app=api")
    assert (api_db.evidence.flows, api_db.evidence.count) == (2, 243)
    assert api_db.evidence.edges == ["image:shop/api:1.0 -> image:shop/db:1.0:5432", "image:shop/api:1.0 -> image:shop/db:1.0:5433"]
    assert api_db.evidence.first_seen is not None and api_db.evidence.last_seen is not None
    assert api_db.replaces is None


def test_a_connection_refused_when_recorded_is_not_learnt() -> None:
    """Under default prevent, a workload's refused attempts (a lateral move, a
    scan) are counted as skipped, never proposed as allowed."""
    attempts = [flow(FRONTEND, DB, 5432, verdict="prevent", count=3),
                *(flow(API, DB, port, verdict="prevent") for port in range(1, 40))]
    proposal = learn(Policy(), [*SHOP, *attempts], LearnOptions(default_effect=Effect.PREVENT))
    assert rules_of(proposal) == rules_of(learn(Policy(), SHOP, LearnOptions()))
    assert proposal.skipped == {REFUSED: len(attempts)}
    engine = compile_policy(proposal.policy)
    v = engine.evaluate(ConnectionAttempt(attempts[0].src_ep, attempts[0].dst_ep, 5432))
    assert v.effect is Effect.PREVENT and not v.matched


def test_the_proposal_allows_what_was_seen_and_refuses_a_lateral_move() -> None:
    proposal = learn(Policy(), SHOP, LearnOptions(default_effect=Effect.PREVENT))
    engine = compile_policy(proposal.policy)
    for f in SHOP:
        v = engine.evaluate(ConnectionAttempt(f.src_ep, f.dst_ep, f.port))
        assert v.matched and v.effect is Effect.ALLOW, f
    lateral = flow(FRONTEND, DB, 5432)
    v = engine.evaluate(ConnectionAttempt(lateral.src_ep, lateral.dst_ep, lateral.port))
    assert (v.matched, v.effect) == (False, Effect.PREVENT)
    # Simulating the proposal against the window: nothing seen would be refused.
    impact = simulate(Policy(), proposal.policy, SHOP)
    assert impact.transitions == {"unmatched (allow) -> allow": len(SHOP)}


EXISTING: list[dict[str, Any]] = [
    {"kind": "container", "name": "api", "selector": {"images": ["shop/api"]}},
    {"kind": "container", "name": "data", "selector": {"namespaces": ["shop-data"]}},
    {"kind": "container", "name": "db", "selector": {"labels": ["app=db"]}},
    {"kind": "subnet", "name": "doc-net", "cidrs": ["203.0.113.0/24"]},
]


def existing(rules: list[dict[str, Any]]) -> Policy:
    return Policy.model_validate({"objects": EXISTING, "container_rules": [
        {"id": i + 10, "name": f"r{i + 10}", **r} for i, r in enumerate(rules)]})


CASES = [
    # name, existing rules, flows, expected proposed rules, replaces, covered (rule id -> flows)
    ("reuses objects that select exactly the workload", [], [flow(API, DB, 5432)],
     [("container", "api", "db", ["5432"])], [None], {}),
    ("a broad object (a whole namespace) is not reused for one workload", [], [flow(API, CACHE, 6379), flow(API, DB, 5432)],
     [("container", "api", "db", ["5432"]), ("container", "api", "shop-data:app=cache", ["6379"])], [None, None], {}),
    ("a declared subnet names an external address", [], [flow(WORKER, RAW, 80)],
     [("container", "shop-data:image=shop.worker", "doc-net", ["80"])], [None], {}),
    ("a DNS name wins over the subnet", [], [flow(WORKER, PARTNER, 443)],
     [("container", "shop-data:image=shop.worker", "dns=api.partner.example", ["443"])], [None], {}),
    ("an existing allow rule between the same objects is widened", [{"src": "api", "dst": "db", "ports": [5432]}],
     [flow(API, DB, 5432), flow(API, DB, 6432)], [("container", "api", "db", ["5432", "6432"])], [10], {10: 1}),
    ("flows an existing rule decides are covered, not learnt", [{"src": "api", "dst": "data", "ports": "*", "effect": "prevent"}],
     [flow(API, DB, 5432), flow(API, CACHE, 6379), flow(WORKER, DB, 5432)],
     [("container", "shop-data:image=shop.worker", "db", ["5432"])], [None], {10: 2}),
]


@pytest.mark.parametrize(("name", "rules", "flows", "expected", "replaces", "covered"), CASES, ids=[c[0] for c in CASES])
def test_learn_against_an_existing_policy(  # noqa: PLR0917
        name: str, rules: list[dict[str, Any]], flows: list[Any], expected: list[Any],
                                          replaces: list[int | None], covered: dict[int, int]) -> None:
    current = existing(rules)
    proposal = learn(current, flows)
    assert rules_of(proposal) == expected
    assert [r.replaces for r in proposal.rules] == replaces
    assert {c.rule_id: c.evidence.flows for c in proposal.covered} == covered
    assert proposal.unallowed == 0
    # The existing rules keep their place, first; existing objects stay.
    assert [r.id for r in proposal.policy.container_rules[:len(rules)]] == [r.id for r in current.container_rules]
    assert proposal.policy.objects[:len(EXISTING)] == current.objects
    assert proposal.policy.default_effect is Effect.ALLOW  # kept unless asked


def test_siblings_in_several_namespaces_share_one_rule() -> None:
    flows = [flow(workload("api", ns), DB, 5432) for ns in ("team-a", "team-b")]
    flows.append(flow(workload("api", "team-c"), DB, 5433))  # behaves differently
    proposal = learn(Policy(), flows)
    assert rules_of(proposal) == [
        ("container", "team-a+team-b:app=api", "shop-data:app=db", ["5432"]),
        ("container", "team-c:app=api", "shop-data:app=db", ["5433"]),
    ]
    merged = proposal.policy.object("team-a+team-b:app=api")
    assert merged is not None and merged.model_dump(mode="json", by_alias=True, exclude_defaults=True)["selector"] == {
        "labels": ["app=api"], "namespaces": ["team-a", "team-b"]}


def test_label_key_can_be_chosen_and_missing_labels_fall_back_to_the_image() -> None:
    proposal = learn(Policy(), [flow(API, DB, 5432)], LearnOptions(label_key="tier"))
    assert rules_of(proposal) == [("container", "shop-web:tier=x", "shop-data:tier=x", ["5432"])]
    proposal = learn(Policy(), [flow(API, DB, 5432)], LearnOptions(label_key=""))
    assert rules_of(proposal) == [("container", "shop-web:image=shop.api", "shop-data:image=shop.db", ["5432"])]


def test_host_flows_become_host_rules_and_unlearnable_flows_are_counted() -> None:
    inbound = flow(external("198.51.100.7"), API, 8080)  # no rule list applies to an address source
    to_host_dns = flow(host("node-1"), external("203.0.113.20", "api.partner.example"), 443)
    proposal = learn(Policy(), [inbound, to_host_dns])
    # A host rule takes no DNS object: the address's own subnet.
    assert rules_of(proposal) == [("host", "host=node-1", "addr=203.0.113.20", ["443"])]
    assert proposal.rules[0].kind is RuleKind.HOST
    assert proposal.skipped == {"the source is not a container": 1}


SCOPES = [
    (Scope(), 9),
    (Scope(namespace="shop-web"), 5),  # frontend->api, api->db x2, api->cache, api->payments
    (Scope(host="node-2"), 7),
    (Scope(images=("shop/worker",)), 2),
    (Scope(images=("shop/worker:*", "shop/frontend")), 3),
    (Scope(namespace="shop-web", images=("shop/frontend",)), 1),
]


@pytest.mark.parametrize(("scope", "flows"), SCOPES)
def test_scope(scope: Scope, flows: int) -> None:
    assert sum(1 for f in SHOP if scope.admits(f)) == flows


def test_a_source_reaching_many_bare_addresses_gets_at_most_max_addresses_rules() -> None:
    """A crawler or a scan: one rule per address for the first MAX_ADDRESSES (by
    address), the flows to the rest skipped and counted, saying why."""
    addresses = [f"198.51.{i // 250}.{i % 250 + 1}" for i in range(MAX_ADDRESSES + 50)]
    flows = [flow(WORKER, external(a), 443) for a in reversed(addresses)]
    proposal = learn(Policy(), [*flows, flow(API, DB, 5432)])
    dsts = [r.rule.dst for r in proposal.rules if r.rule.src == "shop-data:image=shop.worker"]
    assert len(dsts) == MAX_ADDRESSES
    assert set(dsts) == {f"addr={a}" for a in addresses[:MAX_ADDRESSES]}
    assert proposal.skipped == {too_many_addresses("image shop/worker in shop-data", 150,
                                                   "198.51.0.1", "198.51.0.100"): 50}
    assert proposal.learnt_flows == MAX_ADDRESSES + 1 and proposal.unallowed == 0
    # A declared subnet holding them all: one rule, nothing skipped.
    declared = Policy.model_validate({"objects": [
        {"kind": "subnet", "name": "crawl-net", "cidrs": ["198.51.0.0/16"]}]})
    proposal = learn(declared, flows)
    assert rules_of(proposal) == [("container", "shop-data:image=shop.worker", "crawl-net", ["443"])]
    assert proposal.skipped == {}


def test_a_flow_to_port_0_is_skipped_saying_why_and_the_rest_is_learnt() -> None:
    """Port 0 is no port a rule can name (1-65535): a proposal with a rule for it
    could not be valid. Its flows are skipped with the reason; the others learnt."""
    proposal = learn(Policy(), [flow(API, DB, 0), flow(API, DB, 0, verdict="alert"),
                                flow(API, DB, 5432)])
    assert rules_of(proposal) == [("container", "shop-web:app=api", "shop-data:app=db", ["5432"])]
    assert proposal.skipped == {PORT_ZERO: 2}
    assert PORT_ZERO.startswith("destination port 0 ")
    assert proposal.learnt_flows == 1 and proposal.unallowed == 0
    # only port 0 seen: nothing proposed, nothing fails
    alone = learn(Policy(), [flow(WORKER, external("198.51.100.7"), 0)])
    assert (alone.rules, alone.skipped) == ([], {PORT_ZERO: 1})


def test_the_cap_says_per_source_what_was_capped_what_was_kept_and_what_to_do() -> None:
    """Two sources over the cap: one reason each, naming the source and the
    addresses kept."""
    many = [f"198.51.{i // 250}.{i % 250 + 1}" for i in range(MAX_ADDRESSES + 30)]
    proposal = learn(Policy(), [*(flow(WORKER, external(a), 443) for a in many),
                                *(flow(API, external(a), 80) for a in many[:MAX_ADDRESSES + 5])])
    (worker, w_n), (api, a_n) = sorted(proposal.skipped.items(), key=lambda kv: -kv[1])
    assert (w_n, a_n) == (30, 5)
    assert worker.startswith("capped: the source image shop/worker in shop-data reached 130 "
                             f"addresses that have no DNS name and no subnet object (more than "
                             f"{MAX_ADDRESSES}); rules were proposed for the first "
                             f"{MAX_ADDRESSES} of them in address order (IPv4 first) only, "
                             "198.51.0.1 to 198.51.0.100, and the flows to the other 30 were "
                             "not learnt. ")
    assert worker.endswith("add a subnet object holding those addresses and learn again")
    assert api.startswith("capped: the source label app=api in shop-web reached 105 addresses")
    assert "198.51.0.1 to 198.51.0.100, and the flows to the other 5 were not learnt" in api


def test_the_address_cap_orders_ipv4_before_ipv6() -> None:
    """IPv4 and IPv6 addresses do not compare: a source reaching both, over the
    cap, keeps the IPv4 ones first instead of failing the whole learn."""
    v4 = [f"198.51.{i // 250}.{i % 250 + 1}" for i in range(MAX_ADDRESSES)]
    v6 = ["2001:db8::1", "2001:db8::2"]
    proposal = learn(Policy(), [flow(WORKER, external(a), 443) for a in [*v6, *v4]])
    dsts = {r.rule.dst for r in proposal.rules}
    assert dsts == {f"addr={a}" for a in v4}
    assert proposal.skipped == {too_many_addresses(
        "image shop/worker in shop-data", MAX_ADDRESSES + 2, v4[0], v4[-1]): 2}


def test_a_staged_allow_rule_is_not_widened() -> None:
    """A staged rule is not in force: widening it would leave the flow refused
    by the default; a rule in force is proposed instead."""
    current = existing([{"src": "api", "dst": "db", "ports": [5432], "staged": True}])
    proposal = learn(current, [flow(API, DB, 6432)])
    assert [r.replaces for r in proposal.rules] == [None]
    assert rules_of(proposal) == [("container", "api", "db", ["6432"])]
    assert proposal.unallowed == 0
