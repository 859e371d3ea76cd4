"""Property tests: the indexed engine decides exactly like the naive linear scan."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cnnf.model import ConnectionAttempt, Effect, Policy
from cnnf.policy import compile_policy
from cnnf.policy.learn import learn
from cnnf.policy.naive import NaiveEvaluator
from cnnf.policy.observed import ObservedFlow
from cnnf.policy.simulate import simulate
from tests.policy.strategies import attempts, policies

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _key(v: object) -> tuple[object, ...]:
    return (v.effect, v.matched, v.rule_id, v.rule_name, v.rule_kind, v.revision)  # type: ignore[attr-defined]


@SETTINGS
@given(data=st.data(), policy=policies())
def test_indexed_engine_agrees_with_naive_scan(data: st.DataObject, policy: Policy) -> None:
    naive = NaiveEvaluator(policy)
    cached = compile_policy(policy)
    cold = compile_policy(policy, verdict_cache=0, identity_cache=0)
    tiny = compile_policy(policy, verdict_cache=3, identity_cache=2)  # evicts all the time
    drawn = data.draw(st.lists(attempts(policy), min_size=1, max_size=25))
    for attempt in drawn + drawn[::-1]:
        expected = naive.evaluate(attempt)
        assert cold.evaluate(attempt) == expected
        assert tiny.evaluate(attempt) == expected
        # twice: the second answer comes from the caches
        assert cached.evaluate(attempt) == expected
        assert cached.evaluate(attempt) == expected


@SETTINGS
@given(data=st.data(), policy=policies(max_rules=8))
def test_explain_agrees_with_evaluate(data: st.DataObject, policy: Policy) -> None:
    compiled = compile_policy(policy)
    for attempt in data.draw(st.lists(attempts(policy), min_size=1, max_size=10)):
        explanation = compiled.explain(attempt)
        verdict = compiled.evaluate(attempt)
        assert explanation.verdict == verdict
        if verdict.matched:
            last = explanation.steps[-1]
            assert (last.outcome, last.rule_id) == ("matched", verdict.rule_id)
            assert all(s.outcome != "matched" for s in explanation.steps[:-1])
        else:
            assert all(s.outcome != "matched" for s in explanation.steps)
            assert explanation.note


@SETTINGS
@given(data=st.data(), policy=policies())
def test_flow_evaluator_agrees_with_naive_scan(data: st.DataObject, policy: Policy) -> None:
    """The stored-flow evaluator (endpoints resolved once, remembered by object)
    gives exactly the verdict of the naive scan, staged "would" verdicts
    included, also when one endpoint object comes back with other partners and
    ports and when equal endpoints come as distinct objects."""
    staged = data.draw(st.sets(st.integers(0, 31)))
    policy = policy.model_copy(update={
        "container_rules": tuple(r.model_copy(update={"staged": i in staged})
                                 for i, r in enumerate(policy.container_rules)),
        "host_rules": tuple(r.model_copy(update={"staged": i + 16 in staged})
                            for i, r in enumerate(policy.host_rules)),
        "staged_default_effect": data.draw(st.sampled_from([None, *Effect]))})
    naive = NaiveEvaluator(policy)
    flows = compile_policy(policy, verdict_cache=0).flows()
    drawn = data.draw(st.lists(attempts(policy), min_size=1, max_size=25))
    ports = [a.port for a in drawn]
    crossed = [(a.src, b.dst, port) for a, b, port in zip(drawn, drawn[::-1], ports[1:] + ports[:1],
                                                          strict=True)]
    copies = [(dataclasses.replace(a.src), dataclasses.replace(a.dst), a.port) for a in drawn]
    for src, dst, port in [(a.src, a.dst, a.port) for a in drawn] + crossed + copies:
        assert flows.verdict(src, dst, port) == naive.evaluate(ConnectionAttempt(src, dst, port))


def _observed(attempt: ConnectionAttempt, i: int) -> ObservedFlow:
    kind = "host" if attempt.src.host is not None and attempt.src.container is None else "container"
    at = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(minutes=i)
    return ObservedFlow(kind, f"s{i % 3}", f"d{i % 4}", attempt.port, attempt.src, attempt.dst,
                        "prevent" if i % 5 == 0 else "observed", 0, 1, i + 1, at,
                        at + timedelta(minutes=1))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), current=policies(max_rules=8), draft=policies(max_rules=8))
def test_learn_and_simulate_agree_with_the_naive_scan(data: st.DataObject, current: Policy,
                                                      draft: Policy) -> None:
    """Learning and simulating with the engine's per-identity memo give exactly
    what the naive evaluator, one evaluation per flow, gives; an endpoint object
    comes back in several flows, as the store's reader shares them."""
    # (TCP port 0 is never seen: a flow has a port a rule can name)
    drawn = data.draw(st.lists(attempts(current).filter(lambda a: 0 < a.port < 65536), min_size=1,
                               max_size=20))
    flows = [_observed(a, i) for i, a in enumerate(drawn + drawn[:3])]
    assert simulate(current, draft, flows) == simulate(current, draft, flows,
                                                       engine=NaiveEvaluator)
    fast, naive = learn(current, flows), learn(current, flows, engine=NaiveEvaluator)
    assert (fast.policy, fast.rules, fast.objects, fast.covered, fast.skipped,
            fast.learnt_flows, fast.unallowed) == (
        naive.policy, naive.rules, naive.objects, naive.covered, naive.skipped,
        naive.learnt_flows, naive.unallowed)
