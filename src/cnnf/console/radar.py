"""Radar's graph: nodes and edges built from the policy, the flows, the
inventory and the data overlays.

A pure function over plain inputs (no store, no clock, no HTTP), so the whole
picture is tested with tables. The API layer (:mod:`cnnf.console.api.radar`)
loads the inputs and returns :func:`build_graph`'s result as JSON.

Container view: one node per image with running containers (the container
count on the node), put into a compound group by namespace or by host (the
group most of its containers are in); host view: one node per host. Declared
subnet and DNS objects are external nodes; any other outside address is the
one "internet" node.

What runs is counted as workloads, each once whatever its addresses: a
Kubernetes pod is one workload (its containers share its address), so an
image or host node counts its pods (``podCount``, listed in ``pods`` with
each pod's images) apart from the containers that run in no pod
(``containers``, named in ``containerNames``). A pod is on the node of its
main image.

Edges join two nodes. An edge carries the ports seen on it, each with its
verdict class, and the rules drawn on it:

- ``allowed`` (allowed by a rule), ``alert``, ``blocked``, and ``observed``
  (seen, no rule matched: a hole in the policy);
- ``observed`` edges (any flow) are drawn solid, rule-only edges dotted.

An observed port's ``verdict`` is its *current* verdict: what the current
policy decides for that port between the two nodes (the first enabled rule
whose source object selects the source node, whose destination selects the
destination node and whose ports hold the port; else the policy's default
effect). What the stored flows recorded, under whatever policy was in force
then, is the port's ``history`` (one entry per recorded verdict and rule, with
counts and times). So a rule added for a hole turns the port's colour at once,
and an edge's colour, its label and its "hole" flag follow the current policy,
while the panel still shows what happened before.

Staging adds a second opinion. Where the policy with every staged rule and the
staged default effect in force would decide a port otherwise than its current
verdict (another verdict class or another rule), the port says so: ``would``
(same classes) and ``wouldRuleId`` (0/None: the staged default effect). The
label says it ("5432 would prevent"), the line keeps the current verdict's
colour, and a port a staged rule decides is no hole. A port also counts its
connections seen with enforcement off (``unenforced``; ``enforced``: none
was), and each history entry keeps the "would" verdict its flows recorded.

With the view's enforcement off, a port whose current verdict refuses or
audits (``blocked``, ``alert``) but whose connections went through unenforced
says what happened apart from what the policy would do: ``seen`` is true and
the label reads "5432 seen, would prevent" (the line keeps the verdict's
colour: lateral movement the policy forbids stands out). Ports whose
connections were all enforced keep their verdict ("443 blocked").
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol

from cnnf.model import (
    ContainerIdentity,
    ContainerObject,
    DnsObject,
    HostIdentity,
    HostObject,
    Policy,
    Rule,
    SubnetObject,
)
from cnnf.model.identity import make_labels, split_image
from cnnf.model.records import HostInfo, WorkloadInfo
from cnnf.model.rule import Effect
from cnnf.policy.match import ContainerMatch, DnsMatch, HostMatch, SubnetMatch

View = Literal["container", "host"]
Group = Literal["namespace", "host", "none"]
VerdictClass = Literal["allowed", "alert", "blocked", "observed"]

VERDICTS: tuple[VerdictClass, ...] = ("allowed", "alert", "blocked", "observed")
# Which verdict colours an edge label when ports differ: the most alarming one.
_WORST_ORDER: dict[str, int] = {"allowed": 0, "observed": 1, "alert": 2, "blocked": 3}
_EFFECT_CLASS: dict[Effect, VerdictClass] = {
    Effect.ALLOW: "allowed", Effect.ALERT: "alert", Effect.PREVENT: "blocked",
}
SEVERITIES = ("critical", "high", "medium", "low")
INTERNET = "internet"
# Ports listed per verdict on an edge label before "+N" takes over.
LABEL_PORTS = 3
# A rule whose source and destination select many nodes is drawn on at most
# this many node pairs (the edge count says it was cut).
RULE_EDGE_LIMIT = 500
# Pods and container names listed on a node (the counts say how many in all).
NAMES_LISTED = 50
# Addresses and names listed on the internet node (``seenCount`` says how many in all).
SEEN_LISTED = 100
# Matching objects listed on an image or host node.
OBJECTS_LISTED = 5


class FlowLike(Protocol):
    """An aggregated flow as the store keeps it (``StoredFlow`` and :class:`Flow` fit)."""

    @property
    def kind(self) -> str: ...
    @property
    def src(self) -> str: ...  # "image:shop/api", "host:node-1", "addr:10.0.0.5", "dns:a.example"
    @property
    def dst(self) -> str: ...
    @property
    def port(self) -> int: ...
    @property
    def verdict(self) -> str: ...  # allow | alert | prevent | observed
    @property
    def rule_id(self) -> int: ...  # 0: no rule matched
    @property
    def rule_name(self) -> str: ...
    @property
    def count(self) -> int: ...
    @property
    def first_seen(self) -> datetime: ...
    @property
    def last_seen(self) -> datetime: ...
    @property
    def would(self) -> str: ...  # "" | allow | alert | prevent | observed
    @property
    def would_rule_id(self) -> int: ...
    @property
    def mode(self) -> str: ...  # enforced | observed (enforcement off)


@dataclass(frozen=True, slots=True)
class Flow:
    """A flow row as plain data (cheap to make from a database row)."""

    kind: str
    src: str
    dst: str
    port: int
    verdict: str
    rule_id: int
    rule_name: str
    count: int
    first_seen: datetime
    last_seen: datetime
    would: str = ""
    would_rule_id: int = 0
    mode: str = "enforced"


@dataclass(frozen=True)
class Overlay:
    """Vulnerability counts by severity and compliance counts of one image or host."""

    vulnerabilities: Mapping[str, int] = field(default_factory=dict)
    compliance: Mapping[str, int] = field(default_factory=dict)  # "passed", "failed"

    @property
    def worst(self) -> str:
        for severity in SEVERITIES:
            if self.vulnerabilities.get(severity, 0) > 0:
                return severity
        return "none"


@dataclass(frozen=True)
class RadarQuery:
    view: View = "container"
    group: Group = "namespace"
    namespace: str = ""
    host: str = ""
    verdict: VerdictClass | None = None
    q: str = ""


@dataclass
class _Node:
    id: str
    kind: str  # image | host | subnet | dns | internet
    label: str
    containers: list[WorkloadInfo] = field(default_factory=list)
    host: HostInfo | None = None
    detail: str = ""  # cidrs / domains of external nodes
    seen: set[str] = field(default_factory=set)  # internet: the addresses and names seen

    def namespaces(self) -> list[str]:
        return sorted({c.namespace for c in self.containers})

    def hosts(self) -> list[str]:
        return sorted({c.host for c in self.containers})


@dataclass(slots=True)
class _Port:
    port: str
    verdict: VerdictClass
    observed: bool
    count: int = 0
    first_seen: datetime | None = None
    last_seen: datetime | None = None
    rule_id: int = 0
    rule_name: str = ""
    history: list[_Port] | None = None  # observed ports: what the stored flows recorded
    # What the policy with everything staged in force decides where that differs
    # from ``verdict`` (history: what the flows recorded as their would verdict).
    would: VerdictClass | None = None
    would_rule_id: int = 0
    unenforced: int = 0  # connections of ``count`` seen with enforcement off
    # Enforcement is off and connections the policy would refuse or audit went
    # through unenforced: what happened is "seen", ``verdict`` what would happen.
    seen: bool = False

    @property
    def hole(self) -> bool:
        """Seen, and no rule decides it, in force or staged."""
        return self.observed and not self.rule_id and not self.would_rule_id

    @property
    def label(self) -> str:
        """How the edge label names this port's verdict class."""
        if self.seen:
            staged = f" (staged: {_WOULD_WORD[self.would]})" if self.would is not None else ""
            return f"seen, would {_WOULD_WORD[self.verdict]}{staged}"
        if self.would is None:
            return self.verdict
        return f"would {_WOULD_WORD[self.would]}"


