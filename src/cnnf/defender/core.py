"""The Defender's decision logic, without I/O.

``Decider.decide()`` turns a queued SYN (addresses and port) into an action for
the datapath plus the records it produces; ``Recorder`` aggregates flows and
folds repeated audits. Time is passed in by the caller.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

from cnnf.defender.inventory import Inventory
from cnnf.model import BlockMode, ConnectionAttempt, Effect, Endpoint, ObjectKind, Verdict
from cnnf.model.records import AuditEvent, AuditType, EndpointInfo, FlowRecord, audit_message
from cnnf.model.rule import RuleKind
from cnnf.policy.engine import CompiledPolicy


class Action(StrEnum):
    ACCEPT = "accept"
    REJECT = "reject"  # refuse with a TCP reset
    DROP = "drop"  # silent drop


DomainLookup = Callable[[str], tuple[str, ...]]


def _no_domains(_address: str) -> tuple[str, ...]:
    return ()


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    verdict: Verdict
    attempt: ConnectionAttempt


class Decider:
    """Evaluates SYNs against an immutable (policy, inventory) snapshot."""

    def __init__(
        self,
        policy: CompiledPolicy,
        inventory: Inventory,
        domains: DomainLookup = _no_domains,
    ) -> None:
        self.policy = policy
        self.inventory = inventory
        self.domains = domains

    def attempt(
        self, src: str, dst: str, port: int, domains: tuple[str, ...] | None = None
    ) -> ConnectionAttempt:
        return ConnectionAttempt(
            src=self.inventory.endpoint(src),
            dst=self.inventory.endpoint(dst, self.domains(dst) if domains is None else domains),
            port=port,
        )

    def decide(
        self, src: str, dst: str, port: int, domains: tuple[str, ...] | None = None
    ) -> Decision:
        """``domains``: the destination's DNS names when the caller knows them
        (the verdict loop does); otherwise the ``domains`` lookup is asked."""
        attempt = self.attempt(src, dst, port, domains)
        verdict = self.policy.evaluate(attempt)
        if not verdict.blocked:
            action = Action.ACCEPT
        elif self.policy.policy.block_mode is BlockMode.DROP:
            action = Action.DROP
        else:
            action = Action.REJECT
        return Decision(action, verdict, attempt)


def unenforced(verdict: Verdict) -> Verdict:
    """The verdict on a connection that nothing enforced (its kind's enforcement
    is off, so it was only observed): it was allowed. What the policy decides,
    with everything staged in force, becomes the "would" verdict where it
    differs; an allow verdict of the policy in force stays what happened (a
    connection a rule allows is no hole in the policy)."""
    full = verdict.would or verdict
    if verdict.effect is Effect.ALLOW:
        actual = dataclasses.replace(verdict, would=None)
    else:
        actual = Verdict(effect=Effect.ALLOW, revision=verdict.revision, matched=False,
                         rule_kind=verdict.rule_kind)
    return dataclasses.replace(actual, would=full if actual.differs(full) else None)


def _rule_kind(attempt: ConnectionAttempt, verdict: Verdict) -> RuleKind:
    if verdict.rule_kind is not None:
        return verdict.rule_kind
    return RuleKind.HOST if attempt.src.container is None else RuleKind.CONTAINER


def matched_subnet_and_domain(
    policy: CompiledPolicy, verdict: Verdict, dst: Endpoint
) -> tuple[str, str]:
    """The CIDR or domain of the deciding rule's destination object, for audits."""
    if verdict.rule_id is None:
        return "", ""
    rules = (policy.policy.container_rules if verdict.rule_kind is RuleKind.CONTAINER
             else policy.policy.host_rules)
    rule = next((r for r in rules if r.id == verdict.rule_id), None)
    obj = policy.policy.object(rule.dst) if rule else None
    if obj is None:
        return "", ""
    if obj.kind is ObjectKind.SUBNET and dst.address:
        addr = ipaddress.ip_address(dst.address)
        for net in obj.networks():
            if addr.version == net.version and addr in net:
                return str(net), ""
    if obj.kind is ObjectKind.DNS:
        return "", dst.domains[0] if dst.domains else ""
    return "", ""


