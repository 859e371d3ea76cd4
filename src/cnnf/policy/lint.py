"""Policy lint: problems a valid policy can still have.

- ``shadowed-rule`` (warning): an enabled rule can never match, because one
  earlier enabled rule in the same list covers its source, destination and
  ports entirely. Coverage is only claimed when certain: the same object, a
  ``*`` or identical pattern, a glob that matches a literal (fnmatch), CIDR
  containment, a ``*.`` wildcard above a name.
- ``subnet-conflict``: a rule whose destination is a subnet and a rule whose
  destination is a container, host or DNS object can see the same traffic
  (sources and ports may overlap; a workload's or a name's address may lie in
  the subnet) with different effects. The earlier rule wins: a warning when
  the subnet rule comes first (it silently overrides the specific rule, as in
  the original product), info when the specific rule comes first.
- ``unused-object`` (warning): no rule names the object.
- ``disabled-rule`` (info): the rule is disabled and never evaluated.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from enum import StrEnum

from cnnf.model import (
    ContainerObject,
    ContainerSelector,
    DnsObject,
    HostObject,
    HostSelector,
    ObjectKind,
    Policy,
    PortRange,
    Rule,
    SubnetObject,
)
from cnnf.model.identity import split_image
from cnnf.model.objects import NetworkObject, is_glob
from cnnf.policy.check import RULE_LISTS, rules_of
from cnnf.policy.engine import merge_ranges
from cnnf.policy.match import image_patterns


class Severity(StrEnum):
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"

    @property
    def rank(self) -> int:
        return {"info": 0, "warning": 1, "error": 2}[self.value]


@dataclass(frozen=True, slots=True)
class Finding:
    code: str
    severity: Severity
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.severity.value}: {self.path}: {self.message} [{self.code}]"


# --- coverage: does pattern/selector/object A match everything B matches? ---------


def pattern_covers(a: str, b: str) -> bool:
    """Glob ``a`` matches every string glob ``b`` matches (certain cases only)."""
    if a in ("*", b):
        return True
    return not is_glob(b) and fnmatch.fnmatchcase(b, a)


def _label_covers(a: str, b: str) -> bool:
    ak, _, av = a.partition("=")
    bk, _, bv = b.partition("=")
    return pattern_covers(ak, bk) and pattern_covers(av, bv)


def _field_covers(a: tuple[str, ...], b: tuple[str, ...], label: bool = False) -> bool:
    """Field ``a`` (patterns ORed; empty or containing ``*`` = any) covers ``b``."""
    if not a or (not label and "*" in a):
        return True
    if not b or (not label and "*" in b):
        return False  # b is unconstrained, a is not
    cover = _label_covers if label else pattern_covers
    return all(any(cover(pa, pb) for pa in a) for pb in b)


def selector_covers(
    a: ContainerSelector | HostSelector, b: ContainerSelector | HostSelector
) -> bool:
    if type(a) is not type(b):
        return False
    fields = ("images", "namespaces", "containers", "hosts", "clusters") if isinstance(
        a, ContainerSelector) else ("hosts",)
    return all(_field_covers(_patterns(a, f), _patterns(b, f)) for f in fields) and _field_covers(
        a.labels, b.labels, label=True)


def _patterns(selector: ContainerSelector | HostSelector, field: str) -> tuple[str, ...]:
    """A selector field's patterns as the engine matches them."""
    patterns: tuple[str, ...] = getattr(selector, field)
    return image_patterns(patterns) if field == "images" else patterns


def _domain_covers(a: str, b: str) -> bool:
    if a == b:
        return True
    if a.startswith("*."):
        suffix = a[1:]  # ".example.com": strictly below it, any depth
        return b.endswith(suffix) and len(b) > len(suffix) and b != "*" + suffix
    return False


