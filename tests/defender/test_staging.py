"""Staged rules, the staged default effect and enforcement off: "would" verdicts
from the engine through the Defender's recorder, played without sockets."""

from __future__ import annotations

import pickle

import pytest

from cnnf.defender.agent import verdict_detail, verdict_from_detail
from cnnf.defender.core import Action, Decider, Recorder, unenforced
from cnnf.defender.inventory import Inventory
from cnnf.model import (
    ContainerIdentity,
    ContainerObject,
    ContainerSelector,
    Effect,
    HostIdentity,
    Policy,
    Rule,
)
from cnnf.policy.engine import compile_policy
from cnnf.policy.naive import naive_evaluate

NODE = HostIdentity(name="node-1", addresses=("10.0.0.1",))
WEB = ContainerIdentity(image="shop/web:1.0", name="web-1", namespace="shop", host="node-1")
API = ContainerIdentity(image="shop/api:1.0", name="api-1", namespace="shop", host="node-1")
DB = ContainerIdentity(image="shop/db:13", name="db-1", namespace="shop", host="node-2")
INV = Inventory.build(NODE, containers=[("10.1.0.2", WEB), ("10.1.0.3", API)],
                      remote=[("10.2.0.5", DB)])
OBJECTS = (
    ContainerObject(name="web", selector=ContainerSelector(images=("shop/web",))),
    ContainerObject(name="api", selector=ContainerSelector(images=("shop/api",))),
    ContainerObject(name="db", selector=ContainerSelector(images=("shop/db",))),
)


def staged_policy(*, staged_default: Effect | None = None, enabled: bool = True) -> Policy:
    return Policy(
        container_enabled=enabled,
        staged_default_effect=staged_default,
        objects=OBJECTS,
        container_rules=(
            Rule(id=1, name="web-api", src="web", dst="api", ports=8080),
            Rule(id=2, name="web-db", src="web", dst="db", effect=Effect.PREVENT, staged=True),
            Rule(id=3, name="web-db-off", src="web", dst="db", effect=Effect.ALERT,
                 staged=True, disabled=True),
        ),
        revision=4,
    )


def test_a_staged_rule_is_not_in_force_and_decides_the_would_verdict() -> None:
    decider = Decider(compile_policy(staged_policy()), INV)
    d = decider.decide("10.1.0.2", "10.2.0.5", 5432)
    assert d.action is Action.ACCEPT  # refuses nothing
    assert (d.verdict.effect, d.verdict.matched, d.verdict.rule_id) == (Effect.ALLOW, False, None)
    assert d.verdict.would is not None
    assert (d.verdict.would.effect, d.verdict.would.rule_id) == (Effect.PREVENT, 2)
    # the enforced rule before it: no would verdict (nothing staged changes it)
    assert decider.decide("10.1.0.2", "10.1.0.3", 8080).verdict.would is None
    # a disabled staged rule is not staged in force either
    assert compile_policy(staged_policy()).staged is not None


def test_a_staged_default_effect_decides_only_unmatched_connections() -> None:
    decider = Decider(compile_policy(staged_policy(staged_default=Effect.PREVENT)), INV)
    matched = decider.decide("10.1.0.2", "10.1.0.3", 8080).verdict
    assert matched.would is None and matched.rule_id == 1
    hole = decider.decide("10.1.0.3", "10.1.0.2", 80)
    assert hole.action is Action.ACCEPT
    assert hole.verdict.would is not None
    assert (hole.verdict.would.effect, hole.verdict.would.matched) == (Effect.PREVENT, False)
    # an address-only source: no rule list applies, the staged default would decide
    outside = decider.decide("198.51.100.1", "10.1.0.2", 80).verdict
    assert outside.would is not None and outside.would.effect is Effect.PREVENT


def test_nothing_staged_gives_no_second_snapshot_and_no_would_verdicts() -> None:
    plain = staged_policy().in_force()
    compiled = compile_policy(plain)
    assert compiled.staged is None
    d = Decider(compiled, INV).decide("10.1.0.2", "10.2.0.5", 5432)
    assert d.action is Action.REJECT and d.verdict.would is None and d.verdict.rule_id == 2


@pytest.mark.parametrize(("src", "dst", "port"), [
    ("10.1.0.2", "10.2.0.5", 5432), ("10.1.0.2", "10.1.0.3", 8080),
    ("10.1.0.3", "10.2.0.5", 1), ("198.51.100.1", "10.1.0.2", 80),
])
@pytest.mark.parametrize("default", [None, Effect.PREVENT, Effect.ALERT])
def test_the_engine_agrees_with_the_naive_evaluator(src: str, dst: str, port: int,
                                                     default: Effect | None) -> None:
    p = staged_policy(staged_default=default)
    decider = Decider(compile_policy(p), INV)
    attempt = decider.attempt(src, dst, port)
    assert compile_policy(p).evaluate(attempt) == naive_evaluate(p, attempt)
    assert compile_policy(p, verdict_cache=0).evaluate(attempt) == naive_evaluate(p, attempt)


