"""A reference evaluator: a plain linear scan over the rules.

It shares the object matchers of :mod:`cnnf.policy.match` (whose semantics
have their own tests) but none of the engine's indexes, bit sets or caches, so
tests can check that the indexed engine decides exactly like this scan, and
the benchmark can show what the index buys.
"""

from __future__ import annotations

import dataclasses

from cnnf.errors import PolicyValidationError
from cnnf.model import ConnectionAttempt, Policy, RuleKind, Verdict
from cnnf.policy.check import check_policy
from cnnf.policy.match import ObjectMatch

__all__ = ["NaiveEvaluator", "naive_evaluate"]


class NaiveEvaluator:
    """Evaluates attempts by testing every rule in order until one matches."""

    def __init__(self, policy: Policy) -> None:
        errors = check_policy(policy)
        if errors:
            raise PolicyValidationError(errors, "policy")
        self.policy = policy
        objects = {obj.name: obj for obj in reversed(policy.objects)}  # first one wins
        self._matchers = {name: ObjectMatch(obj) for name, obj in objects.items()}

    def evaluate(self, attempt: ConnectionAttempt) -> Verdict:
        verdict = self._evaluate(self.policy, attempt, enforced=True)
        if self.policy.staging:
            would = self._evaluate(self.policy.in_force(), attempt, enforced=False)
            if verdict.differs(would):
                return dataclasses.replace(verdict, would=would)
        return verdict

    def _evaluate(self, policy: Policy, attempt: ConnectionAttempt, *, enforced: bool) -> Verdict:
        src, dst, port = attempt.src, attempt.dst, attempt.port
        if src.container is not None:
            kind, rules = RuleKind.CONTAINER, policy.container_rules
        elif src.host is not None:
            kind, rules = RuleKind.HOST, policy.host_rules
        else:
            rules = ()
        matchers = self._matchers
        for rule in rules:
            if rule.disabled or (enforced and rule.staged):
                continue
            if not matchers[rule.src](src):
                continue
            if not rule.matches_port(port):
                continue
            if not matchers[rule.dst](dst):
                continue
            return Verdict(
                effect=rule.effect,
                revision=policy.revision,
                matched=True,
                rule_id=rule.id,
                rule_name=rule.name,
                rule_kind=kind,
            )
        return Verdict(effect=policy.default_effect, revision=policy.revision, matched=False)


def naive_evaluate(policy: Policy, attempt: ConnectionAttempt) -> Verdict:
    """One attempt against ``policy`` by linear scan (builds the matchers each call)."""
    return NaiveEvaluator(policy).evaluate(attempt)