# A port's label part when the policy with everything staged would decide otherwise.
_WOULD_WORD: dict[str, str] = {"blocked": "prevent", "alert": "alert", "allowed": "allow",
                               "observed": "allow"}


@dataclass(slots=True)
class _Edge:
    source: str
    target: str
    # recorded: port, verdict, rule, would verdict, would rule
    ports: dict[tuple[str, str, int, str, int], _Port] = field(default_factory=dict)
    rules: dict[int, Rule] = field(default_factory=dict)


# The verdict class of a connection no rule matches, by the policy's default effect.
_DEFAULT_CLASS: dict[Effect, VerdictClass] = {
    Effect.ALLOW: "observed", Effect.ALERT: "alert", Effect.PREVENT: "blocked",
}

# verdict_class for the flows' verdicts that do not depend on the rule.
_FLOW_CLASS: dict[str, VerdictClass] = {"prevent": "blocked", "alert": "alert",
                                        "observed": "observed"}


def verdict_class(verdict: str, rule_id: int) -> VerdictClass:
    """A flow's colour class: no rule and not refused or audited is a hole."""
    if verdict == "prevent":
        return "blocked"
    if verdict == "alert":
        return "alert"
    if verdict == "allow" and rule_id:
        return "allowed"
    return "observed"


def _label_order(label: str) -> int:
    # "would ..." parts after the current verdicts
    return _WORST_ORDER.get(label, -1)


