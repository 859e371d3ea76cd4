"""The syntax of globs, label globs, domains and CIDRs: the published schema's
``pattern`` and the validators accept exactly the same strings."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cnnf.model.objects import (
    CIDR_PATTERN,
    DOMAIN_PATTERN,
    GLOB_PATTERN,
    LABEL_GLOB_PATTERN,
    ContainerObject,
    check_glob,
    check_label_glob,
    normalise_cidr,
    normalise_domain_pattern,
)

CHECKS: dict[str, tuple[str, Callable[[str], str]]] = {
    "glob": (GLOB_PATTERN, check_glob),
    "label": (LABEL_GLOB_PATTERN, check_label_glob),
    "domain": (DOMAIN_PATTERN, normalise_domain_pattern),
    "cidr": (CIDR_PATTERN, normalise_cidr),
}


def _accepts(check: Callable[[str], str], text: str) -> bool:
    try:
        check(text)
    except ValueError:
        return False
    return True


@pytest.mark.parametrize("kind", sorted(CHECKS))
@settings(max_examples=100)
@given(data=st.data())
def test_what_the_pattern_admits_is_accepted(kind: str, data: st.DataObject) -> None:
    pattern, check = CHECKS[kind]
    text = data.draw(st.from_regex(pattern, fullmatch=True))
    if kind == "domain" and len(text) > 253:
        return  # the schema's maxLength says so
    assert _accepts(check, text), text


# Near misses, drawn from the characters these syntaxes use: what the validator
# accepts, the pattern admits (so the schema never hides a valid form).
_ALPHABET = st.sampled_from("abAF019:./-*=[]?! \t")


@pytest.mark.parametrize("kind", sorted(CHECKS))
@settings(max_examples=300)
@given(text=st.text(_ALPHABET, max_size=24))
def test_what_is_accepted_the_pattern_admits(kind: str, text: str) -> None:
    pattern, check = CHECKS[kind]
    assert _accepts(check, text) == bool(re.match(pattern, text)), text


@pytest.mark.parametrize("text", [
    "10.0.0.0/8", "10.1.2.3/8", "192.168.1.1", "0.0.0.0/0", "::/0", "::1", "fe80::/10",
    "2001:db8::1:0:0:1/64", "1:2:3:4:5:6:7:8", "1:2:3:4:5:6:7::", "::2:3:4:5:6:7:8",
])
def test_cidr_forms_accepted(text: str) -> None:
    assert normalise_cidr(text) == str(ipaddress.ip_network(text, strict=False))


@pytest.mark.parametrize("text", [
    "", "10.0.0.0/33", "010.0.0.1", "10.0.0.0/255.0.0.0", "1.2.3", "fe80::1%eth0",
    "1::2::3", "12345::", "::/129", " 10.0.0.0/8", "::ffff:1.2.3.4",
])
def test_cidr_forms_refused(text: str) -> None:
    with pytest.raises(ValueError, match="is not an IPv4 or IPv6 CIDR"):
        normalise_cidr(text)


def test_domains_are_normalised() -> None:
    assert normalise_domain_pattern("Api.Example.COM.") == "api.example.com"
    assert normalise_domain_pattern("*.example.com") == "*.example.com"
    for bad in (" example.com", "-a.example.com", "a..b", "*.", "*", "a.*.b", "x_y.com"):
        with pytest.raises(ValueError, match="is not a domain name"):
            normalise_domain_pattern(bad)


def test_selector_schema_requires_a_field_as_the_validator_does() -> None:
    schema = ContainerObject.model_json_schema()["$defs"]["ContainerSelector"]
    fields = {alt["required"][0] for alt in schema["anyOf"]}
    assert fields == set(schema["properties"])
    for alt in schema["anyOf"]:
        assert alt["properties"][alt["required"][0]] == {"minItems": 1}