def object_covers(a: NetworkObject, b: NetworkObject) -> bool:
    """Object ``a`` matches every endpoint object ``b`` matches (certain cases only)."""
    if a.name == b.name:
        return True
    if isinstance(a, ContainerObject | HostObject) and isinstance(b, ContainerObject | HostObject):
        return selector_covers(a.selector, b.selector)
    if isinstance(a, SubnetObject) and isinstance(b, SubnetObject):
        return all(
            any(nb.version == na.version and nb.subnet_of(na)  # type: ignore[arg-type]
                for na in a.networks())
            for nb in b.networks()
        )
    if isinstance(a, DnsObject) and isinstance(b, DnsObject):
        return all(any(_domain_covers(da, db) for da in a.domains) for db in b.domains)
    return False


def ports_cover(a: tuple[PortRange, ...], b: tuple[PortRange, ...]) -> bool:
    spans = merge_ranges(a)
    return all(any(lo <= p.start and p.end <= hi for lo, hi in spans) for p in b)


def ports_overlap(a: tuple[PortRange, ...], b: tuple[PortRange, ...]) -> bool:
    return any(pa.start <= pb.end and pb.start <= pa.end for pa in a for pb in b)


# --- disjointness: can two source objects never match the same endpoint? ----------


def _literal_names(field: str, patterns: tuple[str, ...]) -> set[str] | None:
    if not patterns or any(is_glob(p) for p in patterns):
        return None
    if field == "images":
        return {split_image(p)[0] if ":" in p.rsplit("/", 1)[-1] else p for p in patterns}
    return set(patterns)


def objects_disjoint(a: NetworkObject, b: NetworkObject) -> bool:
    """Certainly no endpoint matches both (only literal-vs-literal fields are used)."""
    if a.name == b.name:
        return False
    if isinstance(a, ContainerObject) and isinstance(b, ContainerObject):
        fields: tuple[str, ...] = ("images", "namespaces", "containers", "hosts", "clusters")
    elif isinstance(a, HostObject) and isinstance(b, HostObject):
        fields = ("hosts",)
    else:
        return False
    for f in fields:
        na = _literal_names(f, _patterns(a.selector, f))
        nb = _literal_names(f, _patterns(b.selector, f))
        if na is not None and nb is not None and not na & nb:
            return True
    return False


# --- the checks ---------------------------------------------------------------------


def _describe(rule: Rule) -> str:
    return f"rule {rule.id} {rule.name!r}"


def lint_policy(policy: Policy) -> list[Finding]:
    """Every finding for ``policy``, grouped by check, in document order."""
    findings: list[Finding] = []
    objects = {o.name: o for o in policy.objects}
    for kind, list_name in RULE_LISTS:
        rules = rules_of(policy, kind)
        enabled = [(i, r) for i, r in enumerate(rules)
                   if not r.disabled and r.src in objects and r.dst in objects]
        findings.extend(_shadowed(list_name, enabled, objects))
        findings.extend(_subnet_conflicts(list_name, enabled, objects))
    used = {name for kind, _ in RULE_LISTS for r in rules_of(policy, kind)
            for name in (r.src, r.dst)}
    findings.extend(
        Finding("unused-object", Severity.WARNING, f"objects[{i}]",
                f"{obj.kind.value} object {obj.name!r} is not used by any rule")
        for i, obj in enumerate(policy.objects) if obj.name not in used
    )
    for kind, list_name in RULE_LISTS:
        findings.extend(
            Finding("disabled-rule", Severity.INFO, f"{list_name}[{i}]",
                    f"{_describe(rule)} is disabled and never evaluated")
            for i, rule in enumerate(rules_of(policy, kind)) if rule.disabled
        )
    return findings