def compact_ports(ports: Iterable[tuple[str, str]]) -> str:
    """``80,443 allowed · 22 blocked · 5432 would prevent``; long lists end in ``+N``."""
    by_verdict: dict[str, list[str]] = defaultdict(list)
    for port, verdict in ports:
        if port not in by_verdict[verdict]:
            by_verdict[verdict].append(port)
    parts = []
    for verdict in sorted(by_verdict, key=lambda v: (-_label_order(v), v)):
        ps = sorted(by_verdict[verdict], key=_port_sort_key)
        shown = ",".join(ps[:LABEL_PORTS])
        if len(ps) > LABEL_PORTS:
            shown += f" +{len(ps) - LABEL_PORTS}"
        parts.append(f"{shown} {verdict}")
    return " · ".join(parts)


def _port_sort_key(port: str) -> tuple[int, str]:
    head = port.split("-", 1)[0]
    return (int(head), port) if head.isdigit() else (70000, port)


def _identity(c: WorkloadInfo) -> ContainerIdentity:
    return c.identity()


class _Graph:
    def __init__(self, policy: Policy, hosts: Sequence[HostInfo],
                 containers: Sequence[WorkloadInfo], query: RadarQuery) -> None:
        self.policy = policy
        self.query = query
        self.nodes: dict[str, _Node] = {}
        self.edges: dict[tuple[str, str], _Edge] = {}
        self.address_owner: dict[str, str] = {}
        self.image_by_name: dict[str, str] = {}
        self._identities: dict[str, list[ContainerIdentity]] | None = None
        self._endpoints: dict[str, str] = {}  # flow end key -> node id
        self.truncated_rules: list[int] = []
        self._object_nodes: dict[str, list[str]] = {}
        # Enabled rules in order, by source node: (rule, destination nodes), for
        # the current verdict of an observed port.
        self.rules_from: dict[str, list[tuple[Rule, set[str]]]] = defaultdict(list)
        self.default_class: VerdictClass = _DEFAULT_CLASS[policy.default_effect]
        # Enforcement of this view's rules: off, connections are only observed.
        self.enforced = (policy.container_enabled if query.view == "container"
                         else policy.host_enabled)
        # Staging: staged rules are in rules_from too, skipped by current() and
        # considered by staged(); the staged default effect replaces the default.
        self.staging = policy.staging
        self.staged_default_class: VerdictClass = _DEFAULT_CLASS[
            policy.staged_default_effect or policy.default_effect]
        self.rules = {r.id: r for r in (policy.container_rules if query.view == "container"
                                        else policy.host_rules)}
        self.subnets = [(o, SubnetMatch(o)) for o in policy.objects
                        if isinstance(o, SubnetObject)]
        self.dns = [(o, DnsMatch(o)) for o in policy.objects if isinstance(o, DnsObject)]
        for h in hosts:
            node = self._node(f"host:{h.name}", "host", h.name)
            node.host = h
            for address in h.addresses:
                self.address_owner.setdefault(address, node.id)
        if query.view == "container":
            for c in containers:
                node = self._node(f"image:{c.image}", "image", c.image)
                node.containers.append(c)
                self.address_owner[c.address] = node.id
                self.image_by_name.setdefault(split_image(c.image)[0], node.id)
            # Hosts are drawn in the container view only when something talks to them.
            self.optional = {n for n, v in self.nodes.items() if v.kind == "host"}
        else:
            self.optional = set()
        for subnet, _ in self.subnets:
            self._node(f"subnet:{subnet.name}", "subnet", subnet.name).detail = (
                ", ".join(subnet.cidrs))
        for dns, _ in self.dns:
            self._node(f"dns:{dns.name}", "dns", dns.name).detail = ", ".join(dns.domains)

    def _node(self, node_id: str, kind: str, label: str) -> _Node:
        node = self.nodes.get(node_id)
        if node is None:
            node = self.nodes[node_id] = _Node(node_id, kind, label)
        return node

    def _edge(self, source: str, target: str) -> _Edge:
        edge = self.edges.get((source, target))
        if edge is None:
            edge = self.edges[(source, target)] = _Edge(source, target)
        return edge

    # --- flows ---------------------------------------------------------------

    def endpoint_node(self, key: str) -> str:
        """The node a flow end's identity key belongs to (created if needed)."""
        prefix, _, value = key.partition(":")
        if prefix == "image" and value:
            image_id = f"image:{value}"
            if image_id not in self.nodes:
                # A flow may name the image without its tag: fold into the running image.
                by_name = self.image_by_name.get(value)
                if by_name is not None:
                    return by_name
            return self._node(image_id, "image", value).id
        if prefix == "host" and value:
            return self._node(f"host:{value}", "host", value).id
        if prefix in ("dns", "domain") and value:
            for dns, match in self.dns:
                if match((value,)):
                    return f"dns:{dns.name}"
            return self._internet(value)
        address = value if prefix == "addr" else key
        owner = self.address_owner.get(address)
        if owner is not None:
            return owner
        for subnet, inside in self.subnets:
            if inside(address):
                return f"subnet:{subnet.name}"
        return self._internet(address)

    def _internet(self, seen: str) -> str:
        node = self._node(INTERNET, "internet", "internet")
        node.seen.add(seen)
        return node.id

    def add_flow(self, flow: FlowLike) -> None:
        # Tens of thousands of flows over a few thousand ends: each end resolved once.
        endpoints = self._endpoints
        source = endpoints.get(flow.src)
        if source is None:
            source = endpoints[flow.src] = self.endpoint_node(flow.src)
        target = endpoints.get(flow.dst)
        if target is None:
            target = endpoints[flow.dst] = self.endpoint_node(flow.dst)
        edge = self._edge(source, target)
        verdict = _FLOW_CLASS.get(flow.verdict) or verdict_class(flow.verdict, flow.rule_id)
        would = (None if not flow.would
                 else _FLOW_CLASS.get(flow.would) or verdict_class(flow.would, flow.would_rule_id))
        key = (str(flow.port), verdict, flow.rule_id, would or "", flow.would_rule_id)
        unenforced = flow.count if flow.mode == "observed" else 0
        have = edge.ports.get(key)
        if have is None:
            edge.ports[key] = _Port(str(flow.port), verdict, True, flow.count, flow.first_seen,
                                    flow.last_seen, flow.rule_id, flow.rule_name, None, would,
                                    flow.would_rule_id, unenforced)
        else:
            have.count += flow.count
            have.unenforced += unenforced
            if have.first_seen is None or flow.first_seen < have.first_seen:
                have.first_seen = flow.first_seen
            if have.last_seen is None or flow.last_seen > have.last_seen:
                have.last_seen = flow.last_seen
        # The rules a flow recorded (in force or staged) are history: the edge's
        # rules are those that apply now (add_rules, and the current and staged
        # verdicts of its ports).

    # --- rules ---------------------------------------------------------------

    def identities(self) -> dict[str, list[ContainerIdentity]]:
        """Each image node's container identities, made once for all rules."""
        if self._identities is None:
            self._identities = {
                node.id: ([_identity(c) for c in node.containers]
                          or [ContainerIdentity(image=node.label)])
                for node in self.nodes.values() if node.kind == "image"
            }
        return self._identities

    def object_nodes(self, name: str) -> list[str]:
        """The nodes an object selects (any of a node's containers matching)."""
        nodes = self._object_nodes.get(name)
        if nodes is None:
            nodes = self._object_nodes[name] = self._select(name)
        return nodes

    def _select(self, name: str) -> list[str]:
        obj = self.policy.object(name)
        if isinstance(obj, ContainerObject):
            match = ContainerMatch(obj.selector)
            return [node_id for node_id, identities in self.identities().items()
                    if any(match(i) for i in identities)]
        if isinstance(obj, HostObject):
            hmatch = HostMatch(obj.selector)
            return [n.id for n in self.nodes.values() if n.kind == "host"
                    and hmatch(HostIdentity(name=n.label,
                                            labels=make_labels(n.host.labels if n.host else {})))]
        if isinstance(obj, SubnetObject):
            return [f"subnet:{obj.name}"]
        if isinstance(obj, DnsObject):
            return [f"dns:{obj.name}"]
        return []

    def node_objects(self) -> dict[str, list[tuple[str, int]]]:
        """Per image or host node: the container or host objects that select all
        of it (every container of an image node), with how many nodes each
        selects, narrowest first: Radar proposes them for a rule before making
        a new object."""
        out: dict[str, list[tuple[str, int]]] = defaultdict(list)
        for obj in self.policy.objects:
            if isinstance(obj, ContainerObject) and self.query.view == "container":
                selected = self.object_nodes(obj.name)
                match = ContainerMatch(obj.selector)
                identities = self.identities()
                for node_id in selected:
                    if all(match(i) for i in identities[node_id]):
                        out[node_id].append((obj.name, len(selected)))
            elif isinstance(obj, HostObject):
                selected = self.object_nodes(obj.name)
                for node_id in selected:
                    out[node_id].append((obj.name, len(selected)))
        for found in out.values():
            found.sort(key=lambda o: (o[1], o[0]))
        return out

    def add_rules(self) -> None:
        rules = (self.policy.container_rules if self.query.view == "container"
                 else self.policy.host_rules)
        for rule in rules:
            if rule.disabled:
                continue
            sources = self.object_nodes(rule.src)
            targets = self.object_nodes(rule.dst)
            target_set = set(targets)
            for s in sources:
                self.rules_from[s].append((rule, target_set))
            drawn = 0
            for s in sources:
                for t in targets:
                    if drawn >= RULE_EDGE_LIMIT:
                        break
                    if s == t and len(sources) > 1:
                        continue
                    edge = self._edge(s, t)
                    edge.rules[rule.id] = rule
                    drawn += 1
            if len(sources) * len(targets) > RULE_EDGE_LIMIT:
                self.truncated_rules.append(rule.id)

    # --- output --------------------------------------------------------------

    def current(self, source: str, target: str, port: int) -> tuple[VerdictClass, Rule | None]:
        """What the current policy decides for ``port`` from ``source`` to ``target``
        (the rules in force: a staged rule is not)."""
        for rule, targets in self.rules_from.get(source, ()):
            if rule.staged:
                continue
            if target in targets and any(port in pr for pr in rule.ports):
                return _EFFECT_CLASS[rule.effect], rule
        return self.default_class, None

    def staged(self, source: str, target: str, port: int) -> tuple[VerdictClass, Rule | None]:
        """What the policy with every staged rule and the staged default effect in
        force decides for ``port`` from ``source`` to ``target``."""
        for rule, targets in self.rules_from.get(source, ()):
            if target in targets and any(port in pr for pr in rule.ports):
                return _EFFECT_CLASS[rule.effect], rule
        return self.staged_default_class, None

    def edge_ports(self, edge: _Edge) -> list[_Port]:
        """One port per observed port number, with its current verdict and its
        history, then the ports of the edge's rules that no flow shows."""
        recorded = list(edge.ports.values())
        by_port: dict[str, _Port] = {}
        for h in recorded:
            have = by_port.get(h.port)
            if have is None:
                number = int(h.port)
                verdict, rule = self.current(edge.source, edge.target, number)
                port = by_port[h.port] = _Port(h.port, verdict, True, h.count, h.first_seen,
                                               h.last_seen, rule.id if rule else 0,
                                               rule.name if rule else "", [h],
                                               unenforced=h.unenforced)
                if rule is not None:
                    edge.rules[rule.id] = rule
                if self.staging:
                    would, by = self.staged(edge.source, edge.target, number)
                    if (would, by.id if by else 0) != (verdict, rule.id if rule else 0):
                        port.would = would
                        if by is not None:
                            port.would_rule_id = by.id
                            edge.rules[by.id] = by
            else:
                have.count += h.count
                have.unenforced += h.unenforced
                if h.first_seen is not None and (have.first_seen is None
                                                 or h.first_seen < have.first_seen):
                    have.first_seen = h.first_seen
                if h.last_seen is not None and (have.last_seen is None
                                                or h.last_seen > have.last_seen):
                    have.last_seen = h.last_seen
                assert have.history is not None
                have.history.append(h)
        ports = list(by_port.values())
        if not self.enforced:
            for port in ports:
                # What happened (seen) apart from what the policy would do.
                port.seen = bool(port.unenforced) and port.verdict in ("blocked", "alert")
        if not edge.rules:
            return ports
        seen_rules = {p.rule_id for p in ports} | {p.would_rule_id for p in ports}
        seen_ports = {p.port for p in ports}
        for rule in edge.rules.values():
            if rule.id in seen_rules:
                continue  # observed: the flows carry its ports
            # a staged rule: what it would do (not in force)
            staged = _EFFECT_CLASS[rule.effect] if rule.staged else None
            for pr in rule.ports:
                if staged is not None and str(pr) in seen_ports:
                    continue  # the port seen says what the staged policy decides there
                ports.append(_Port(str(pr), _EFFECT_CLASS[rule.effect], False,
                                   rule_id=rule.id, rule_name=rule.name, would=staged,
                                   would_rule_id=rule.id if staged else 0))
        return ports