@dataclass
class Recorder:
    """Aggregates flow records and folds repeated audits.

    An audit stays open for ``fold_window`` seconds after it first happened;
    repeats inside the window add to its count. ``drain(now)`` hands back the
    flows so far and the audits whose window has closed (all of them with
    ``final=True``, at shutdown), so no repeat is ever lost or counted twice.
    """

    reporter: str = ""
    fold_window: float = 5.0
    flows: dict[tuple[object, ...], FlowRecord] = field(default_factory=dict)
    open_audits: dict[tuple[object, ...], AuditEvent] = field(default_factory=dict)
    closed_audits: list[AuditEvent] = field(default_factory=list)
    # EndpointInfo is immutable: one per endpoint, shared by its records (a busy
    # or scanning source makes thousands of records a second).
    _infos: dict[Endpoint, EndpointInfo] = field(default_factory=dict)

    def info(self, ep: Endpoint) -> EndpointInfo:
        found = self._infos.get(ep)
        if found is None:
            if len(self._infos) >= 4096:
                self._infos.clear()
            found = self._infos[ep] = EndpointInfo.from_endpoint(ep)
        return found

    def record(
        self, decision: Decision, policy: CompiledPolicy, now: float, count: int = 1,
        *, observed: bool = False,
    ) -> AuditEvent | None:
        """Record ``count`` attempts with one decision (more than one: repeats the
        kernel's fast path answered); return the audit if it opened a new one.

        ``observed``: the connection was seen with its kind's enforcement off
        (pass the verdict through :func:`unenforced` first). A verdict's
        ``would`` part is recorded on the flow and, when it would alert or
        block, as a "would" audit beside any audit of what happened."""
        att, verdict = decision.attempt, decision.verdict
        src = self.info(att.src)
        dst = self.info(att.dst)
        would = verdict.would
        self._flow(FlowRecord(
            src=src, dst=dst, port=att.port, effect=verdict.effect, matched=verdict.matched,
            mode="observed" if observed else "enforced",
            rule_id=verdict.rule_id, rule_name=verdict.rule_name, rule_kind=verdict.rule_kind,
            would_effect=None if would is None else would.effect,
            would_rule_id=None if would is None else would.rule_id,
            would_rule_name=None if would is None else would.rule_name,
            revision=verdict.revision, first_seen=now, last_seen=now, reporter=self.reporter,
            count=count,
        ))
        opened = None
        if verdict.effect.audits:
            opened = self._audit(att, verdict, policy, src=src, dst=dst, now=now, count=count,
                                 would="")
        if would is not None and would.effect.audits:
            reason = "enforcement is off" if observed else "staged"
            opened = self._audit(att, would, policy, src=src, dst=dst, now=now, count=count,
                                 would=reason) or opened
        return opened

    def _audit(
        self, att: ConnectionAttempt, verdict: Verdict, policy: CompiledPolicy, *,
        src: EndpointInfo, dst: EndpointInfo, now: float, count: int, would: str,
    ) -> AuditEvent | None:
        subnet, domain = matched_subnet_and_domain(policy, verdict, att.dst)
        event = AuditEvent(
            time=now, type=AuditType.of(_rule_kind(att, verdict)), effect=verdict.effect,
            blocked=verdict.blocked and not would, rule_id=verdict.rule_id,
            rule_name=verdict.rule_name or "",
            src=src, dst=dst, port=att.port, dst_subnet=subnet, dst_domain=domain,
            message=audit_message(verdict, src, dst, att.port, would),
            revision=verdict.revision, reporter=self.reporter, count=count, would=bool(would),
        )
        key = event.key()
        prev = self.open_audits.get(key)
        if prev is not None and now - prev.time <= self.fold_window:
            self.open_audits[key] = prev.model_copy(update={"count": prev.count + count})
            return None
        if prev is not None:
            self.closed_audits.append(prev)
        self.open_audits[key] = event
        return event

    def add_audit(self, event: AuditEvent) -> None:
        """An audit that is not about one connection (e.g. overload): out with the
        next drain."""
        self.closed_audits.append(event)

    def observe(self, decider: Decider, src: str, dst: str, port: int, *, now: float,
                domains: tuple[str, ...] | None = None, count: int = 1,
                first: float | None = None) -> None:
        """Record ``count`` connections seen with their kind's enforcement off
        (the first at ``first``, the last at ``now``): evaluated against the
        policy (nothing enforced), what the policy would do recorded as their
        "would" verdict, and audited as such."""
        d = decider.decide(src, dst, port, domains)
        decision = Decision(Action.ACCEPT, unenforced(d.verdict), d.attempt)
        if count > 1 and first is not None and first < now:
            self.record(decision, decider.policy, first, observed=True)
            count -= 1
        self.record(decision, decider.policy, now, count, observed=True)

    def _flow(self, rec: FlowRecord) -> None:
        key = rec.key()
        prev = self.flows.get(key)
        if prev is None:
            self.flows[key] = rec
        else:
            self.flows[key] = prev.model_copy(update={
                "count": prev.count + rec.count,
                "first_seen": min(prev.first_seen, rec.first_seen),
                "last_seen": max(prev.last_seen, rec.last_seen),
                "revision": rec.revision,
            })

    def drain(
        self, now: float, *, final: bool = False
    ) -> tuple[list[FlowRecord], list[AuditEvent]]:
        flows = list(self.flows.values())
        self.flows = {}
        audits, self.closed_audits = self.closed_audits, []
        for key, event in list(self.open_audits.items()):
            if final or now - event.time > self.fold_window:
                audits.append(self.open_audits.pop(key))
        audits.sort(key=lambda e: e.time)
        return flows, audits
