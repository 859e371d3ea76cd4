"""Matching network objects against connection endpoints.

One compiled matcher per network object, shared by the indexed engine (which
verifies its index candidates with them), the naive reference evaluator,
``explain()`` and anyone else who needs to ask "does this object match that
endpoint?":

- container selectors: fields ANDed when set, patterns within a field ORed;
  ``images`` globs match ``name:tag`` and ``name`` alone, and are normalised
  as identities are (``docker.io/shop/db`` is ``shop/db``); ``labels`` are
  ``key=value`` globs (key glob and value glob against any one label);
- host selectors: ``hosts`` globs on the host name, ``labels`` as above;
- subnets: the endpoint address lies in any CIDR (IPv4 and IPv6);
- DNS: any of the endpoint's names equals a domain, or lies strictly below a
  ``*.domain`` wildcard (any depth); case-insensitive, trailing dot ignored.

Globs follow :func:`fnmatch.fnmatchcase` (case-sensitive). Patterns without
glob characters are compared by equality (a set lookup), which is both faster
and what the engine's index relies on.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
from collections.abc import Callable, Iterable
from functools import lru_cache

from cnnf.model import (
    ContainerIdentity,
    ContainerObject,
    ContainerSelector,
    DnsObject,
    Endpoint,
    HostIdentity,
    HostObject,
    HostSelector,
    SubnetObject,
)
from cnnf.model.identity import implicit_image_prefix, split_image

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

StrMatch = Callable[[str], bool]


def _never(_: str) -> bool:
    return False


_is_glob = re.compile(r"[*?\[]").search  # as cnnf.model.objects.is_glob, faster


def is_glob(pattern: str) -> bool:
    """True when ``pattern`` holds a glob character (``*``, ``?`` or ``[``)."""
    return _is_glob(pattern) is not None


@lru_cache(maxsize=16384)
def _glob_regex(globs: tuple[str, ...]) -> Callable[[str], re.Match[str] | None]:
    return re.compile("|".join(f"(?:{fnmatch.translate(g)})" for g in globs)).match


def compile_globs(patterns: Iterable[str]) -> StrMatch:
    """One predicate for a list of globs: true when any pattern matches.

    Exact patterns become a set lookup, the rest one combined regular
    expression with :func:`fnmatch.fnmatchcase` semantics."""
    patterns = tuple(patterns)
    exact = frozenset(p for p in patterns if not is_glob(p))
    globs = tuple(sorted({p for p in patterns if is_glob(p)}))
    if "*" in globs:
        return _always
    if globs:
        rmatch = _glob_regex(globs)
        if exact:
            return lambda s: s in exact or rmatch(s) is not None
        return lambda s: rmatch(s) is not None
    if exact:
        return exact.__contains__
    return _never


def _always(_: str) -> bool:
    return True


def split_label_pattern(pattern: str) -> tuple[str, str]:
    """``key=value`` -> (key glob, value glob); the first ``=`` separates."""
    key, _, value = pattern.partition("=")
    return key, value


class LabelMatch:
    """``key=value`` globs: true when one label matches both key and value glob
    of one pattern."""

    __slots__ = ("_exact", "_globs")

    def __init__(self, patterns: Iterable[str]) -> None:
        exact: set[tuple[str, str]] = set()
        globs: list[tuple[StrMatch, StrMatch]] = []
        for p in patterns:
            key, value = split_label_pattern(p)
            if is_glob(key) or is_glob(value):
                globs.append((compile_globs([key]), compile_globs([value])))
            else:
                exact.add((key, value))
        self._exact = frozenset(exact)
        self._globs = tuple(globs)

    def __call__(self, labels: Iterable[tuple[str, str]]) -> bool:
        exact = self._exact
        for pair in labels:
            if pair in exact:
                return True
            for kmatch, vmatch in self._globs:
                if kmatch(pair[0]) and vmatch(pair[1]):
                    return True
        return False


def image_refs(identity: ContainerIdentity) -> tuple[str, ...]:
    """The strings image globs are matched against: ``name:tag`` and ``name``
    of each of the workload's images (a pod's containers' images).

    An image without a tag counts as ``:latest``; a digest reference
    (``name@sha256:...``) is matched as written."""
    if not identity.images:
        return _image_refs(identity.image)
    return tuple(r for image in identity.images for r in _image_refs(image))


@lru_cache(maxsize=65536)
def _image_refs(image: str) -> tuple[str, str]:
    name, tag = split_image(image)
    ref = image if "@" in image else f"{name}:{tag}"
    return ref, name


def normalise_image_pattern(pattern: str) -> str:
    """An ``images`` glob without the implicit prefixes identities lose
    (:func:`cnnf.model.normalise_image`), so ``docker.io/shop/db`` matches the
    container ``shop/db:13``.

    A prefix stays when a glob character comes before the first ``/`` after
    it (``docker.io/*``, ``docker.io/library/re*``): without it, the pattern
    would also match images of other registries (``quay.io/x``), a broader
    rule than the one written. Such a pattern matches nothing, as before."""
    while prefix := implicit_image_prefix(pattern):
        rest = pattern[len(prefix):]
        glob_at = _is_glob(rest)
        if glob_at is not None and "/" not in rest[:glob_at.start()]:
            break
        pattern = rest
    return pattern


@lru_cache(maxsize=4096)
def image_patterns(patterns: tuple[str, ...]) -> tuple[str, ...]:
    """A selector's ``images`` globs as they are matched: normalised
    (:func:`normalise_image_pattern`), duplicates dropped, order kept."""
    return tuple(dict.fromkeys(normalise_image_pattern(p) for p in patterns))


def _describe_patterns(field: str, patterns: tuple[str, ...]) -> str:
    return f"{field} {', '.join(patterns)}"


class ContainerMatch:
    """A compiled :class:`ContainerSelector`.

    ``skip`` leaves one field out: the engine's index has already established
    it for its candidates."""

    __slots__ = ("_checks", "selector")

    def __init__(self, selector: ContainerSelector, skip: str = "") -> None:
        self.selector = selector
        checks: list[tuple[str, Callable[[ContainerIdentity], bool]]] = []
        if selector.images and skip != "images" and "*" not in selector.images:
            images = compile_globs(image_patterns(selector.images))
            checks.append(("images", lambda c: any(images(r) for r in image_refs(c))))
        if selector.labels and skip != "labels":
            labels = LabelMatch(selector.labels)
            checks.append(("labels", lambda c: labels(c.labels)))
        for field, attr in (
            ("namespaces", "namespace"),
            ("containers", "name"),
            ("hosts", "host"),
            ("clusters", "cluster"),
        ):
            patterns: tuple[str, ...] = getattr(selector, field)
            if patterns and skip != field and "*" not in patterns:
                checks.append((field, _attr_check(attr, compile_globs(patterns))))
        self._checks = tuple(checks)

    def __call__(self, identity: ContainerIdentity) -> bool:
        # A plain loop: measurably faster than all() over a generator here.
        for _, check in self._checks:  # noqa: SIM110
            if not check(identity):
                return False
        return True

    def mismatch(self, identity: ContainerIdentity) -> str | None:
        """The first selector field the identity fails, described; None if it matches."""
        for field, check in self._checks:
            if not check(identity):
                return _describe_patterns(field, getattr(self.selector, field))
        return None


def _attr_check(attr: str, match: StrMatch) -> Callable[[ContainerIdentity], bool]:
    return lambda c: match(getattr(c, attr))


class HostMatch:
    """A compiled :class:`HostSelector`."""

    __slots__ = ("_hosts", "_labels", "selector")

    def __init__(self, selector: HostSelector) -> None:
        self.selector = selector
        self._hosts = compile_globs(selector.hosts) if selector.hosts else None
        self._labels = LabelMatch(selector.labels) if selector.labels else None

    def __call__(self, host: HostIdentity) -> bool:
        return self.mismatch(host) is None

    def mismatch(self, host: HostIdentity) -> str | None:
        if self._hosts is not None and not self._hosts(host.name):
            return _describe_patterns("hosts", self.selector.hosts)
        if self._labels is not None and not self._labels(host.labels):
            return _describe_patterns("labels", self.selector.labels)
        return None


def parse_address(address: str | None) -> IpAddress | None:
    """An endpoint address as an IP address; None when absent or not an address."""
    if not address:
        return None
    try:
        return ipaddress.ip_address(address)
    except ValueError:
        return None


class SubnetMatch:
    """A compiled :class:`SubnetObject`: address in any of its CIDRs."""

    __slots__ = ("networks",)

    def __init__(self, obj: SubnetObject) -> None:
        self.networks: tuple[IpNetwork, ...] = obj.networks()

    def __call__(self, address: str | None) -> bool:
        ip = parse_address(address)
        return ip is not None and any(ip in net for net in self.networks)


def normalise_domain(name: str) -> str:
    """A DNS name as compared: lower case, without the root's trailing dot."""
    return name.strip().lower().rstrip(".")


def domain_matches(pattern: str, name: str) -> bool:
    """``pattern`` (normalised, maybe ``*.x``) against a normalised name."""
    if pattern.startswith("*."):
        return name.endswith(pattern[1:]) and len(name) > len(pattern) - 1
    return name == pattern


class DnsMatch:
    """A compiled :class:`DnsObject`: any name equals or lies below a wildcard."""

    __slots__ = ("_exact", "_suffixes")

    def __init__(self, obj: DnsObject) -> None:
        self._exact = frozenset(d for d in obj.domains if not d.startswith("*."))
        self._suffixes = tuple(d[1:] for d in obj.domains if d.startswith("*."))

    def __call__(self, domains: Iterable[str]) -> bool:
        for raw in domains:
            name = normalise_domain(raw)
            if name in self._exact:
                return True
            for suffix in self._suffixes:
                if name.endswith(suffix) and len(name) > len(suffix):
                    return True
        return False


class ObjectMatch:
    """Any network object, compiled, matched against an :class:`Endpoint`.

    Which part of the endpoint an object looks at follows from its kind: a
    container object looks at ``endpoint.container``, a host object at
    ``endpoint.host``, a subnet at ``endpoint.address``, a DNS object at
    ``endpoint.domains``."""

    __slots__ = ("_container", "_dns", "_host", "_subnet", "obj")

    def __init__(self, obj: ContainerObject | HostObject | SubnetObject | DnsObject) -> None:
        self.obj = obj
        self._container = ContainerMatch(obj.selector) if isinstance(obj, ContainerObject) else None
        self._host = HostMatch(obj.selector) if isinstance(obj, HostObject) else None
        self._subnet = SubnetMatch(obj) if isinstance(obj, SubnetObject) else None
        self._dns = DnsMatch(obj) if isinstance(obj, DnsObject) else None

    def __call__(self, endpoint: Endpoint) -> bool:
        if self._container is not None:
            return endpoint.container is not None and self._container(endpoint.container)
        if self._host is not None:
            return endpoint.host is not None and self._host(endpoint.host)
        if self._subnet is not None:
            return self._subnet(endpoint.address)
        assert self._dns is not None
        return self._dns(endpoint.domains)

    def mismatch(self, endpoint: Endpoint) -> str | None:
        """Why the endpoint does not match (the failing selector field, or what
        the endpoint lacks); None when it matches."""
        if self._container is not None:
            if endpoint.container is None:
                return "not a container"
            return self._container.mismatch(endpoint.container)
        if self._host is not None:
            if endpoint.host is None:
                return "not a host"
            return self._host.mismatch(endpoint.host)
        if self._subnet is not None:
            if self._subnet(endpoint.address):
                return None
            cidrs = ", ".join(str(n) for n in self._subnet.networks)
            if parse_address(endpoint.address) is None:
                return f"no address to test against {cidrs}"
            return f"address {endpoint.address} not in {cidrs}"
        assert self._dns is not None
        if self._dns(endpoint.domains):
            return None
        assert isinstance(self.obj, DnsObject)
        domains = ", ".join(self.obj.domains)
        if not endpoint.domains:
            return f"no DNS name known to test against {domains}"
        return f"names not under {domains}"


def describe_endpoint(endpoint: Endpoint) -> str:
    """A short human name for an endpoint (image, host name, names, address)."""
    if endpoint.container is not None:
        return endpoint.container.image
    if endpoint.host is not None:
        return f"host {endpoint.host.name}"
    if endpoint.domains:
        names = "/".join(endpoint.domains)
        return f"{names} ({endpoint.address})" if endpoint.address else names
    return endpoint.address or "(no address)"
