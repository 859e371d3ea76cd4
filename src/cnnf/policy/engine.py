"""The policy engine: compile a policy into indexes, evaluate attempts, explain.

Evaluation semantics (DESIGN.md section 1): the source endpoint picks the rule
list (a container source -> container rules, a host source -> host rules, an
address-only source -> none); the first enabled rule whose source object,
destination object and ports match decides; no match gives the policy's
default effect, flagged as unmatched.

How it is fast. Every enabled rule of a list gets one bit of a Python integer,
the first rule the highest bit. Compiling builds, per list:

- a selector index from which source (and destination) identities get the
  set of rules whose object matches them: objects are bucketed by an exact
  value they require (image name, namespace, container name, label pair,
  host, cluster; or the first path segment of their image globs), so only a
  few candidates are tested, plus the objects that are only globs;
- a port table: for each port, the set of rules whose ranges contain it
  (built from the ranges' elementary intervals);
- a destination index: CIDRs by prefix length (one dict per length present),
  DNS names exact and by wildcard suffix.

An attempt's candidate rules are then ``src & port & dst`` (word-parallel bit
operations) and the deciding rule is the highest set bit -- no rule is tested
one by one (the bit-vector scheme of packet classifiers). Masks resolved for
an identity or destination endpoint are memoised (bounded), and whole verdicts
of repeated attempts are cached (bounded); both caches can be turned off.

A :class:`CompiledPolicy` is an immutable snapshot: swap in a new one when the
policy changes. Its caches are private memo tables; evaluation takes no locks
and does no I/O.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections import defaultdict
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, TypeVar

from cnnf.errors import PolicyValidationError
from cnnf.model import (
    ConnectionAttempt,
    ContainerIdentity,
    ContainerObject,
    ContainerSelector,
    DnsObject,
    Endpoint,
    HostIdentity,
    HostObject,
    HostSelector,
    Policy,
    PortRange,
    Rule,
    RuleKind,
    SubnetObject,
    Verdict,
)
from cnnf.policy.check import check_policy
from cnnf.policy.match import (
    ContainerMatch,
    HostMatch,
    ObjectMatch,
    describe_endpoint,
    image_patterns,
    image_refs,
    is_glob,
    normalise_domain,
    parse_address,
    split_label_pattern,
)

__all__ = [
    "CompiledPolicy",
    "Explanation",
    "FlowEvaluator",
    "RuleStep",
    "compile_policy",
]

Outcome = Literal["matched", "disabled", "staged", "no-match"]

DEFAULT_VERDICT_CACHE = 65536
# Memoised masks are integers as wide as the rule list: bound the memo by
# total size (about 256 MiB) as well as by count.
_MEMO_BITS_BUDGET = 1 << 31
_MEMO_MAX_ENTRIES = 65536

# --------------------------------------------------------------------------- explain


@dataclass(frozen=True, slots=True)
class RuleStep:
    """One rule considered by :meth:`CompiledPolicy.explain`, and why."""

    kind: RuleKind
    rule_id: int
    rule_name: str
    outcome: Outcome
    reason: str

    def line(self) -> str:
        return f"{self.kind} rule {self.rule_id} '{self.rule_name}': {self.outcome}: {self.reason}"


@dataclass(frozen=True, slots=True)
class Explanation:
    """The verdict on an attempt and the trace that led to it: one step per
    rule considered, in order, up to and including the deciding rule.
    ``note`` says why the default effect decided, when it did."""

    verdict: Verdict
    steps: tuple[RuleStep, ...]
    note: str = ""

    def lines(self) -> list[str]:
        """The explanation as text lines, for the CLI."""
        v = self.verdict
        if v.matched:
            head = (
                f"verdict: {v.effect} by {v.rule_kind} rule {v.rule_id} '{v.rule_name}'"
                f" (revision {v.revision})"
            )
        else:
            head = f"verdict: {v.effect} (no rule matched: default effect; revision {v.revision})"
        out = [head]
        w = v.would
        if w is not None:
            by = (f"{w.rule_kind} rule {w.rule_id} '{w.rule_name}'" if w.matched
                  else "the default effect")
            out.append(f"would: {w.effect} by {by} (staged: reported, not enforced)")
        out.extend(f"  {step.line()}" for step in self.steps)
        if self.note:
            out.append(f"  note: {self.note}")
        return out


# --------------------------------------------------------------------------- bit sets


def bits_to_mask(bits: Sequence[int]) -> int:
    """An integer with the given bit positions set."""
    if len(bits) < 16:
        mask = 0
        for b in bits:
            mask |= 1 << b
        return mask
    buf = bytearray(max(bits) // 8 + 1)
    for b in bits:
        buf[b >> 3] |= 1 << (b & 7)
    return int.from_bytes(buf, "little")


def merge_ranges(ranges: Iterable[PortRange]) -> list[tuple[int, int]]:
    """Ranges as sorted, disjoint, non-adjacent (start, end) pairs."""
    merged: list[tuple[int, int]] = []
    for start, end in sorted((r.start, r.end) for r in ranges):
        if merged and start <= merged[-1][1] + 1:
            if end > merged[-1][1]:
                merged[-1] = (merged[-1][0], end)
        else:
            merged.append((start, end))
    return merged


def _port_table(port_ranges: Sequence[tuple[int, list[tuple[int, int]]]]) -> list[int]:
    """For every port 0..65535, the mask of rules whose ranges contain it.

    A sweep over the ranges' boundaries: each elementary interval shares one
    mask object, so the table costs one reference per port."""
    adds: defaultdict[int, list[int]] = defaultdict(list)
    removes: defaultdict[int, list[int]] = defaultdict(list)
    for bit, ranges in port_ranges:
        for start, end in ranges:
            adds[start].append(bit)
            removes[end + 1].append(bit)
    table: list[int] = [0] * 65536
    running = 0
    prev = 0
    for boundary in sorted(set(adds) | set(removes)):
        if boundary > prev and running:
            table[prev:boundary] = [running] * (boundary - prev)
        if boundary in removes:
            running &= ~bits_to_mask(removes[boundary])
        if boundary in adds:
            running |= bits_to_mask(adds[boundary])
        prev = boundary
    if prev < 65536 and running:
        table[prev:65536] = [running] * (65536 - prev)
    return table


# --------------------------------------------------------------------------- indexes

_C_FIELDS: tuple[tuple[str, str], ...] = (
    ("images", ""),
    ("namespaces", "namespace"),
    ("containers", "name"),
    ("labels", ""),
    ("hosts", "host"),
    ("clusters", "cluster"),
)


def _first_segment_key(pattern: str) -> str | None:
    """For a glob whose literal prefix holds a '/', the part before the first
    '/': any image it can match has that first path segment."""
    cut = min((i for i in (pattern.find(ch) for ch in "*?[") if i != -1), default=len(pattern))
    slash = pattern.find("/")
    if slash == -1 or slash >= cut:
        return None
    return pattern[:slash]


class _ContainerIndex:
    """Container selectors (each with a rule mask) bucketed by an exact value
    they require; :meth:`mask` ORs the masks of the selectors matching an identity."""

    def __init__(self, entries: Iterable[tuple[ContainerSelector, int]]) -> None:
        Entry = tuple[Callable[[ContainerIdentity], bool], int]
        self.by_image: defaultdict[str, list[Entry]] = defaultdict(list)
        self.by_segment: defaultdict[str, list[Entry]] = defaultdict(list)
        self.by_attr: dict[str, defaultdict[str, list[Entry]]] = {
            attr: defaultdict(list) for _, attr in _C_FIELDS if attr
        }
        self.by_label: defaultdict[tuple[str, str], list[Entry]] = defaultdict(list)
        self.rest: list[Entry] = []
        for selector, mask in entries:
            self._add(selector, mask)
        self.attr_lookups = tuple((attr, d) for attr, d in self.by_attr.items() if d)

    def _add(self, selector: ContainerSelector, mask: int) -> None:
        for field, attr in _C_FIELDS:
            patterns: tuple[str, ...] = getattr(selector, field)
            if field == "images":
                patterns = image_patterns(patterns)  # as ContainerMatch matches them
            if not patterns:
                continue
            if field == "labels":
                pairs = [split_label_pattern(p) for p in patterns]
                if any(is_glob(k) or is_glob(v) for k, v in pairs):
                    continue
                check = ContainerMatch(selector, skip=field)
                for pair in pairs:
                    self.by_label[pair].append((check, mask))
                return
            if any(is_glob(p) for p in patterns):
                continue
            check = ContainerMatch(selector, skip=field)
            bucket = self.by_image if field == "images" else self.by_attr[attr]
            for p in set(patterns):
                bucket[p].append((check, mask))
            return
        if selector.images:
            keys = {_first_segment_key(p) for p in image_patterns(selector.images)}
            if None not in keys:
                check = ContainerMatch(selector)
                for key in keys:
                    assert key is not None
                    self.by_segment[key].append((check, mask))
                return
        self.rest.append((ContainerMatch(selector), mask))

    def mask(self, c: ContainerIdentity) -> int:
        m = 0
        refs = image_refs(c)  # (name:tag, name) of each image
        by_image = self.by_image
        for key in refs:
            for check, emask in by_image.get(key, ()):
                if check(c):
                    m |= emask
        if self.by_segment:
            for name in refs[1::2]:
                slash = name.find("/")
                if slash != -1:
                    for check, emask in self.by_segment.get(name[:slash], ()):
                        if check(c):
                            m |= emask
        for attr, bucket in self.attr_lookups:
            for check, emask in bucket.get(getattr(c, attr), ()):
                if check(c):
                    m |= emask
        if self.by_label:
            for pair in c.labels:
                for check, emask in self.by_label.get(pair, ()):
                    if check(c):
                        m |= emask
        for check, emask in self.rest:
            if check(c):
                m |= emask
        return m


class _HostIndex:
    """Host selectors by exact host name or exact label pair, the rest scanned."""

    def __init__(self, entries: Iterable[tuple[HostSelector, int]]) -> None:
        Entry = tuple[Callable[[HostIdentity], bool], int]
        self.by_name: defaultdict[str, list[Entry]] = defaultdict(list)
        self.by_label: defaultdict[tuple[str, str], list[Entry]] = defaultdict(list)
        self.rest: list[Entry] = []
        for selector, mask in entries:
            check = HostMatch(selector)
            if selector.hosts and not any(is_glob(p) for p in selector.hosts):
                for p in set(selector.hosts):
                    self.by_name[p].append((check, mask))
                continue
            pairs = [split_label_pattern(p) for p in selector.labels]
            if pairs and not any(is_glob(k) or is_glob(v) for k, v in pairs):
                for pair in set(pairs):
                    self.by_label[pair].append((check, mask))
                continue
            self.rest.append((check, mask))

    def mask(self, h: HostIdentity) -> int:
        m = 0
        for check, emask in self.by_name.get(h.name, ()):
            if check(h):
                m |= emask
        if self.by_label:
            for pair in h.labels:
                for check, emask in self.by_label.get(pair, ()):
                    if check(h):
                        m |= emask
        for check, emask in self.rest:
            if check(h):
                m |= emask
        return m


class _SubnetIndex:
    """CIDRs as one dict per (IP version, prefix length): network number -> mask."""

    def __init__(self, entries: Iterable[tuple[SubnetObject, int]]) -> None:
        tables: dict[int, dict[int, dict[int, int]]] = {4: {}, 6: {}}
        for obj, mask in entries:
            for net in obj.networks():
                bits = net.max_prefixlen
                table = tables[net.version].setdefault(net.prefixlen, {})
                key = int(net.network_address) >> (bits - net.prefixlen)
                table[key] = table.get(key, 0) | mask
        self.tables = {
            version: tuple(
                (tables[version][plen], (32 if version == 4 else 128) - plen)
                for plen in sorted(tables[version])
            )
            for version in (4, 6)
        }

    def mask(self, address: str | None) -> int:
        if not (self.tables[4] or self.tables[6]):
            return 0
        ip = parse_address(address)
        if ip is None:
            return 0
        value = int(ip)
        m = 0
        for table, shift in self.tables[ip.version]:
            m |= table.get(value >> shift, 0)
        return m


class _DnsIndex:
    """Domain names exact, and wildcards by the suffix below which they match."""

    def __init__(self, entries: Iterable[tuple[DnsObject, int]]) -> None:
        self.exact: dict[str, int] = {}
        self.wild: dict[str, int] = {}
        for obj, mask in entries:
            for d in obj.domains:
                if d.startswith("*."):
                    self.wild[d[2:]] = self.wild.get(d[2:], 0) | mask
                else:
                    self.exact[d] = self.exact.get(d, 0) | mask

    def mask(self, domains: Iterable[str]) -> int:
        m = 0
        for raw in domains:
            name = normalise_domain(raw)
            m |= self.exact.get(name, 0)
            if self.wild:
                dot = name.find(".")
                while dot != -1:
                    m |= self.wild.get(name[dot + 1 :], 0)
                    dot = name.find(".", dot + 1)
        return m


K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


def _remember(memo: dict[K, V], limit: int, key: K, value: V) -> None:
    if limit <= 0:
        return
    if len(memo) >= limit:
        # Evict the oldest entry (insertion order). Another thread may be
        # doing the same; losing that race only costs a recomputation.
        with contextlib.suppress(StopIteration, RuntimeError, KeyError):
            del memo[next(iter(memo))]
    memo[key] = value


class _RuleTable:
    """One rule list (container or host) compiled to bit-set indexes."""

    def __init__(
        self,
        kind: RuleKind,
        rules: tuple[Rule, ...],
        objects: dict[str, ContainerObject | HostObject | SubnetObject | DnsObject],
        revision: int,
        memo_entries: int | None,
    ) -> None:
        self.kind = kind
        self.rules = rules
        # A staged rule is not in force: the snapshot of the policy with it
        # promoted (CompiledPolicy._would) evaluates it.
        enabled = [(pos, r) for pos, r in enumerate(rules) if not (r.disabled or r.staged)]
        n = len(enabled)
        self.width = n
        self.revision = revision
        # bit of the i-th enabled rule: n-1-i, so the first rule is the highest bit.
        self.by_bit: list[Rule] = [r for _, r in reversed(enabled)]
        # one shared Verdict per rule, made when the rule first decides
        self.verdicts: list[Verdict | None] = [None] * n
        src_bits: defaultdict[str, list[int]] = defaultdict(list)
        dst_bits: defaultdict[str, list[int]] = defaultdict(list)
        port_ranges: list[tuple[int, list[tuple[int, int]]]] = []
        for i, (_, rule) in enumerate(enabled):
            bit = n - 1 - i
            src_bits[rule.src].append(bit)
            dst_bits[rule.dst].append(bit)
            port_ranges.append((bit, merge_ranges(rule.ports)))
        self.port_masks = _port_table(port_ranges)

        c_src: list[tuple[ContainerSelector, int]] = []
        h_src: list[tuple[HostSelector, int]] = []
        c_dst: list[tuple[ContainerSelector, int]] = []
        h_dst: list[tuple[HostSelector, int]] = []
        subnets: list[tuple[SubnetObject, int]] = []
        dns: list[tuple[DnsObject, int]] = []
        for name, bits in src_bits.items():
            obj = objects[name]
            if isinstance(obj, ContainerObject):
                c_src.append((obj.selector, bits_to_mask(bits)))
            elif isinstance(obj, HostObject):
                h_src.append((obj.selector, bits_to_mask(bits)))
        for name, bits in dst_bits.items():
            obj = objects[name]
            if isinstance(obj, ContainerObject):
                c_dst.append((obj.selector, bits_to_mask(bits)))
            elif isinstance(obj, HostObject):
                h_dst.append((obj.selector, bits_to_mask(bits)))
            elif isinstance(obj, SubnetObject):
                subnets.append((obj, bits_to_mask(bits)))
            else:
                dns.append((obj, bits_to_mask(bits)))
        self.c_src = _ContainerIndex(c_src)
        self.h_src = _HostIndex(h_src)
        self.c_dst = _ContainerIndex(c_dst)
        self.h_dst = _HostIndex(h_dst)
        self.subnets = _SubnetIndex(subnets)
        self.dns = _DnsIndex(dns)
        self.has_c_dst = bool(c_dst)
        self.has_h_dst = bool(h_dst)
        if memo_entries is None:
            memo_entries = min(_MEMO_MAX_ENTRIES, _MEMO_BITS_BUDGET // max(n, 1))
        self.memo_limit = memo_entries
        self.src_memo: dict[Hashable, int] = {}
        self.dst_memo: dict[Endpoint, int] = {}

    def verdict(self, bit: int) -> Verdict:
        verdict = self.verdicts[bit]
        if verdict is None:
            rule = self.by_bit[bit]
            verdict = Verdict(
                effect=rule.effect,
                revision=self.revision,
                matched=True,
                rule_id=rule.id,
                rule_name=rule.name,
                rule_kind=self.kind,
            )
            self.verdicts[bit] = verdict
        return verdict

    def src_mask(self, identity: ContainerIdentity | HostIdentity) -> int:
        if isinstance(identity, ContainerIdentity):
            m = self.c_src.mask(identity)
        else:
            m = self.h_src.mask(identity)
        _remember(self.src_memo, self.memo_limit, identity, m)
        return m

    def dst_mask(self, dst: Endpoint) -> int:
        m = self.subnets.mask(dst.address)
        if dst.domains:
            m |= self.dns.mask(dst.domains)
        if self.has_c_dst and dst.container is not None:
            m |= self.c_dst.mask(dst.container)
        if self.has_h_dst and dst.host is not None:
            m |= self.h_dst.mask(dst.host)
        _remember(self.dst_memo, self.memo_limit, dst, m)
        return m


# --------------------------------------------------------------------------- compiled policy


class CompiledPolicy:
    """An immutable, evaluable snapshot of a :class:`Policy`.

    Build it with :func:`compile_policy`; swap in a new one when the policy
    changes. :meth:`evaluate` is the hot path; :meth:`explain` the trace."""

    policy: Policy
    revision: int
    _objects: dict[str, ContainerObject | HostObject | SubnetObject | DnsObject]
    _matchers: dict[str, ObjectMatch]
    _default: Verdict
    _container: _RuleTable
    _host: _RuleTable
    _cache_limit: int
    _cache: dict[ConnectionAttempt, Verdict] | None
    _would: CompiledPolicy | None
    _combined: dict[tuple[int, int], Verdict]

    __slots__ = (
        "_cache",
        "_cache_limit",
        "_combined",
        "_container",
        "_default",
        "_host",
        "_matchers",
        "_objects",
        "_would",
        "policy",
        "revision",
    )

    def __init__(self, policy: Policy, verdict_cache: int, identity_cache: int | None) -> None:
        errors = check_policy(policy)
        if errors:
            raise PolicyValidationError(errors, "policy")
        objects = {obj.name: obj for obj in reversed(policy.objects)}  # first one wins
        init = object.__setattr__  # the snapshot is immutable once built
        init(self, "policy", policy)
        init(self, "revision", policy.revision)
        init(self, "_objects", objects)
        init(self, "_matchers", {})  # built by explain() as it needs them
        init(
            self,
            "_default",
            Verdict(effect=policy.default_effect, revision=policy.revision, matched=False),
        )
        init(
            self,
            "_container",
            _RuleTable(
                RuleKind.CONTAINER, policy.container_rules, objects, policy.revision, identity_cache
            ),
        )
        init(
            self,
            "_host",
            _RuleTable(RuleKind.HOST, policy.host_rules, objects, policy.revision, identity_cache),
        )
        init(self, "_cache_limit", verdict_cache)
        init(self, "_cache", {} if verdict_cache > 0 else None)
        # Staging: a second snapshot, of the policy with everything staged in
        # force, decides the "would" verdict. Built once here, so evaluation
        # stays one lookup per snapshot, lock-free and I/O-free; without
        # anything staged there is none and evaluation costs what it did.
        init(self, "_would", CompiledPolicy(policy.in_force(), verdict_cache, identity_cache)
             if policy.staging else None)
        # (verdict in force, staged verdict) -> the verdict reported: both are
        # the snapshots' shared per-rule (or default) objects, so there are few
        # pairs, and each combined verdict is made once
        init(self, "_combined", {})

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"CompiledPolicy is immutable: cannot set {name!r}")

    def evaluate(self, attempt: ConnectionAttempt) -> Verdict:
        """The verdict on one attempt: the first enabled matching rule, or the default."""
        cache = self._cache
        if cache is not None:
            cached = cache.get(attempt)
            if cached is not None:
                return cached
        src = attempt.src
        identity: ContainerIdentity | HostIdentity | None = src.container
        if identity is not None:
            table = self._container
        else:
            identity = src.host
            if identity is None:
                return self._address_only()
            table = self._host
        verdict = self._default
        m = table.src_memo.get(identity)
        if m is None:
            m = table.src_mask(identity)
        if m:
            port = attempt.port
            m &= table.port_masks[port] if 0 <= port <= 65535 else 0
            if m:
                dst = attempt.dst
                d = table.dst_memo.get(dst)
                if d is None:
                    d = table.dst_mask(dst)
                m &= d
                if m:
                    bit = m.bit_length() - 1
                    verdict = table.verdicts[bit] or table.verdict(bit)
        would = self._would
        if would is not None:
            staged = would.evaluate(attempt)
            pair = (id(verdict), id(staged))
            combined = self._combined.get(pair)
            if combined is None:
                combined = self._combine(pair, verdict, staged)
            verdict = combined
        if cache is not None:
            _remember(cache, self._cache_limit, attempt, verdict)
        return verdict

    def flows(self) -> FlowEvaluator:
        """An evaluator for many stored flows whose endpoints repeat (see
        :class:`FlowEvaluator`)."""
        return FlowEvaluator(self)

    def _combine(self, pair: tuple[int, int], verdict: Verdict, staged: Verdict) -> Verdict:
        combined = (dataclasses.replace(verdict, would=staged) if verdict.differs(staged)
                    else verdict)
        if len(self._combined) >= _MEMO_MAX_ENTRIES:
            self._combined.clear()
        self._combined[pair] = combined
        return combined

    def _address_only(self) -> Verdict:
        """An address-only source: no rule list applies, the default decides."""
        would = self._would
        if would is None:
            return self._default
        pair = (id(self._default), id(would._default))
        return self._combined.get(pair) or self._combine(pair, self._default, would._default)

    @property
    def staged(self) -> CompiledPolicy | None:
        """The snapshot with everything staged in force (None: nothing staged)."""
        return self._would

    def explain(self, attempt: ConnectionAttempt) -> Explanation:
        """The verdict and, for each rule considered in order, why it matched or not.

        Walks the applicable rule list one rule at a time (no index): this is
        for people, not for the hot path."""
        src, dst, port = attempt.src, attempt.dst, attempt.port
        if src.container is not None:
            table = self._container
        elif src.host is not None:
            table = self._host
        else:
            note = (
                f"source {describe_endpoint(src)} is neither a container nor a host:"
                f" no rule list applies; the default effect {self._default.effect} decides"
            )
            return Explanation(self._address_only(), (), note)
        kind = table.kind
        steps: list[RuleStep] = []
        bit = table.width
        for rule in table.rules:
            if rule.disabled:
                steps.append(RuleStep(kind, rule.id, rule.name, "disabled", "rule is disabled"))
                continue
            if rule.staged:
                steps.append(RuleStep(kind, rule.id, rule.name, "staged",
                                      "rule is staged: not in force (its verdict is a "
                                      "'would' verdict)"))
                continue
            bit -= 1
            reason = _rule_mismatch(self._matcher, rule, src, dst, port)
            if reason is not None:
                steps.append(RuleStep(kind, rule.id, rule.name, "no-match", reason))
                continue
            ports = ",".join(str(p) for p in rule.ports)
            reason = (
                f"source {describe_endpoint(src)} matches '{rule.src}', destination"
                f" {describe_endpoint(dst)} matches '{rule.dst}', port {port} in {ports}"
            )
            steps.append(RuleStep(kind, rule.id, rule.name, "matched", reason))
            return Explanation(self._staged_too(table.verdict(bit), attempt), tuple(steps))
        effect = self._default.effect
        if table.rules:
            note = f"no enabled {kind} rule matched; the default effect {effect} decides"
        else:
            note = f"there are no {kind} rules; the default effect {effect} decides"
        return Explanation(self._staged_too(self._default, attempt), tuple(steps), note)

    def _staged_too(self, verdict: Verdict, attempt: ConnectionAttempt) -> Verdict:
        would = self._would
        if would is None:
            return verdict
        staged = would.evaluate(attempt)
        return dataclasses.replace(verdict, would=staged) if verdict.differs(staged) else verdict

    def _matcher(self, name: str) -> ObjectMatch:
        match = self._matchers.get(name)
        if match is None:
            match = self._matchers[name] = ObjectMatch(self._objects[name])
        return match

    def cache_info(self) -> dict[str, int]:
        """Sizes of the verdict cache and the memo tables (for metrics)."""
        return {
            "verdicts": len(self._cache) if self._cache is not None else 0,
            "container_sources": len(self._container.src_memo),
            "container_destinations": len(self._container.dst_memo),
            "host_sources": len(self._host.src_memo),
            "host_destinations": len(self._host.dst_memo),
        }


class FlowEvaluator:
    """Evaluates the stored flows of a window: ``verdict(src, dst, port)`` is
    ``evaluate(ConnectionAttempt(src, dst, port))``, with each distinct source
    and destination endpoint *object* resolved to its rule set once and
    remembered by identity (no hashing of the endpoints' fields): a million
    flows between a few thousand recorded identities then cost a few integer
    operations each. The memo holds the endpoints, so an id is never reused
    while remembered; it grows with the distinct endpoints given (one
    evaluation's worth), it is not for the hot path."""

    __slots__ = ("_default", "_dst", "_policy", "_src", "_would")

    def __init__(self, policy: CompiledPolicy) -> None:
        self._policy = policy
        self._default = policy._default
        self._src: dict[int, tuple[Endpoint, _RuleTable | None, int]] = {}
        self._dst: dict[tuple[int, RuleKind], tuple[Endpoint, int]] = {}
        self._would = policy._would.flows() if policy._would is not None else None

    def _source(self, src: Endpoint) -> tuple[Endpoint, _RuleTable | None, int]:
        policy = self._policy
        identity: ContainerIdentity | HostIdentity | None = src.container
        table: _RuleTable | None = None
        if identity is not None:
            table = policy._container
        elif src.host is not None:
            identity, table = src.host, policy._host
        mask = 0
        if table is not None and identity is not None:
            memo = table.src_memo.get(identity)
            mask = memo if memo is not None else table.src_mask(identity)
        entry = self._src[id(src)] = (src, table, mask)
        return entry

    def _destination(self, table: _RuleTable, dst: Endpoint) -> int:
        mask = table.dst_memo.get(dst)
        if mask is None:
            mask = table.dst_mask(dst)
        self._dst[(id(dst), table.kind)] = (dst, mask)
        return mask

    def verdict(self, src: Endpoint, dst: Endpoint, port: int) -> Verdict:
        found = self._src.get(id(src))
        _, table, m = found if found is not None else self._source(src)
        verdict = self._default
        if m:
            assert table is not None
            m &= table.port_masks[port] if 0 <= port <= 65535 else 0
            if m:
                d = self._dst.get((id(dst), table.kind))
                m &= d[1] if d is not None else self._destination(table, dst)
                if m:
                    bit = m.bit_length() - 1
                    verdict = table.verdicts[bit] or table.verdict(bit)
        would = self._would
        if would is not None:
            staged = would.verdict(src, dst, port)
            policy = self._policy
            pair = (id(verdict), id(staged))
            combined = policy._combined.get(pair)
            if combined is None:
                combined = policy._combine(pair, verdict, staged)
            verdict = combined
        return verdict


def _rule_mismatch(
    matcher: Callable[[str], ObjectMatch], rule: Rule, src: Endpoint, dst: Endpoint, port: int
) -> str | None:
    why = matcher(rule.src).mismatch(src)
    if why is not None:
        return f"source {describe_endpoint(src)} does not match object '{rule.src}' ({why})"
    why = matcher(rule.dst).mismatch(dst)
    if why is not None:
        return f"destination {describe_endpoint(dst)} does not match object '{rule.dst}' ({why})"
    if not rule.matches_port(port):
        return f"port {port} not in {','.join(str(p) for p in rule.ports)}"
    return None


def compile_policy(
    policy: Policy,
    *,
    verdict_cache: int = DEFAULT_VERDICT_CACHE,
    identity_cache: int | None = None,
) -> CompiledPolicy:
    """Compile ``policy`` into an evaluable snapshot.

    Raises :class:`PolicyValidationError` listing every problem
    :func:`~cnnf.policy.check.check_policy` finds (a rule naming a missing
    object or one of a kind not allowed in its position, duplicate rule ids or
    names, duplicate object names). ``verdict_cache`` bounds
    the cache of whole verdicts (0 turns it off); ``identity_cache`` bounds the
    memo of per-identity and per-destination rule sets (0 turns it off; None
    sizes it by the rule count)."""
    return CompiledPolicy(policy, verdict_cache, identity_cache)