def _group_of(node: _Node, group: Group) -> str:
    if node.kind != "image" or group == "none":
        return ""
    names = [c.namespace for c in node.containers] if group == "namespace" else [
        c.host for c in node.containers]
    if not names:
        return ""
    best = names[0]
    if names.count(best) != len(names):  # containers in more than one: the most, then by name
        best = sorted(Counter(names).items(), key=lambda kv: (-kv[1], kv[0]))[0][0]
    return best or ("(no namespace)" if group == "namespace" else "(no host)")


def _matches_text(node: _Node, q: str) -> bool:
    if q in node.label.lower() or q in node.detail.lower():
        return True
    return any(q in c.name.lower() or q in c.namespace.lower() or q in c.pod.lower()
               for c in node.containers)


def _workloads(containers: Iterable[WorkloadInfo]) -> tuple[
        dict[tuple[str, str, str], WorkloadInfo], dict[tuple[str, str], WorkloadInfo]]:
    """The pods, by (namespace, pod, host), and the containers that run in no
    pod, by (host, container), each once: the inventory holds one record per
    address, and a pod or container may have two (IPv4 and IPv6)."""
    pods: dict[tuple[str, str, str], WorkloadInfo] = {}
    plain: dict[tuple[str, str], WorkloadInfo] = {}
    for c in containers:
        if c.pod:
            pods.setdefault((c.namespace, c.pod, c.host), c)
        else:
            plain.setdefault((c.host, c.id or c.name or c.address), c)
    return pods, plain


