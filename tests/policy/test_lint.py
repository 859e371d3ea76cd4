"""Lint: shadowed rules, subnet conflicts, unused objects, disabled rules."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cnnf.model import Policy, RuleKind
from cnnf.policy.engine import compile_policy
from cnnf.policy.lint import Severity, lint_policy, worst
from tests.policy.strategies import attempts, policies


def c(name: str, **selector: list[str]) -> dict[str, Any]:
    return {"kind": "container", "name": name, "selector": selector}


def h(name: str, **selector: list[str]) -> dict[str, Any]:
    return {"kind": "host", "name": name, "selector": selector}


def net(name: str, *cidrs: str) -> dict[str, Any]:
    return {"kind": "subnet", "name": name, "cidrs": list(cidrs)}


def dns(name: str, *domains: str) -> dict[str, Any]:
    return {"kind": "dns", "name": name, "domains": list(domains)}


def r(rid: int, src: str, dst: str, ports: Any = "*", effect: str = "allow", *,
      disabled: bool = False) -> dict[str, Any]:
    return {"id": rid, "name": f"r{rid}", "src": src, "dst": dst, "ports": ports,
            "effect": effect, "disabled": disabled}


def _codes(objects: list[dict[str, Any]], rules: list[dict[str, Any]],
           host_rules: list[dict[str, Any]] = (),  # type: ignore[assignment]
           ) -> list[tuple[str, str, str]]:
    policy = Policy.model_validate({"objects": objects, "containerRules": rules,
                                    "hostRules": list(host_rules)})
    return [(f.code, f.severity.value, f.path) for f in lint_policy(policy)
            if f.code != "unused-object"]


API = c("api", images=["shop/api"])
DB = c("db", images=["shop/db"])
SHADOW = ("shadowed-rule", "warning", "containerRules[1]")


@pytest.mark.parametrize(
    ("objects", "rules", "expected"),
    [
        # same objects, earlier ports cover later ports
        ([API, DB], [r(1, "api", "db", "*"), r(2, "api", "db", [5432])], [SHADOW]),
        ([API, DB], [r(1, "api", "db", [5432]), r(2, "api", "db", "*")], []),
        ([API, DB], [r(1, "api", "db", ["80-85", "86-90"]), r(2, "api", "db", ["82-88"])],
         [SHADOW]),
        ([API, DB], [r(1, "api", "db", [80, 90]), r(2, "api", "db", ["80-90"])], []),
        # a disabled earlier rule covers nothing; a disabled later rule is only noted
        ([API, DB], [r(1, "api", "db", disabled=True), r(2, "api", "db")],
         [("disabled-rule", "info", "containerRules[0]")]),
        ([API, DB], [r(1, "api", "db"), r(2, "api", "db", disabled=True)],
         [("disabled-rule", "info", "containerRules[1]")]),
        # selector coverage: glob over literal, "*", fewer constraints, labels
        ([c("shop", images=["shop/*"]), API, DB], [r(1, "shop", "db"), r(2, "api", "db")],
         [SHADOW]),
        ([c("shop", images=["shop/*"]), API, DB], [r(1, "api", "db"), r(2, "shop", "db")], []),
        ([c("any", images=["*"]), c("prod", namespaces=["prod"]), DB],
         [r(1, "any", "db"), r(2, "prod", "db")], [SHADOW]),
        ([c("wide", images=["shop/api"]), c("narrow", images=["shop/api"], namespaces=["prod"]),
          DB], [r(1, "wide", "db"), r(2, "narrow", "db")], [SHADOW]),
        ([c("narrow", images=["shop/api"], namespaces=["prod"]), c("wide", images=["shop/api"]),
          DB], [r(1, "narrow", "db"), r(2, "wide", "db")], []),
        ([c("l1", labels=["app=*"]), c("l2", labels=["app=api"]), DB],
         [r(1, "l1", "db"), r(2, "l2", "db")], [SHADOW]),
        ([c("l1", labels=["app=api"]), c("l2", labels=["app=a*"]), DB],
         [r(1, "l1", "db"), r(2, "l2", "db")], []),
        # image selectors are compared as the engine matches them: normalised
        ([c("hub", images=["docker.io/shop/db"]), API, DB],
         [r(1, "api", "db"), r(2, "api", "hub")], [SHADOW]),
        ([c("hub", images=["docker.io/shop/*"]), API, DB],
         [r(1, "hub", "db"), r(2, "api", "db")], [SHADOW]),
        # two globs: coverage is not certain, so nothing is said
        ([c("g1", images=["shop/*"]), c("g2", images=["shop/a*"]), DB],
         [r(1, "g1", "db"), r(2, "g2", "db")], []),
        # subnets: CIDR containment, per IP version
        ([API, net("wide", "10.0.0.0/8"), net("narrow", "10.1.0.0/16")],
         [r(1, "api", "wide"), r(2, "api", "narrow")], [SHADOW]),
        ([API, net("v4", "0.0.0.0/0"), net("v6", "fd00::/8")],
         [r(1, "api", "v4"), r(2, "api", "v6")], []),
        # DNS: a wildcard covers names strictly below it
        ([API, dns("all", "*.example.com"), dns("one", "a.b.example.com")],
         [r(1, "api", "all"), r(2, "api", "one")], [SHADOW]),
        ([API, dns("all", "*.example.com"), dns("apex", "example.com")],
         [r(1, "api", "all"), r(2, "api", "apex")], []),
        # only the first covering rule is named, once
        ([API, DB], [r(1, "api", "db"), r(2, "api", "db", [1]), r(3, "api", "db", [2])],
         [SHADOW, ("shadowed-rule", "warning", "containerRules[2]")]),
    ],
)
def test_shadowed_rules(objects: list[dict[str, Any]], rules: list[dict[str, Any]],
                        expected: list[tuple[str, str, str]]) -> None:
    assert _codes(objects, rules) == expected


def test_host_rules_are_linted_too() -> None:
    objects = [h("nodes", hosts=["node-*"]), h("one", hosts=["node-1"])]
    assert _codes(objects, [], [r(1, "nodes", "one", [22]), r(2, "one", "one", [22])]) == [
        ("shadowed-rule", "warning", "hostRules[1]")]


INTERNET = net("internet", "0.0.0.0/0")
PARTNER = dns("partner", "api.partner.example")
WEB = c("web", namespaces=["shop-web"])
DATA = c("data", namespaces=["shop-data"])


@pytest.mark.parametrize(
    ("objects", "rules", "expected"),
    [
        # the subnet rule first silently overrides the specific rule: warning
        ([API, DB, INTERNET], [r(1, "api", "internet", [5432], "prevent"),
                               r(2, "api", "db", [5432], "allow")],
         [("subnet-conflict", "warning", "containerRules[1]")]),
        ([WEB, PARTNER, INTERNET], [r(1, "web", "internet", [443], "prevent"),
                                    r(2, "web", "partner", [443], "allow")],
         [("subnet-conflict", "warning", "containerRules[1]")]),
        # the specific rule first: intended precedence, noted as info
        ([API, DB, INTERNET], [r(1, "api", "db", [5432], "allow"),
                               r(2, "api", "internet", "*", "prevent")],
         [("subnet-conflict", "info", "containerRules[1]")]),
        # same effect, disjoint ports, or sources that can never be the same: no conflict
        ([API, DB, INTERNET], [r(1, "api", "internet", [5432], "allow"),
                               r(2, "api", "db", [5432], "allow")], []),
        ([API, DB, INTERNET], [r(1, "api", "internet", [80], "prevent"),
                               r(2, "api", "db", [5432], "allow")], []),
        ([WEB, DATA, DB, INTERNET], [r(1, "web", "internet", "*", "prevent"),
                                     r(2, "data", "db", [5432], "allow")], []),
        # image literals with and without a tag are the same image: they may overlap
        ([c("api21", images=["shop/api:2.1"]), API, DB, INTERNET],
         [r(1, "api21", "internet", "*", "prevent"), r(2, "api", "db", [5432], "allow")],
         [("subnet-conflict", "warning", "containerRules[1]")]),
    ],
)
def test_subnet_conflicts(objects: list[dict[str, Any]], rules: list[dict[str, Any]],
                          expected: list[tuple[str, str, str]]) -> None:
    assert _codes(objects, rules) == expected


def test_conflict_message_names_both_rules_and_the_winner() -> None:
    policy = Policy.model_validate({
        "objects": [API, DB, INTERNET],
        "containerRules": [r(1, "api", "internet", [5432], "prevent"),
                           r(2, "api", "db", [5432], "allow")]})
    (finding,) = lint_policy(policy)
    assert finding.message == (
        "rule 2 'r2' (allow, to container 'db') and containerRules[0] rule 1 'r1' (prevent, to "
        "subnet 'internet') can see the same connections with different effects; the subnet "
        "rule comes first and decides wherever an address of 'db' lies in 'internet', "
        "overriding rule 2 'r2'")


def test_unused_objects_and_severity_order() -> None:
    policy = Policy.model_validate({
        "objects": [API, DB, PARTNER],
        "containerRules": [r(1, "api", "db", disabled=True)]})
    findings = lint_policy(policy)
    assert [(f.code, f.severity, f.path, f.message) for f in findings] == [
        ("unused-object", Severity.WARNING, "objects[2]",
         "dns object 'partner' is not used by any rule"),
        ("disabled-rule", Severity.INFO, "containerRules[0]",
         "rule 1 'r1' is disabled and never evaluated"),
    ]
    assert worst(findings) is Severity.WARNING
    assert worst(findings[1:]) is Severity.INFO
    assert worst([]) is None
    assert str(findings[1]) == ("info: containerRules[0]: rule 1 'r1' is disabled and never "
                                "evaluated [disabled-rule]")


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policies(max_rules=10), st.data())
def test_a_shadowed_rule_never_decides(policy: Policy, data: st.DataObject) -> None:
    """Lint is conservative: the engine never picks a rule lint calls shadowed."""
    shadowed = set()
    for f in lint_policy(policy):
        if f.code == "shadowed-rule":
            list_name, index = f.path.rstrip("]").split("[")
            kind = RuleKind.CONTAINER if list_name == "containerRules" else RuleKind.HOST
            rules = policy.container_rules if kind is RuleKind.CONTAINER else policy.host_rules
            shadowed.add((kind, rules[int(index)].id))
    compiled = compile_policy(policy)
    for attempt in data.draw(st.lists(attempts(policy), min_size=1, max_size=20)):
        verdict = compiled.evaluate(attempt)
        assert (verdict.rule_kind, verdict.rule_id) not in shadowed
