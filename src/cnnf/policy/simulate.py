"""What-if: evaluate a draft policy against observed flows and report the flows
whose verdict would change.

Both the current policy and the draft are compiled by the real engine
(:func:`~cnnf.policy.engine.compile_policy`) and each flow is evaluated with
the identities recorded with it, so a draft identical to the current policy
reports nothing, whatever was decided when the flows were recorded (the
recorded verdict is reported beside, not compared). A verdict changes when its
effect or whether a rule matched changes (``allow -> prevent``,
``unmatched (allow) -> allow``); a flow decided by another rule with the same
effect is not a change.

Staging (rules evaluated as if in force, without enforcement) plugs in through
:func:`in_force`: the policy a Defender would apply, which is where a staged
rule will be taken as enforced.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from cnnf.model import ConnectionAttempt, Effect, Policy, Verdict
from cnnf.policy.engine import compile_policy
from cnnf.policy.observed import ObservedFlow


class Evaluator(Protocol):
    def evaluate(self, attempt: ConnectionAttempt) -> Verdict: ...


def compiled(policy: Policy) -> Evaluator:
    """The real engine, without a verdict cache (each flow is evaluated once)."""
    return compile_policy(policy, verdict_cache=0)


def in_force(policy: Policy) -> Policy:
    """The policy as Defenders enforce it (today: the policy itself)."""
    return policy


@dataclass(frozen=True, slots=True)
class Outcome:
    """A verdict as the report shows it."""

    effect: Effect
    matched: bool
    rule_id: int | None = None
    rule_name: str | None = None

    @classmethod
    def of(cls, verdict: Verdict) -> Outcome:
        return cls(verdict.effect, verdict.matched, verdict.rule_id, verdict.rule_name)

    @property
    def label(self) -> str:
        return self.effect.value if self.matched else f"unmatched ({self.effect.value})"

    def same_verdict(self, other: Outcome) -> bool:
        return self.effect is other.effect and self.matched == other.matched


def transition(before: Outcome, after: Outcome) -> str:
    return f"{before.label} -> {after.label}"


@dataclass(slots=True)
class EdgeChange:
    """Flows of one edge (source, destination, port) whose verdict changes the
    same way."""

    kind: str
    src: str
    dst: str
    port: int
    before: Outcome
    after: Outcome
    recorded: str  # what the Defender decided then (the verdict of the latest flow)
    flows: int = 0
    count: int = 0
    first_seen: datetime | None = None
    last_seen: datetime | None = None


@dataclass(slots=True)
class RuleImpact:
    """What one deciding rule of the draft (``rule_id`` None: its default effect)
    changes."""

    kind: str
    rule_id: int | None
    rule_name: str | None
    effect: Effect
    flows: int = 0
    count: int = 0
    transitions: dict[str, int] = field(default_factory=dict)  # transition -> flows


@dataclass(slots=True)
class Impact:
    flows: int = 0  # flows evaluated
    count: int = 0  # their connections
    changed_flows: int = 0
    changed_count: int = 0
    transitions: dict[str, int] = field(default_factory=dict)  # transition -> flows
    edges: list[EdgeChange] = field(default_factory=list)
    rules: list[RuleImpact] = field(default_factory=list)


def _earlier(a: datetime | None, b: datetime) -> datetime:
    return b if a is None or b < a else a


def _later(a: datetime | None, b: datetime) -> datetime:
    return b if a is None or b > a else a


def simulate(current: Policy, draft: Policy, flows: Iterable[ObservedFlow], *,
             view: Callable[[Policy], Policy] = in_force,
             engine: Callable[[Policy], Evaluator] = compiled) -> Impact:
    """Evaluate ``flows`` under ``current`` and under ``draft`` (each as
    ``view`` makes it enforced, each compiled by ``engine``) and report the
    changed verdicts, grouped by edge and by the draft's deciding rule, largest
    first."""
    before_policy = engine(view(current))
    after_policy = engine(view(draft))
    before_eval, after_eval = before_policy.evaluate, after_policy.evaluate
    outcomes: dict[Verdict, Outcome] = {}
    impact = Impact()
    edges: dict[tuple[object, ...], EdgeChange] = {}
    rules: dict[tuple[object, ...], RuleImpact] = {}
    for flow in flows:
        impact.flows += flow.flows
        impact.count += flow.count
        attempt = ConnectionAttempt(flow.src_ep, flow.dst_ep, flow.port)
        b = before_eval(attempt)
        a = after_eval(attempt)
        if b.effect is a.effect and b.matched == a.matched:
            continue
        before = outcomes.get(b) or outcomes.setdefault(b, Outcome.of(b))
        after = outcomes.get(a) or outcomes.setdefault(a, Outcome.of(a))
        move = transition(before, after)
        impact.changed_flows += flow.flows
        impact.changed_count += flow.count
        impact.transitions[move] = impact.transitions.get(move, 0) + flow.flows
        key = (flow.kind, flow.src, flow.dst, flow.port, before, after)
        edge = edges.get(key)
        if edge is None:
            edge = edges[key] = EdgeChange(flow.kind, flow.src, flow.dst, flow.port, before,
                                           after, flow.verdict)
        edge.flows += flow.flows
        edge.count += flow.count
        edge.first_seen = _earlier(edge.first_seen, flow.first_seen)
        if edge.last_seen is None or flow.last_seen >= edge.last_seen:
            edge.recorded = flow.verdict
        edge.last_seen = _later(edge.last_seen, flow.last_seen)
        rkey = (flow.kind, after.rule_id, after.effect)
        rule = rules.get(rkey)
        if rule is None:
            rule = rules[rkey] = RuleImpact(flow.kind, after.rule_id, after.rule_name,
                                            after.effect)
        rule.flows += flow.flows
        rule.count += flow.count
        rule.transitions[move] = rule.transitions.get(move, 0) + flow.flows
    impact.edges = sorted(edges.values(), key=lambda e: (-e.count, e.src, e.dst, e.port))
    impact.rules = sorted(rules.values(),
                          key=lambda r: (-r.count, r.kind, r.rule_id is None, r.rule_id or 0))
    return impact