def _host_counts(containers: Iterable[WorkloadInfo]) -> dict[str, tuple[int, int]]:
    """Per host: its containers that run in no pod, and its pods."""
    pods, plain = _workloads(containers)
    plain_on = Counter(host for host, _ in plain)
    pods_on = Counter(host for _, _, host in pods)
    return {h: (plain_on[h], pods_on[h]) for h in plain_on.keys() | pods_on.keys()}


def _drill_down(containers: Iterable[WorkloadInfo]) -> list[dict[str, Any]]:
    """The first workloads of a node, each once with all its addresses: a pod
    (its containers share its addresses) or a container that runs in no pod."""
    out: dict[tuple[str, ...], dict[str, Any]] = {}
    for c in containers:
        key = (c.namespace, c.pod, c.host) if c.pod else (c.host, c.id or c.name or c.address)
        have = out.get(key)
        if have is None:
            if len(out) >= NAMES_LISTED:
                continue
            have = out[key] = {"name": c.name, "id": c.id[:12], "pod": c.pod,
                               "namespace": c.namespace, "host": c.host, "addresses": []}
        if c.address not in have["addresses"]:
            have["addresses"].append(c.address)
    return sorted(out.values(), key=lambda w: (w["namespace"], w["pod"], w["name"], w["host"]))


