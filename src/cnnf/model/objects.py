"""Network objects: the identities rules are written between.

- ``container``: a selector over container identities;
- ``host``: a selector over host identities;
- ``subnet``: IPv4 and IPv6 CIDRs;
- ``dns``: domain names and ``*.`` wildcards.

Selector semantics: within one field, any pattern may match (OR); across the
fields that are set, all must match (AND); an unset (empty) field does not
constrain. A selector with every field empty is refused: write ``images: ["*"]``
to mean any container.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    ConfigDict,
    Field,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from cnnf.model.rule import PolicyModel

# An object's name is one path segment of its URL (``/objects/{name}``), sent
# percent-encoded: any character goes, ``/`` included, but a name of only "." or
# ".." would be read as a dot segment by every URL parser (encoded or not) and
# reach another route, so those two are refused.
DOT_SEGMENTS = (".", "..")


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot name an object, or None (the one wording of the rule)."""
    if name in DOT_SEGMENTS:
        return f"{name!r} cannot be a name (it reads as a path step in URLs)"
    return None


def _not_a_dot_segment(name: str) -> str:
    problem = name_problem(name)
    if problem:
        raise ValueError(problem)
    return name


ObjectName = Annotated[
    str,
    Field(min_length=1, max_length=200, json_schema_extra={"not": {"enum": list(DOT_SEGMENTS)}}),
    AfterValidator(_not_a_dot_segment),
]

_GLOB_CHARS = frozenset("*?[")

# The syntax of each kind of pattern, as one regular expression the validators below
# apply and the published JSON Schema states (``pattern``), so that what the schema
# admits and what the API accepts are the same strings.
# Whitespace spelt out (what str.isspace() calls whitespace), not ``\s``: regular
# expression engines (Python's, ECMA's, hypothesis's generator) disagree on ``\s``.
WS = r"\t-\r\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
#: A glob: not empty, no whitespace, a ``[`` closed by a later ``]``.
GLOB_PATTERN = rf"^(?:[^{WS}\[]+|[^{WS}\[]*\[[^{WS}]*\][^{WS}]*)$"
#: ``key=value`` globs: the key (no ``=``) and the value are globs.
LABEL_GLOB_PATTERN = (rf"^(?:[^{WS}\[=]+|[^{WS}\[=]*\[[^{WS}=]*\][^{WS}=]*)"
                      rf"=(?:[^{WS}\[]+|[^{WS}\[]*\[[^{WS}]*\][^{WS}]*)$")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
#: A domain name, or ``*.`` and a domain name; an optional root dot.
DOMAIN_PATTERN = rf"^(?:\*\.)?{_LABEL}(?:\.{_LABEL})*\.?$"
DOMAIN_MAX_LENGTH = 253
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4 = rf"{_OCTET}(?:\.{_OCTET}){{3}}(?:/(?:3[0-2]|[12]?[0-9]))?"
_H = r"[0-9A-Fa-f]{1,4}"
_IPV6 = ("(?:" + "|".join([
    rf"(?:{_H}:){{7}}{_H}",
    rf"(?:{_H}:){{1,7}}:",
    *(rf"(?:{_H}:){{1,{n}}}(?::{_H}){{1,{7 - n}}}" for n in range(6, 0, -1)),
    rf":(?:(?::{_H}){{1,7}}|:)",
]) + r")(?:/(?:12[0-8]|1[01][0-9]|[1-9]?[0-9]))?")
#: An IPv4 CIDR (or address) in dotted decimal, an IPv6 CIDR (or address) in hex.
CIDR_PATTERN = rf"^(?:{_IPV4}|{_IPV6})$"

_GLOB = re.compile(GLOB_PATTERN)
_DOMAIN = re.compile(DOMAIN_PATTERN)
_CIDR = re.compile(CIDR_PATTERN)


class ObjectKind(StrEnum):
    CONTAINER = "container"
    HOST = "host"
    SUBNET = "subnet"
    DNS = "dns"


def check_glob(pattern: str) -> str:
    """Refuse globs fnmatch would read in a surprising way (empty, unclosed ``[``)."""
    if not pattern:
        raise ValueError("empty pattern")
    if any(ch.isspace() for ch in pattern):
        raise ValueError(f"malformed glob {pattern!r}: contains whitespace")
    if not _GLOB.match(pattern):
        raise ValueError(f"malformed glob {pattern!r}: '[' without ']'")
    return pattern


def check_label_glob(pattern: str) -> str:
    key, sep, value = pattern.partition("=")
    if not sep or not key:
        raise ValueError(f"label pattern {pattern!r} is not key=value")
    check_glob(key)
    check_glob(value)
    return pattern


def is_glob(pattern: str) -> bool:
    return any(ch in _GLOB_CHARS for ch in pattern)


GlobList = tuple[Annotated[str, WithJsonSchema({"type": "string", "pattern": GLOB_PATTERN})], ...]
LabelGlobList = tuple[
    Annotated[str, WithJsonSchema({"type": "string", "pattern": LABEL_GLOB_PATTERN})], ...]