def _shadowed(
    list_name: str, enabled: list[tuple[int, Rule]], objects: dict[str, NetworkObject]
) -> list[Finding]:
    # Rules indexed by (src, dst); for each rule, only earlier rules whose objects
    # cover its objects are candidates (object coverage is computed once per pair).
    by_pair: dict[tuple[str, str], list[tuple[int, Rule]]] = {}
    for i, rule in enabled:
        by_pair.setdefault((rule.src, rule.dst), []).append((i, rule))
    srcs = sorted({r.src for _, r in enabled})
    dsts = sorted({r.dst for _, r in enabled})
    covering_srcs: dict[str, list[str]] = {}
    covering_dsts: dict[str, list[str]] = {}

    def covering(name: str, pool: list[str], memo: dict[str, list[str]]) -> list[str]:
        if name not in memo:
            b = objects[name]
            memo[name] = [a for a in pool if object_covers(objects[a], b)]
        return memo[name]

    out: list[Finding] = []
    for j, later in enabled:
        first: tuple[int, Rule] | None = None
        for a_src in covering(later.src, srcs, covering_srcs):
            for a_dst in covering(later.dst, dsts, covering_dsts):
                for i, earlier in by_pair.get((a_src, a_dst), ()):
                    if i >= j or (first is not None and i >= first[0]):
                        break
                    if ports_cover(earlier.ports, later.ports):
                        first = (i, earlier)
                        break
        if first is None:
            continue
        i, earlier = first
        same = earlier.effect == later.effect
        out.append(Finding(
            "shadowed-rule", Severity.WARNING, f"{list_name}[{j}]",
            f"{_describe(later)} ({later.effect.value}) never matches: earlier "
            f"{_describe(earlier)} at {list_name}[{i}] ({earlier.effect.value}) "
            f"covers its source, destination and ports"
            + ("" if same else "; its effect never applies"),
        ))
    return out


def _subnet_conflicts(
    list_name: str, enabled: list[tuple[int, Rule]], objects: dict[str, NetworkObject]
) -> list[Finding]:
    subnet_rules = [(i, r) for i, r in enabled if objects[r.dst].kind is ObjectKind.SUBNET]
    if not subnet_rules:
        return []
    other_rules = [(i, r) for i, r in enabled if objects[r.dst].kind is not ObjectKind.SUBNET]
    disjoint: dict[tuple[str, str], bool] = {}
    pairs: list[tuple[tuple[int, Rule], tuple[int, Rule]]] = []
    for s in subnet_rules:
        for o in other_rules:
            (_, sr), (_, orr) = s, o
            if sr.effect == orr.effect or not ports_overlap(sr.ports, orr.ports):
                continue
            key = (sr.src, orr.src)
            if key not in disjoint:
                disjoint[key] = objects_disjoint(objects[sr.src], objects[orr.src])
            if not disjoint[key]:
                pairs.append((s, o) if s[0] < o[0] else (o, s))
    pairs.sort(key=lambda p: (p[0][0], p[1][0]))
    out: list[Finding] = []
    for (i, a), (j, b) in pairs:
        dst_a, dst_b = objects[a.dst], objects[b.dst]
        if dst_a.kind is ObjectKind.SUBNET:
            severity = Severity.WARNING
            note = (f"the subnet rule comes first and decides wherever an address of "
                    f"{dst_b.name!r} lies in {dst_a.name!r}, overriding {_describe(b)}")
        else:
            severity = Severity.INFO
            note = (f"the {dst_a.kind.value} rule comes first and decides for "
                    f"{dst_a.name!r}; the subnet rule applies to the rest")
        out.append(Finding(
            "subnet-conflict", severity, f"{list_name}[{j}]",
            f"{_describe(b)} ({b.effect.value}, to {dst_b.kind.value} {dst_b.name!r}) and "
            f"{list_name}[{i}] {_describe(a)} ({a.effect.value}, to {dst_a.kind.value} "
            f"{dst_a.name!r}) can see the same connections with different effects; {note}",
        ))
    return out


def worst(findings: list[Finding]) -> Severity | None:
    return max((f.severity for f in findings), key=lambda s: s.rank, default=None)
