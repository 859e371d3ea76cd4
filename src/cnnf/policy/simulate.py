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

Staging: a staged rule or a staged default effect is not in force, so it
never changes a verdict in force (the engine leaves it out, as Defenders do).
What the draft's staged part would change once promoted is reported beside,
in :attr:`Impact.staged`: the flows whose "would" verdict under the draft
(everything staged in force) differs from the draft's verdict in force.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from cnnf.model import ConnectionAttempt, Effect, Endpoint, Policy, Verdict
from cnnf.policy.engine import compile_policy
from cnnf.policy.observed import ObservedFlow


class Evaluator(Protocol):
    def evaluate(self, attempt: ConnectionAttempt) -> Verdict: ...


def compiled(policy: Policy) -> Evaluator:
    """The real engine, without a verdict cache (each flow is evaluated once)."""
    return compile_policy(policy, verdict_cache=0)


FlowVerdict = Callable[[Endpoint, Endpoint, int], Verdict]


def flow_verdicts(evaluator: Evaluator) -> FlowVerdict:
    """``(src, dst, port) -> verdict`` for many stored flows: the engine's
    :class:`~cnnf.policy.engine.FlowEvaluator` (each distinct recorded identity
    resolved once), else one evaluation per call (the naive evaluator)."""
    flows = getattr(evaluator, "flows", None)
    if flows is not None:
        verdict: FlowVerdict = flows().verdict
        return verdict
    evaluate = evaluator.evaluate
    return lambda src, dst, port: evaluate(ConnectionAttempt(src, dst, port))


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
    # What the draft's staged rules and staged default effect would change
    # beyond what it enforces: before is the draft's verdict in force, after its
    # "would" verdict (everything staged promoted). None in ``staged`` itself.
    staged: Impact | None = None


class _Changes:
    """Changed flows grouped by edge and by the deciding rule after."""

    __slots__ = ("edges", "impact", "rules")

    def __init__(self) -> None:
        self.impact = Impact()
        self.edges: dict[tuple[object, ...], EdgeChange] = {}
        self.rules: dict[tuple[object, ...], RuleImpact] = {}

    def add(self, flow: ObservedFlow, before: Outcome, after: Outcome) -> None:
        impact = self.impact
        move = transition(before, after)
        impact.changed_flows += flow.flows
        impact.changed_count += flow.count
        impact.transitions[move] = impact.transitions.get(move, 0) + flow.flows
        key = (flow.kind, flow.src, flow.dst, flow.port, before, after)
        edge = self.edges.get(key)
        if edge is None:
            edge = self.edges[key] = EdgeChange(flow.kind, flow.src, flow.dst, flow.port, before,
                                                after, flow.verdict)
        edge.flows += flow.flows
        edge.count += flow.count
        edge.first_seen = _earlier(edge.first_seen, flow.first_seen)
        # The latest flow's verdict; between flows last seen at the same time,
        # the greatest verdict name (whatever order the flows come in).
        if (edge.last_seen is None or flow.last_seen > edge.last_seen
                or (flow.last_seen == edge.last_seen and flow.verdict > edge.recorded)):
            edge.recorded = flow.verdict
        edge.last_seen = _later(edge.last_seen, flow.last_seen)
        rkey = (flow.kind, after.rule_id, after.effect)
        rule = self.rules.get(rkey)
        if rule is None:
            rule = self.rules[rkey] = RuleImpact(flow.kind, after.rule_id, after.rule_name,
                                                 after.effect)
        rule.flows += flow.flows
        rule.count += flow.count
        rule.transitions[move] = rule.transitions.get(move, 0) + flow.flows

    def close(self, flows: int, count: int) -> Impact:
        impact = self.impact
        impact.flows, impact.count = flows, count
        # Total orders: the same report whatever order the flows come in.
        impact.edges = sorted(self.edges.values(), key=lambda e: (
            -e.count, e.src, e.dst, e.port, e.kind, _order(e.before), _order(e.after)))
        impact.rules = sorted(self.rules.values(), key=lambda r: (
            -r.count, r.kind, r.rule_id is None, r.rule_id or 0, r.effect.value))
        return impact


def _order(o: Outcome) -> tuple[str, bool, bool, int, str]:
    return (o.effect.value, o.matched, o.rule_id is None, o.rule_id or 0, o.rule_name or "")


def _earlier(a: datetime | None, b: datetime) -> datetime:
    return b if a is None or b < a else a


def _later(a: datetime | None, b: datetime) -> datetime:
    return b if a is None or b > a else a


def simulate(current: Policy, draft: Policy, flows: Iterable[ObservedFlow], *,
             engine: Callable[[Policy], Evaluator] = compiled) -> Impact:
    """Evaluate ``flows`` under ``current`` and under ``draft`` (each compiled
    by ``engine``) and report the flows whose verdict in force changes, grouped
    by edge and by the draft's deciding rule, largest first; and, in
    ``staged``, the flows whose verdict the draft's staged rules and staged
    default effect would change if promoted (from the draft's verdict in force
    to its "would" verdict). Staged rules of either policy never change a
    verdict in force.

    Each distinct recorded identity is resolved once per policy
    (:func:`flow_verdicts`); a flow then costs a few integer operations."""
    before_at, after_at = flow_verdicts(engine(current)), flow_verdicts(engine(draft))
    outcomes: dict[Verdict, Outcome] = {}

    def outcome(v: Verdict) -> Outcome:
        o = outcomes.get(v)
        if o is None:
            o = outcomes[v] = Outcome.of(v)
        return o

    changes, staged = _Changes(), _Changes()
    total_flows = total_count = 0
    for flow in flows:
        total_flows += flow.flows
        total_count += flow.count
        src, dst, port = flow.src_ep, flow.dst_ep, flow.port
        b = before_at(src, dst, port)
        a = after_at(src, dst, port)
        if b.effect is not a.effect or b.matched != a.matched:
            changes.add(flow, outcome(b), outcome(a))
        w = a.would
        if w is not None and (w.effect is not a.effect or w.matched != a.matched):
            staged.add(flow, outcome(a), outcome(w))
    impact = changes.close(total_flows, total_count)
    impact.staged = staged.close(total_flows, total_count)
    return impact