def _one_field_set(*fields: str) -> Callable[[dict[str, Any]], None]:
    """The schema of a selector states what its validator checks: some field is set."""
    def extra(schema: dict[str, Any]) -> None:
        schema["anyOf"] = [{"required": [f], "properties": {f: {"minItems": 1}}}
                           for f in fields]
    return extra


def check_each(values: tuple[str, ...], check: Callable[[str], str]) -> tuple[str, ...]:
    """Apply ``check`` to every item; one error naming every bad item, not just the first."""
    out: list[str] = []
    problems: list[str] = []
    for value in values:
        try:
            out.append(check(value))
        except ValueError as exc:
            problems.append(str(exc))
    if problems:
        raise ValueError("; ".join(problems))
    return tuple(out)


def _globs(values: tuple[str, ...]) -> tuple[str, ...]:
    return check_each(values, check_glob)


class ContainerSelector(PolicyModel):
    model_config = ConfigDict(json_schema_extra=_one_field_set(
        "images", "labels", "namespaces", "containers", "hosts", "clusters"))

    images: GlobList = ()  # image name globs, matched against "name:tag" and "name"
    labels: LabelGlobList = ()  # "key=value" globs
    namespaces: GlobList = ()
    containers: GlobList = ()
    hosts: GlobList = ()
    clusters: GlobList = ()

    @field_validator("images", "namespaces", "containers", "hosts", "clusters")
    @classmethod
    def _v_globs(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return _globs(v)

    @field_validator("labels")
    @classmethod
    def _v_labels(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return check_each(v, check_label_glob)

    @model_validator(mode="after")
    def _not_empty(self) -> ContainerSelector:
        if not any(
            (self.images, self.labels, self.namespaces, self.containers, self.hosts, self.clusters)
        ):
            raise ValueError('empty selector: set at least one field (images: ["*"] means any)')
        return self


class HostSelector(PolicyModel):
    model_config = ConfigDict(json_schema_extra=_one_field_set("hosts", "labels"))

    hosts: GlobList = ()  # host name globs
    labels: LabelGlobList = ()  # "key=value" globs

    @field_validator("hosts")
    @classmethod
    def _v_hosts(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return _globs(v)

    @field_validator("labels")
    @classmethod
    def _v_labels(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return check_each(v, check_label_glob)

    @model_validator(mode="after")
    def _not_empty(self) -> HostSelector:
        if not (self.hosts or self.labels):
            raise ValueError('empty selector: set hosts or labels (hosts: ["*"] means any)')
        return self


def _kind_required(schema: dict[str, Any]) -> None:
    # ``kind`` has a default for Python callers, but a document must say it: it
    # picks the variant (pydantic refuses an object without it).
    required = schema.setdefault("required", [])
    if "kind" not in required:
        required.insert(0, "kind")


class _ObjectBase(PolicyModel):
    model_config = ConfigDict(json_schema_extra=_kind_required)

    name: ObjectName
    description: str = ""


class ContainerObject(_ObjectBase):
    kind: Literal[ObjectKind.CONTAINER] = ObjectKind.CONTAINER
    selector: ContainerSelector


class HostObject(_ObjectBase):
    kind: Literal[ObjectKind.HOST] = ObjectKind.HOST
    selector: HostSelector


class SubnetObject(_ObjectBase):
    kind: Literal[ObjectKind.SUBNET] = ObjectKind.SUBNET
    cidrs: Annotated[tuple[Annotated[str, WithJsonSchema(
        {"type": "string", "pattern": CIDR_PATTERN})], ...], Field(min_length=1)]

    @field_validator("cidrs")
    @classmethod
    def _v_cidrs(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return check_each(v, normalise_cidr)

    def networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        return tuple(ipaddress.ip_network(c) for c in self.cidrs)


class DnsObject(_ObjectBase):
    kind: Literal[ObjectKind.DNS] = ObjectKind.DNS
    domains: Annotated[tuple[Annotated[str, WithJsonSchema(
        {"type": "string", "pattern": DOMAIN_PATTERN, "maxLength": DOMAIN_MAX_LENGTH})], ...],
        Field(min_length=1)]

    @field_validator("domains")
    @classmethod
    def _v_domains(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return check_each(v, normalise_domain_pattern)


def normalise_cidr(cidr: str) -> str:
    """A CIDR in canonical form (host bits cleared: ``10.1.2.3/8`` -> ``10.0.0.0/8``)."""
    try:
        if not _CIDR.match(cidr):
            raise ValueError
        return str(ipaddress.ip_network(cidr, strict=False))
    except ValueError:
        raise ValueError(f"{cidr!r} is not an IPv4 or IPv6 CIDR") from None


def normalise_domain_pattern(domain: str) -> str:
    """Check the syntax (:data:`DOMAIN_PATTERN`); lower-case, strip the root dot."""
    if not _DOMAIN.match(domain):
        raise ValueError(f"{domain!r} is not a domain name or a *.domain wildcard")
    if len(domain) > DOMAIN_MAX_LENGTH:
        raise ValueError(f"{domain!r} is longer than {DOMAIN_MAX_LENGTH} characters")
    return domain.lower().removesuffix(".")


NetworkObject = Annotated[
    ContainerObject | HostObject | SubnetObject | DnsObject, Field(discriminator="kind")
]