def test_explain_says_a_rule_is_staged_and_what_it_would_do() -> None:
    compiled = compile_policy(staged_policy())
    attempt = Decider(compiled, INV).attempt("10.1.0.2", "10.2.0.5", 5432)
    lines = compiled.explain(attempt).lines()
    assert lines[0].startswith("verdict: allow (no rule matched")
    assert lines[1] == ("would: prevent by container rule 2 'web-db' (staged: reported, "
                        "not enforced)")
    assert any("'web-db': staged" in line for line in lines)


def test_the_would_verdict_crosses_from_the_worker_intact() -> None:
    v = Decider(compile_policy(staged_policy()), INV).decide("10.1.0.2", "10.2.0.5", 1).verdict
    detail = pickle.loads(pickle.dumps(verdict_detail(v, epoch=3, generation=9)))
    assert verdict_from_detail(detail) == v
    assert detail[7:] == (3, 9)


def test_recorder_reports_would_verdicts_on_flows_and_as_would_audits() -> None:
    compiled = compile_policy(staged_policy())
    decider = Decider(compiled, INV)
    rec = Recorder(reporter="node-1", fold_window=5.0)
    for t in (1.0, 2.0, 3.0):
        rec.record(decider.decide("10.1.0.2", "10.2.0.5", 5432), compiled, t)
    # the kernel's fast path answered 4 repeats of the same verdict: counted exactly
    rec.record(decider.decide("10.1.0.2", "10.2.0.5", 5432), compiled, 4.0, count=4)
    rec.record(decider.decide("10.1.0.2", "10.1.0.3", 8080), compiled, 4.0)
    flows, audits = rec.drain(100.0)
    staged = next(f for f in flows if f.port == 5432)
    assert (staged.effect, staged.matched, staged.count) == (Effect.ALLOW, False, 7)
    assert (staged.would_effect, staged.would_rule_id, staged.would_rule_name) == (
        Effect.PREVENT, 2, "web-db")
    assert "would_effect" not in next(f for f in flows if f.port == 8080).model_dump(
        exclude_none=False)  # no would verdict: left out of the wire form
    [audit] = audits
    assert audit.would and not audit.blocked and audit.effect is Effect.PREVENT
    assert (audit.rule_id, audit.count) == (2, 7)
    assert audit.message == ("would block connection from shop/web:1.0 (web-1) to "
                             "shop/db:13 (db-1) port 5432 by rule 'web-db' (not enforced: staged)")


def test_enforcement_off_records_what_happened_and_what_the_policy_would_do() -> None:
    p = staged_policy(enabled=False).in_force()  # rule 2 in force, enforcement off
    compiled = compile_policy(p)
    decider = Decider(compiled, INV)
    rec = Recorder(reporter="node-1")
    rec.observe(decider, "10.1.0.2", "10.2.0.5", 5432, now=1.0)  # rule 2 would prevent
    rec.observe(decider, "10.1.0.2", "10.1.0.3", 8080, now=1.0)  # rule 1 allows
    rec.observe(decider, "10.1.0.3", "10.1.0.2", 80, now=1.0)  # a hole
    flows, audits = rec.drain(100.0)
    by_port = {f.port: f for f in flows}
    assert all(f.mode == "observed" and f.effect is Effect.ALLOW for f in flows)
    prevented = by_port[5432]
    assert (prevented.matched, prevented.would_effect, prevented.would_rule_id) == (
        False, Effect.PREVENT, 2)
    allowed = by_port[8080]  # a rule covers it: allowed by rule 1, no hole
    assert (allowed.matched, allowed.rule_id, allowed.would_effect) == (True, 1, None)
    hole = by_port[80]
    assert (hole.matched, hole.would_effect) == (False, None)
    [audit] = audits
    assert audit.would and not audit.blocked and audit.rule_id == 2
    assert audit.message.endswith("(not enforced: enforcement is off)")


def test_unenforced_keeps_an_allow_and_makes_the_rest_would_verdicts() -> None:
    decider = Decider(compile_policy(staged_policy(staged_default=Effect.ALERT)), INV)
    v = unenforced(decider.decide("10.1.0.3", "10.1.0.2", 80).verdict)
    assert v.effect is Effect.ALLOW and v.would is not None and v.would.effect is Effect.ALERT
