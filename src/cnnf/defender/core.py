"""The Defender's decision logic, without I/O.

``Decider.decide()`` turns a queued SYN (addresses and port) into an action for
the datapath plus the records it produces; ``Recorder`` aggregates flows and
folds repeated audits. Time is passed in by the caller.
"""

from __future__ import annotations

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
        self, decision: Decision, policy: CompiledPolicy, now: float, count: int = 1
    ) -> AuditEvent | None:
        """Record ``count`` attempts with one decision (more than one: repeats the
        kernel's fast path answered); return the audit if it opened a new one."""
        att, verdict = decision.attempt, decision.verdict
        src = self.info(att.src)
        dst = self.info(att.dst)
        self._flow(FlowRecord(
            src=src, dst=dst, port=att.port, effect=verdict.effect, matched=verdict.matched,
            rule_id=verdict.rule_id, rule_name=verdict.rule_name, rule_kind=verdict.rule_kind,
            revision=verdict.revision, first_seen=now, last_seen=now, reporter=self.reporter,
            count=count,
        ))
        if not verdict.effect.audits:
            return None
        subnet, domain = matched_subnet_and_domain(policy, verdict, att.dst)
        event = AuditEvent(
            time=now, type=AuditType.of(_rule_kind(att, verdict)), effect=verdict.effect,
            blocked=verdict.blocked, rule_id=verdict.rule_id, rule_name=verdict.rule_name or "",
            src=src, dst=dst, port=att.port, dst_subnet=subnet, dst_domain=domain,
            message=audit_message(verdict, src, dst, att.port), revision=verdict.revision,
            reporter=self.reporter, count=count,
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

    def observe(self, src: Endpoint, dst: Endpoint, port: int, now: float) -> None:
        """Record a connection seen (not evaluated) with enforcement disabled."""
        self._flow(FlowRecord(
            src=self.info(src), dst=self.info(dst), port=port,
            effect=Effect.ALLOW, matched=False, mode="observed", first_seen=now, last_seen=now,
            reporter=self.reporter,
        ))

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
