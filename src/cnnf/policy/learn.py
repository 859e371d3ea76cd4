"""Learn: propose a policy from observed flows.

The current policy is compiled and every flow is evaluated against it with
the identities recorded with the flow:

- a flow an existing rule decides is *covered*: the rule stays as it is (a
  ``prevent`` rule keeps blocking what it blocked);
- a flow no rule decides is *learnt*: its two ends become network objects and
  the pair a rule, appended after the existing rules.

Objects: an existing object is reused when it selects exactly the observed
workloads of the group (no other observed workload), or for an address, when a
declared subnet or DNS object holds it. A container object reused must name
its workloads (by image, label or container name): one that takes a whole
namespace is not taken for one workload. Otherwise a new object is made: by
namespace and the stable label (``app=`` unless told otherwise) when the
workload carries it, else by namespace and image name (any tag); a host by its
name; a destination address by its DNS name when it has one (a DNS object;
host rules take no DNS object, so there a subnet), else by its own /32 or
/128 subnet. Each object says which basis it was made on.

Rules: one per source object, destination object and list, with every port
seen merged into ranges; sibling workloads (one workload name in several
namespaces) that reach the same destinations on the same ports share one rule
and one object. A source that reached more than :data:`MAX_ADDRESSES` bare
addresses (no DNS name, no declared subnet) gets rules for the first of them
only; the rest are counted as skipped, with the reason. Flows to port 0 (no
rule can name it) are skipped too, saying so. An existing enabled
``allow`` rule in force (not staged) between the same two objects is widened
instead of adding a rule (the proposal says which rule it
replaces). Every proposed rule carries its evidence: flows, connections, first
and last seen, and the edges behind it.

Cost: each distinct pair of recorded identities is evaluated and grouped
once (:func:`~cnnf.policy.simulate.flow_verdicts`); a flow then costs a few
integer operations and its evidence.

Pure: no store, no clock.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from fnmatch import fnmatchcase

from cnnf.model import (
    ContainerIdentity,
    ContainerObject,
    ContainerSelector,
    DnsObject,
    Effect,
    Endpoint,
    HostObject,
    HostSelector,
    NetworkObject,
    ObjectKind,
    Policy,
    PortRange,
    Rule,
    RuleKind,
    SubnetObject,
)
from cnnf.model.identity import split_image
from cnnf.policy.check import ALLOWED_KINDS
from cnnf.policy.match import ObjectMatch
from cnnf.policy.observed import MAX_IDENTITY, UNRECORDED, ObservedFlow
from cnnf.policy.simulate import Evaluator, compiled, flow_verdicts

MAX_EDGES = 20  # edges listed in one rule's evidence (the counts cover them all)

#: Why refused flows are not learnt (a reason in the proposal's skipped counts).
REFUSED = "refused when recorded: a refused connection is not learnt as allowed"
TOO_LONG_IDENTITY = (f"an identity was longer than {MAX_IDENTITY:,} characters when recorded "
                     "(kept as a digest): not learnt")
#: Addresses (no DNS name, no declared subnet) learnt from one source, one rule each.
MAX_ADDRESSES = 100


def too_many_addresses(source: str, reached: int, first: str, last: str) -> str:
    """Why a source's flows to bare addresses past :data:`MAX_ADDRESSES` are not
    learnt (one reason per source): ``source`` names it (its object's basis:
    ``image shop/worker in shop-data``), ``first`` and ``last``: the range of
    addresses kept."""
    return (f"capped: the source {source} reached {reached} addresses that have no DNS "
            f"name and no subnet object (more than {MAX_ADDRESSES}); rules were proposed "
            f"for the first {MAX_ADDRESSES} of them in address order (IPv4 first) only, "
            f"{first} to {last}, and the flows to the other {reached - MAX_ADDRESSES} were "
            "not learnt. Check whether the source scans; if the traffic is wanted, add a "
            "subnet object holding those addresses and learn again")


#: A destination port 0: no rule can name it (ports are 1-65535), it is never
#: a service's port (a scan or a malformed packet).
PORT_ZERO = ("destination port 0 (no rule can name it: a scan or a malformed packet): "
             "not learnt")


@dataclass(frozen=True, slots=True)
class Scope:
    """Which flows to learn from: those with an end in the namespace, on the
    host, or of an image matching one of the globs (each given filter must
    hold for the source or the destination)."""

    namespace: str | None = None
    host: str | None = None
    images: tuple[str, ...] = ()

    def admits(self, flow: ObservedFlow) -> bool:
        ends = (flow.src_ep, flow.dst_ep)
        if self.namespace is not None and not any(
                e.container is not None and e.container.namespace == self.namespace
                for e in ends):
            return False
        if self.host is not None and not any(_host_of(e) == self.host for e in ends):
            return False
        return not self.images or any(
            e.container is not None and _image_in(e.container, self.images) for e in ends)


def _host_of(ep: Endpoint) -> str | None:
    if ep.container is not None:
        return ep.container.host
    if ep.host is not None:
        return ep.host.name
    return None


def _image_in(c: ContainerIdentity, globs: Sequence[str]) -> bool:
    name = split_image(c.image)[0]
    return any(fnmatchcase(c.image, g) or fnmatchcase(name, g) for g in globs)


@dataclass(frozen=True, slots=True)
class LearnOptions:
    label_key: str = "app"  # the stable label that names a workload, when it carries one
    default_effect: Effect | None = None  # the proposal's default effect (None: keep)


@dataclass(slots=True)
class Evidence:
    flows: int = 0
    count: int = 0
    first_seen: datetime | None = None
    last_seen: datetime | None = None
    edges: list[str] = field(default_factory=list)  # "src -> dst:port", the busiest first
    _edges: dict[tuple[str, str, int], int] = field(default_factory=dict)

    def add(self, flow: ObservedFlow) -> None:
        self.flows += flow.flows
        self.count += flow.count
        if self.first_seen is None or flow.first_seen < self.first_seen:
            self.first_seen = flow.first_seen
        if self.last_seen is None or flow.last_seen > self.last_seen:
            self.last_seen = flow.last_seen
        edge = (flow.src, flow.dst, flow.port)
        self._edges[edge] = self._edges.get(edge, 0) + flow.count

    def close(self) -> None:
        ranked = sorted(self._edges.items(), key=lambda kv: (-kv[1], kv[0]))
        self.edges = [f"{s} -> {d}:{p}" for (s, d, p), _ in ranked[:MAX_EDGES]]
        self._edges = {}


@dataclass(frozen=True, slots=True)
class ProposedObject:
    name: str
    kind: ObjectKind
    new: bool
    basis: str  # "existing", "label app=api in shop-web", "image shop/db in shop-data", ...


@dataclass(slots=True)
class ProposedRule:
    kind: RuleKind
    rule: Rule
    evidence: Evidence
    src_basis: str
    dst_basis: str
    replaces: int | None = None  # the existing rule (same kind) this one widens


@dataclass(slots=True)
class CoveredRule:
    """An existing rule that decided observed flows: kept as it is."""

    kind: RuleKind
    rule_id: int
    rule_name: str
    effect: Effect
    evidence: Evidence


@dataclass(slots=True)
class Proposal:
    policy: Policy
    rules: list[ProposedRule]
    objects: list[ProposedObject]
    covered: list[CoveredRule]
    learnt_flows: int = 0
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> flows not learnt
    # Flows learnt but not allowed by the proposal (a self-check: 0 unless a
    # rule was refused, e.g. by a name clash).
    unallowed: int = 0


# --- groups: what one object will stand for ----------------------------------------------


@dataclass(frozen=True, slots=True)
class _Group:
    kind: ObjectKind
    basis: str  # "label", "image", "host", "dns", "subnet"
    values: tuple[str, ...]  # label value / image name (several after a sibling merge)
    namespaces: tuple[str, ...] = ()
    key: str = ""  # the label key (basis "label")


def _container_group(c: ContainerIdentity, label_key: str) -> _Group:
    ns = (c.namespace,) if c.namespace else ()
    value = c.label(label_key) if label_key else None
    if value:
        return _Group(ObjectKind.CONTAINER, "label", (value,), ns, label_key)
    return _Group(ObjectKind.CONTAINER, "image", (split_image(c.image)[0],), ns)


def _address_group(ep: Endpoint, dns_ok: bool) -> _Group | None:
    if dns_ok and ep.domains:
        return _Group(ObjectKind.DNS, "dns", (ep.domains[0].lower().rstrip("."),))
    if ep.address:
        try:
            addr = ipaddress.ip_address(ep.address)
        except ValueError:
            return None
        return _Group(ObjectKind.SUBNET, "subnet", (f"{addr}/{addr.max_prefixlen}",))
    return None


def _group(ep: Endpoint, end: str, kind: RuleKind, label_key: str) -> _Group | str:
    """The group of one end, or why the flow cannot be learnt."""
    allowed = ALLOWED_KINDS[kind][end]
    if ep.container is not None and ObjectKind.CONTAINER in allowed:
        return _container_group(ep.container, label_key)
    if ep.host is not None and ObjectKind.HOST in allowed:
        return _Group(ObjectKind.HOST, "host", (ep.host.name,))
    if end == "src":
        return f"the source is not a {'container' if kind is RuleKind.CONTAINER else 'host'}"
    group = _address_group(ep, ObjectKind.DNS in allowed)
    if group is None:
        return "the destination has no address or name a rule can select"
    return group


def _basis_text(g: _Group) -> str:
    where = f" in {', '.join(g.namespaces)}" if g.namespaces else ""
    values = ", ".join(g.values)
    if g.basis == "label":
        return f"label {g.key}={values}{where}"
    if g.basis == "image":
        return f"image {values}{where}"
    return f"{g.basis} {values}"


def _new_object(g: _Group, name: str) -> NetworkObject:
    description = f"learnt: {_basis_text(g)}"
    if g.kind is ObjectKind.CONTAINER:
        if g.basis == "label":
            selector = ContainerSelector(labels=tuple(f"{g.key}={v}" for v in g.values),
                                         namespaces=g.namespaces)
        else:
            selector = ContainerSelector(images=g.values, namespaces=g.namespaces)
        return ContainerObject(name=name, description=description, selector=selector)
    if g.kind is ObjectKind.HOST:
        return HostObject(name=name, description=description,
                          selector=HostSelector(hosts=g.values))
    if g.kind is ObjectKind.DNS:
        return DnsObject(name=name, description=description, domains=g.values)
    return SubnetObject(name=name, description=description, cidrs=g.values)


def _name_of(g: _Group) -> str:
    values = "+".join(v.replace("/", ".") for v in g.values)
    ns = "+".join(g.namespaces)
    if g.basis == "label":
        text = f"{g.key}={values}"
    elif g.basis == "image":
        text = f"image={values}"
    elif g.basis == "subnet":
        text = "addr=" + "+".join(v.rsplit("/", 1)[0] for v in g.values)
    else:
        text = f"{g.basis}={values}"
    return (f"{ns}:{text}" if ns else text)[:190]


# --- the learning ------------------------------------------------------------------------


@dataclass(slots=True)
class _Pair:
    kind: RuleKind
    src: _Group
    dst: _Group
    ports: set[int] = field(default_factory=set)
    flows: list[ObservedFlow] = field(default_factory=list)


def _port_ranges(ports: Iterable[int]) -> tuple[PortRange, ...]:
    out: list[PortRange] = []
    start = prev = -2
    for p in sorted(ports):
        if p == prev + 1:
            prev = p
            continue
        if start >= 0:
            out.append(PortRange(start=start, end=prev))
        start = prev = p
    if start >= 0:
        out.append(PortRange(start=start, end=prev))
    return tuple(out)


def _widened(rule: Rule, ports: set[int]) -> Rule:
    """``rule`` with ``ports`` added to its own."""
    have = {p for r in rule.ports for p in range(r.start, r.end + 1)}
    return rule.model_copy(update={"ports": _port_ranges(have | ports)})


def _merge_siblings(pairs: dict[tuple[object, ...], _Pair]) -> dict[tuple[object, ...], _Pair]:
    """One workload (one label value or image) in several namespaces that reaches
    the same destinations on the same ports: one source group for all of them.
    The merged selector (those values AND those namespaces) selects exactly the
    observed workloads, so nothing unseen is allowed by the merge."""
    profile: dict[_Group, set[tuple[object, ...]]] = {}
    for pair in pairs.values():
        if pair.src.kind is ObjectKind.CONTAINER and pair.src.namespaces:
            profile.setdefault(pair.src, set()).add((pair.kind, pair.dst,
                                                     tuple(sorted(pair.ports))))
    families: dict[tuple[object, ...], list[_Group]] = {}
    for g, behaviour in profile.items():
        families.setdefault((g.basis, g.key, g.values, frozenset(behaviour)), []).append(g)
    rename: dict[_Group, _Group] = {}
    for members in families.values():
        if len(members) < 2:
            continue
        first = members[0]
        namespaces = tuple(sorted({ns for m in members for ns in m.namespaces}))
        merged = _Group(ObjectKind.CONTAINER, first.basis, first.values, namespaces, first.key)
        for m in members:
            rename[m] = merged
    if not rename:
        return pairs
    out: dict[tuple[object, ...], _Pair] = {}
    for pair in pairs.values():
        src = rename.get(pair.src, pair.src)
        key = (pair.kind, src, pair.dst)
        have = out.get(key)
        if have is None:
            have = out[key] = _Pair(pair.kind, src, pair.dst)
        have.ports |= pair.ports
        have.flows += pair.flows
    return out


def _names_workloads(obj: NetworkObject) -> bool:
    """A container object that names its workloads (images, labels or container
    names, not ``*``), not one that takes a whole namespace, host or cluster:
    only such an object stands for one observed workload."""
    if not isinstance(obj, ContainerObject):
        return True
    sel = obj.selector
    named = (*sel.images, *sel.labels, *sel.containers)
    return bool(named) and "*" not in sel.images and "*" not in sel.containers


class _Objects:
    """Resolves groups to objects: an existing one when it fits, else a new one."""

    def __init__(self, policy: Policy, observed: dict[ObjectKind, dict[_Group, list[Endpoint]]]):
        self.policy = policy
        self.observed = observed
        self.names = {o.name for o in policy.objects}
        self.new: list[NetworkObject] = []
        self.resolved: dict[_Group, ProposedObject] = {}
        # the objects that may stand for a group, by kind, in the policy's order
        self.matchers: dict[ObjectKind, list[tuple[NetworkObject, ObjectMatch]]] = {}
        for o in policy.objects:
            if _names_workloads(o):
                self.matchers.setdefault(o.kind, []).append((o, ObjectMatch(o)))

    def existing(self, g: _Group, members: Sequence[Endpoint]) -> str | None:
        if not members:
            return None
        others: list[Endpoint] | None = None  # every other observed one, when needed
        for obj, match in self.matchers.get(g.kind, ()):
            if not all(match(ep) for ep in members):
                continue
            # Addresses: a declared subnet or DNS object holding them is the
            # operator's name for them. Workloads and hosts: only an object that
            # selects no other observed one.
            if g.kind in (ObjectKind.SUBNET, ObjectKind.DNS):
                return obj.name
            if others is None:
                others = [ep for og, eps in self.observed.get(g.kind, {}).items() if og != g
                          and not (set(og.namespaces) <= set(g.namespaces)
                                   and og.values == g.values) for ep in eps]
            if not any(match(ep) for ep in others):
                return obj.name
        return None

    def resolve(self, g: _Group, members: Sequence[Endpoint]) -> ProposedObject:
        found = self.resolved.get(g)
        if found is not None:
            return found
        name = self.existing(g, members)
        if name is not None:
            found = ProposedObject(name, g.kind, False, "existing")
        else:
            base = _name_of(g)
            name, n = base, 1
            while name in self.names:
                n += 1
                name = f"{base}-{n}"
            self.names.add(name)
            self.new.append(_new_object(g, name))
            found = ProposedObject(name, g.kind, True, _basis_text(g))
        self.resolved[g] = found
        return found


def _cap_addresses(pairs: dict[tuple[object, ...], _Pair], objects: _Objects,
                   observed: dict[ObjectKind, dict[_Group, list[Endpoint]]],
                   skipped: dict[str, int]) -> None:
    """A source that reached more than :data:`MAX_ADDRESSES` addresses that have
    no DNS name and no declared subnet object holding them (a crawler, a scan,
    a client of many peers): the first :data:`MAX_ADDRESSES` by address are
    learnt one rule each, the flows to the others are counted as skipped
    (:func:`too_many_addresses`: one reason per source, naming it), not turned
    into thousands of /32 rules."""
    by_source: dict[tuple[object, ...], list[tuple[object, ...]]] = {}
    for key, pair in pairs.items():
        if pair.dst.basis == "subnet":
            by_source.setdefault((pair.kind, pair.src), []).append(key)
    subnets = observed.get(ObjectKind.SUBNET, {})
    for keys in by_source.values():
        if len(keys) <= MAX_ADDRESSES:
            continue
        new = [k for k in keys if objects.existing(pairs[k].dst, subnets.get(pairs[k].dst, ()))
               is None]
        # IPv4 before IPv6 (two versions do not compare), then by address.
        new.sort(key=lambda k: ipaddress.get_mixed_type_key(
            ipaddress.ip_network(pairs[k].dst.values[0])))
        if len(new) <= MAX_ADDRESSES:
            continue
        kept = [pairs[k].dst.values[0].split("/")[0] for k in new[:MAX_ADDRESSES]]
        reason = too_many_addresses(_basis_text(pairs[new[0]].src), len(new), kept[0],
                                    kept[-1])
        for k in new[MAX_ADDRESSES:]:
            pair = pairs.pop(k)
            skipped[reason] = skipped.get(reason, 0) + sum(f.flows for f in pair.flows)


def learn(current: Policy, flows: Iterable[ObservedFlow],
          options: LearnOptions = LearnOptions(), *,
          engine: Callable[[Policy], Evaluator] = compiled) -> Proposal:
    """Propose a policy that keeps ``current`` and allows every observed flow it
    does not decide (see the module's description). ``engine`` compiles a
    policy for evaluation (the real engine; the benchmark passes a naive one)."""
    evaluate = flow_verdicts(engine(current))
    covered: dict[tuple[RuleKind, int], CoveredRule] = {}
    pairs: dict[tuple[object, ...], _Pair] = {}
    skipped: dict[str, int] = {}
    observed: dict[ObjectKind, dict[_Group, list[Endpoint]]] = {}
    # by the endpoint object's id (the value holds the endpoint)
    groups_of: dict[tuple[int, str, RuleKind], tuple[Endpoint, _Group | str]] = {}
    members_seen: set[tuple[_Group, Endpoint]] = set()

    def group(ep: Endpoint, end: str, kind: RuleKind) -> _Group | str:
        key = (id(ep), end, kind)
        found = groups_of.get(key)
        if found is None:
            g = _group(ep, end, kind, options.label_key)
            found = groups_of[key] = (ep, g)
            if isinstance(g, _Group) and (g, ep) not in members_seen:
                members_seen.add((g, ep))
                observed.setdefault(g.kind, {}).setdefault(g, []).append(ep)
        return found[1]

    # Per distinct (source, destination, list) of recorded identities: the
    # pair the flow is learnt into, or why not (the endpoints' ids: the stored
    # flows share one object per identity; the values hold the endpoints).
    pair_of: dict[tuple[int, int, str], tuple[Endpoint, Endpoint, _Pair | str]] = {}

    def pair_for(flow: ObservedFlow) -> _Pair | str:
        pk = (id(flow.src_ep), id(flow.dst_ep), flow.kind)
        found = pair_of.get(pk)
        if found is None:
            kind = RuleKind.HOST if flow.kind == "host" else RuleKind.CONTAINER
            target: _Pair | str
            if UNRECORDED in (flow.src_ep, flow.dst_ep):
                found = pair_of[pk] = (flow.src_ep, flow.dst_ep, TOO_LONG_IDENTITY)
                return TOO_LONG_IDENTITY
            src = group(flow.src_ep, "src", kind)
            dst = group(flow.dst_ep, "dst", kind)
            if isinstance(src, str) or isinstance(dst, str):
                target = src if isinstance(src, str) else str(dst)
            else:
                target = pairs.get((kind, src, dst)) or pairs.setdefault(
                    (kind, src, dst), _Pair(kind, src, dst))
            found = pair_of[pk] = (flow.src_ep, flow.dst_ep, target)
        return found[2]

    for flow in flows:
        verdict = evaluate(flow.src_ep, flow.dst_ep, flow.port)
        if verdict.matched and verdict.rule_id is not None and verdict.rule_kind is not None:
            ck = (verdict.rule_kind, verdict.rule_id)
            c = covered.get(ck)
            if c is None:
                c = covered[ck] = CoveredRule(verdict.rule_kind, verdict.rule_id,
                                              verdict.rule_name or "", verdict.effect, Evidence())
            c.evidence.add(flow)
            continue
        if flow.verdict == "prevent":
            # Refused when it was recorded (by the default effect, or by a rule since
            # removed): a refused connection, perhaps an attacker's lateral move or
            # scan, is never learnt as one to allow.
            skipped[REFUSED] = skipped.get(REFUSED, 0) + flow.flows
            continue
        if flow.port < 1:
            skipped[PORT_ZERO] = skipped.get(PORT_ZERO, 0) + flow.flows
            continue
        pair = pair_for(flow)
        if isinstance(pair, str):
            skipped[pair] = skipped.get(pair, 0) + flow.flows
            continue
        pair.ports.add(flow.port)
        pair.flows.append(flow)

    pairs = {k: p for k, p in pairs.items() if p.flows}
    objects = _Objects(current, observed)
    _cap_addresses(pairs, objects, observed, skipped)
    learnt = [f for pair in pairs.values() for f in pair.flows]
    pairs = _merge_siblings(pairs)
    members: dict[_Group, list[Endpoint]] = {}
    for kind_groups in observed.values():
        for g, eps in kind_groups.items():
            members[g] = eps
    for pair in pairs.values():
        for g in (pair.src, pair.dst):
            if g not in members:  # a merged sibling group: its members' endpoints
                members[g] = [ep for og, eps in observed.get(g.kind, {}).items()
                              if og.values == g.values and og.basis == g.basis
                              and set(og.namespaces) <= set(g.namespaces) for ep in eps]

    rules = {RuleKind.CONTAINER: list(current.container_rules),
             RuleKind.HOST: list(current.host_rules)}
    rule_names = {k: {r.name for r in v} for k, v in rules.items()}
    next_id = {k: max((r.id for r in v), default=0) + 1 for k, v in rules.items()}
    proposed: list[ProposedRule] = []
    by_rule: dict[tuple[RuleKind, str, str], tuple[ProposedRule, int]] = {}
    # the first enabled allow rule in force between two objects (one a
    # proposed rule widens)
    widenable: dict[tuple[RuleKind, str, str], int] = {}
    for k, kind_rules in rules.items():
        for i, r in enumerate(kind_rules):
            if not r.disabled and not r.staged and r.effect is Effect.ALLOW:
                widenable.setdefault((k, r.src, r.dst), i)
    resolved = [(pair, objects.resolve(pair.src, members[pair.src]),
                 objects.resolve(pair.dst, members[pair.dst])) for pair in pairs.values()]
    resolved.sort(key=lambda t: (t[0].kind.value, t[1].name, t[2].name, min(t[0].ports)))
    for pair, src_obj, dst_obj in resolved:
        rkey = (pair.kind, src_obj.name, dst_obj.name)
        kind_rules = rules[pair.kind]
        found = by_rule.get(rkey)
        if found is not None:  # two groups resolved to the same objects: one rule
            have, at = found
            have.rule = kind_rules[at] = _widened(have.rule, pair.ports)
            for flow in pair.flows:
                have.evidence.add(flow)
            continue
        evidence = Evidence()
        for flow in pair.flows:
            evidence.add(flow)
        existing = widenable.get(rkey)
        if existing is not None:
            old = kind_rules[existing]
            rule = kind_rules[existing] = _widened(old, pair.ports)
            item = ProposedRule(pair.kind, rule, evidence, src_obj.basis, dst_obj.basis, old.id)
        else:
            base = f"{src_obj.name} -> {dst_obj.name}"[:190]
            name, n = base, 1
            while name in rule_names[pair.kind]:
                n += 1
                name = f"{base} ({n})"
            rule_names[pair.kind].add(name)
            rule = Rule(id=next_id[pair.kind], name=name, src=src_obj.name, dst=dst_obj.name,
                        ports=_port_ranges(pair.ports), effect=Effect.ALLOW,
                        notes="learnt from observed flows")
            next_id[pair.kind] += 1
            existing = len(kind_rules)
            kind_rules.append(rule)
            item = ProposedRule(pair.kind, rule, evidence, src_obj.basis, dst_obj.basis)
        by_rule[rkey] = (item, existing)
        proposed.append(item)

    for item in proposed:
        item.evidence.close()
    for c in covered.values():
        c.evidence.close()
    update: dict[str, object] = {
        "objects": (*current.objects, *sorted(objects.new, key=lambda o: o.name)),
        "container_rules": tuple(rules[RuleKind.CONTAINER]),
        "host_rules": tuple(rules[RuleKind.HOST]),
    }
    if options.default_effect is not None:
        update["default_effect"] = options.default_effect
    policy = current.model_copy(update=update)
    proposal = Proposal(
        policy=policy, rules=proposed,
        objects=sorted(objects.resolved.values(), key=lambda o: (not o.new, o.kind.value, o.name)),
        covered=sorted(covered.values(), key=lambda c: (c.kind.value, c.rule_id)),
        learnt_flows=sum(f.flows for f in learnt), skipped=skipped,
        unallowed=_unallowed(engine(policy), learnt),
    )
    return proposal


def _unallowed(evaluator: Evaluator, flows: Iterable[ObservedFlow]) -> int:
    """Learnt flows the proposal would still not allow by a rule (in force)."""
    evaluate = flow_verdicts(evaluator)
    total = 0
    for f in flows:
        v = evaluate(f.src_ep, f.dst_ep, f.port)
        if not v.matched or v.effect is Effect.PREVENT:
            total += f.flows
    return total