def _epoch_of(t: datetime) -> int:
    # UNIX seconds, as the Defender's records: a third of an ISO string's size,
    # which counts with 20,000 edges.
    return int(t.timestamp())


def build_graph(
    policy: Policy,
    *,
    hosts: Sequence[HostInfo] = (),
    containers: Sequence[WorkloadInfo] = (),
    flows: Iterable[FlowLike] = (),
    overlays: Mapping[tuple[str, str], Overlay] | None = None,
    query: RadarQuery = RadarQuery(),
) -> dict[str, Any]:
    """The Radar graph as JSON-ready data: ``{"nodes": [...], "edges": [...], ...}``;
    times are UNIX seconds.

    ``overlays`` are keyed by ``("image", image)`` (the name with or without
    the tag) or ``("host", name)``; ``flows`` of the other view's kind are
    ignored; the time window is the caller's (pass only the flows in it)."""
    overlays = overlays or {}
    g = _Graph(policy, hosts, containers, query)
    for flow in flows:
        if flow.kind == query.view:
            g.add_flow(flow)
    g.add_rules()

    # Flows stored together share their times: each converted once.
    epochs: dict[datetime, int] = {}

    def epoch(t: datetime | None) -> int | None:
        if t is None:
            return None
        e = epochs.get(t)
        if e is None:
            e = epochs[t] = _epoch_of(t)
        return e

    edges_out: list[dict[str, Any]] = []
    rules_json: dict[int, dict[str, Any]] = {}

    def rule_json(r: Rule) -> dict[str, Any]:
        out = rules_json.get(r.id)
        if out is None:
            out = rules_json[r.id] = {
                "id": r.id, "kind": query.view, "name": r.name, "src": r.src, "dst": r.dst,
                "effect": r.effect.value, "ports": [str(p) for p in r.ports],
                "staged": r.staged}
        return out

    for (source, target), edge in g.edges.items():
        ports = g.edge_ports(edge)
        if not ports:
            continue
        # This loop runs for every edge of a large graph; most edges carry one port.
        first: datetime | None = None
        last: datetime | None = None
        count = 0
        if len(ports) == 1:
            p = ports[0]
            if query.verdict is not None and p.verdict != query.verdict:
                continue
            worst: str = p.verdict
            observed = p.observed
            hole = p.hole
            if observed:
                count, first, last = p.count, p.first_seen, p.last_seen
            label = f"{p.port} {p.label}"
        else:
            if query.verdict is not None and not any(p.verdict == query.verdict for p in ports):
                continue
            # One pass over the ports.
            observed = False
            hole = False
            worst = ""
            for p in ports:
                if p.hole:
                    hole = True
                if not worst or _WORST_ORDER[p.verdict] > _WORST_ORDER[worst]:
                    worst = p.verdict
                if p.observed:
                    observed = True
                    count += p.count
                    if p.first_seen is not None and (first is None or p.first_seen < first):
                        first = p.first_seen
                    if p.last_seen is not None and (last is None or p.last_seen > last):
                        last = p.last_seen
            ports.sort(key=lambda p: (_port_sort_key(p.port), p.verdict))
            label = compact_ports((p.port, p.label) for p in ports)
        rules = edge.rules
        if not rules:
            effect = ""
            rule_ids: list[int] = []
        elif len(rules) == 1:
            rule = next(iter(rules.values()))
            effect = rule.effect.value
            rule_ids = [rule_json(rule)["id"]]
        else:
            effects = {r.effect.value for r in rules.values()}
            effect = next(iter(effects)) if len(effects) == 1 else "mixed"
            rule_ids = sorted(rule_json(r)["id"] for r in rules.values())
        edges_out.append({
            "id": f"{source}->{target}",
            "source": source,
            "target": target,
            "observed": observed,
            "line": "solid" if observed else "dotted",
            "verdict": worst,
            "hole": hole,
            "effect": effect,
            "label": label,
            "ports": [
                {"port": p.port, "verdict": p.verdict, "observed": p.observed, "count": p.count,
                 "firstSeen": epoch(p.first_seen), "lastSeen": epoch(p.last_seen),
                 "ruleId": p.rule_id or None, "would": p.would,
                 "wouldRuleId": p.would_rule_id or None, "enforced": not p.unenforced,
                 "unenforced": p.unenforced, "seen": p.seen,
                 "history": [
                     {"verdict": h.verdict, "count": h.count, "firstSeen": epoch(h.first_seen),
                      "lastSeen": epoch(h.last_seen), "ruleId": h.rule_id or None,
                      "ruleName": h.rule_name, "would": h.would,
                      "wouldRuleId": h.would_rule_id or None, "unenforced": h.unenforced}
                     for h in p.history] if p.history else []}
                for p in ports
            ],
            "rules": rule_ids,
            "count": count,
            "firstSeen": epoch(first),
            "lastSeen": epoch(last),
        })

    # Filters on nodes: namespace, host, text. An edge stays when both its ends stay.
    def keep(node: _Node) -> bool:
        if query.namespace and node.kind == "image" and query.namespace not in node.namespaces():
            return False
        if query.host:
            if node.kind == "image" and query.host not in node.hosts():
                return False
            if node.kind == "host" and node.label != query.host:
                return False
        return True

    kept = {n for n, node in g.nodes.items() if keep(node)}
    q = query.q.strip().lower()
    if q:
        hits = {n for n in kept if _matches_text(g.nodes[n], q)}
        near = {e["target"] for e in edges_out if e["source"] in hits}
        near |= {e["source"] for e in edges_out if e["target"] in hits}
        kept &= hits | near
        edges_out = [e for e in edges_out if e["source"] in hits or e["target"] in hits]
    edges_out = [e for e in edges_out if e["source"] in kept and e["target"] in kept]
    connected = {e["source"] for e in edges_out} | {e["target"] for e in edges_out}
    filtered = bool(query.namespace or query.host or query.verdict or q)
    primary = "image" if query.view == "container" else "host"

    nodes_out: list[dict[str, Any]] = []
    node_objects = g.node_objects()
    host_counts: dict[str, tuple[int, int]] | None = None
    groups: dict[str, dict[str, Any]] = {}
    for node_id, node in g.nodes.items():
        if node_id not in kept:
            continue
        is_primary = node.kind == primary
        if node_id not in connected:
            if filtered:
                # Keep lone nodes only for the node filters (namespace, host, text).
                if not is_primary or query.verdict or (q and not _matches_text(node, q)):
                    continue
            elif node_id in g.optional or node.kind == "internet":
                continue
        overlay = (overlays.get(("image", node.label))
                   or overlays.get(("image", node.label.rsplit(":", 1)[0]))
                   if node.kind == "image" else overlays.get(("host", node.label))
                   if node.kind == "host" else None)
        parent = ""
        if is_primary and query.view == "container":
            group_name = _group_of(node, query.group)
            if group_name:
                parent = f"group:{query.group}:{group_name}"
                g_out = groups.setdefault(parent, {
                    "id": parent, "kind": "group", "label": group_name,
                    "groupBy": query.group, "children": 0,
                })
                g_out["children"] += 1
        data: dict[str, Any] = {
            "id": node_id,
            "kind": node.kind,
            "label": node.label,
            "parent": parent or None,
            "external": node.kind in ("subnet", "dns", "internet"),
            "severity": overlay.worst if overlay else "unknown",
            "vulnerabilities": dict(overlay.vulnerabilities) if overlay else None,
            "compliance": dict(overlay.compliance) if overlay else None,
            "detail": node.detail,
        }
        if node.kind == "image":
            # Pods by name (their container names repeat in every replica), with
            # their images; the containers that run in no pod by name.
            pods, plain = _workloads(node.containers)
            data["containers"] = len(plain)
            data["podCount"] = len(pods)
            data["namespaces"] = node.namespaces()
            data["hosts"] = node.hosts()
            data["containerNames"] = sorted(c.name for c in plain.values())[:NAMES_LISTED]
            data["pods"] = [{"namespace": ns, "name": pod, "host": host,
                             "images": list(c.images) or [c.image]}
                            for (ns, pod, host), c in sorted(pods.items())[:NAMES_LISTED]]
            data["workloads"] = _drill_down(node.containers)
            labels: dict[str, str] = {}
            for c in node.containers:
                labels.update(c.labels)
            data["labels"] = labels
        elif node.kind == "host" and node.host is not None:
            data["addresses"] = list(node.host.addresses)
            data["labels"] = dict(node.host.labels)
            if host_counts is None:
                host_counts = _host_counts(containers)
            data["containers"], data["podCount"] = host_counts.get(node.label, (0, 0))
        if node.kind in ("image", "host"):
            data["objects"] = [{"name": name, "nodes": n}
                               for name, n in node_objects.get(node_id, ())[:OBJECTS_LISTED]]
        if node.kind == "internet":
            seen = sorted(node.seen)
            data["seen"] = seen[:SEEN_LISTED]
            data["seenCount"] = len(seen)
        nodes_out.append(data)

    return {
        "view": query.view,
        # Whether the policy is enforced for this view's workloads (else only observed).
        "enforced": policy.container_enabled if query.view == "container"
        else policy.host_enabled,
        "defaultEffect": policy.default_effect.value,
        "group": query.group if query.view == "container" else "none",
        "groups": sorted(groups.values(), key=lambda x: x["id"]),
        "nodes": nodes_out,
        "edges": edges_out,
        # The rules drawn on the edges, by id (an edge lists the ids).
        "rules": {str(k): v for k, v in sorted(rules_json.items())},
        "truncatedRules": g.truncated_rules,
    }
