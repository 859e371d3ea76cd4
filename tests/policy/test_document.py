"""The native document: loading with every error named, deterministic dumps, schema."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cnnf.errors import PolicyValidationError
from cnnf.model import Effect, Policy
from cnnf.policy.document import (
    dump_policy,
    load_policy,
    policy_document,
    policy_json_schema,
    schema_text,
)
from tests.policy.strategies import policies

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "shop-policy.yaml"
SCHEMA_FILE = ROOT / "src" / "cnnf" / "policy" / "schema" / "policy-v1.json"


def _doc(spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "cnnf/v1", "kind": "Policy", "spec": spec}


GOOD_SPEC: dict[str, Any] = {
    "containerEnabled": True,
    "objects": [
        {"kind": "container", "name": "api", "selector": {"images": ["shop/api"]}},
        {"kind": "container", "name": "db", "selector": {"images": ["shop/db"]}},
        {"kind": "subnet", "name": "net", "cidrs": ["10.0.0.0/8", "fd00::/8"]},
    ],
    "containerRules": [
        {"id": 1, "name": "api-db", "src": "api", "dst": "db", "ports": [5432]},
        {"id": 2, "name": "api-net", "src": "api", "dst": "net", "ports": ["8000-8080", 443],
         "effect": "prevent", "modified": "2024-05-01T12:00:00Z"},
        {"id": 3, "name": "db-any", "src": "db", "dst": "db", "ports": "*"},
    ],
}


def _with(path: str, value: Any) -> dict[str, Any]:
    """GOOD_SPEC with the value at a dotted path (list indexes as numbers) replaced."""
    spec = copy.deepcopy(GOOD_SPEC)
    node: Any = spec
    *head, last = path.split(".")
    for part in head:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return spec


def _errors(data: Any) -> list[str]:
    with pytest.raises(PolicyValidationError) as info:
        load_policy(data)
    return [str(e) for e in info.value.errors]


def test_good_document_loads_from_dict_json_and_yaml() -> None:
    doc = _doc(GOOD_SPEC)
    policy = load_policy(doc)
    assert policy.container_enabled and len(policy.container_rules) == 3
    assert policy.container_rules[1].effect is Effect.PREVENT
    assert load_policy(json.dumps(doc)) == policy
    assert load_policy(yaml.safe_dump(doc)) == policy
    assert load_policy(json.dumps(doc).encode()) == policy


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (_with("containerRules.0.ports", [{"start": 80, "end": 70000}]),
         "containerRules[0].ports[0].end: 70000 is above 65535"),
        (_with("containerRules.0.ports", [70000]),
         "containerRules[0].ports[0]: 70000 is above 65535"),
        (_with("containerRules.0.ports", [0]), "containerRules[0].ports[0]: 0 is below 1"),
        (_with("containerRules.0.ports", ["90-80"]),
         "containerRules[0].ports[0]: range start 90 is above end 80"),
        (_with("containerRules.0.ports", ["http"]),
         "containerRules[0].ports[0]: 'http' is not a port, a range like 8000-8080, or *"),
        (_with("containerRules.0.ports", []),
         "containerRules[0].ports: a rule needs at least one port, a range, or *"),
        (_with("objects.2.cidrs", ["10.0.0.0/33"]),
         "objects[2].cidrs: '10.0.0.0/33' is not an IPv4 or IPv6 CIDR"),
        (_with("objects.2.cidrs", []), "objects[2].cidrs: must not be empty"),
        # every bad item of a list is named, not only the first
        (_with("objects.2.cidrs", ["10.0.0.0/8", "10.0.0.0/33", "fe80::/129"]),
         "objects[2].cidrs: '10.0.0.0/33' is not an IPv4 or IPv6 CIDR; "
         "'fe80::/129' is not an IPv4 or IPv6 CIDR"),
        (_with("objects.0.selector", {"images": ["a[", "ok", "b c"]}),
         "objects[0].selector.images: malformed glob 'a[': '[' without ']'; "
         "malformed glob 'b c': contains whitespace"),
        (_with("objects.0.selector", {"labels": ["x", "a=b", "=y"]}),
         "objects[0].selector.labels: label pattern 'x' is not key=value; "
         "label pattern '=y' is not key=value"),
        (_with("objects.2", {"kind": "dns", "name": "net", "domains": ["a_b", "ok.example", "-x"]}),
         "objects[2].domains: 'a_b' is not a domain name or a *.domain wildcard; "
         "'-x' is not a domain name or a *.domain wildcard"),
        (_with("objects.0.selector", {}),
         'objects[0].selector: empty selector: set at least one field (images: ["*"] means any)'),
        (_with("objects.0.selector", {"images": ["shop/[api"]}),
         "objects[0].selector.images: malformed glob 'shop/[api': '[' without ']'"),
        (_with("objects.0.selector", {"labels": ["app"]}),
         "objects[0].selector.labels: label pattern 'app' is not key=value"),
        (_with("objects.0.selector", {"imagez": ["x"]}),
         "objects[0].selector.imagez: unknown field (value [\"x\"])"),
        (_with("objects.0.kind", "pod"),
         "objects[0]: kind 'pod' is not one of container, host, subnet, dns"),
        (_with("objects.0", {"name": "api", "selector": {"images": ["x"]}}),
         "objects[0].kind: missing kind (one of container, host, subnet, dns)"),
        (_with("objects.2", {"kind": "dns", "name": "net", "domains": ["bad_name!"]}),
         "objects[2].domains: 'bad_name!' is not a domain name or a *.domain wildcard"),
        (_with("containerRules.0.effect", "deny"),
         "containerRules[0].effect: 'deny' is not one of 'allow', 'alert' or 'prevent'"),
        (_with("containerRules.0.id", "one"), "containerRules[0].id: 'one' is not an integer"),
        (_with("containerRules.0.name", ""), "containerRules[0].name: must not be empty"),
        (_with("containerRules.0.modified", "yesterday"),
         "containerRules[0].modified: 'yesterday' is not a date-time "
         "(ISO 8601, like 2024-05-01T12:00:00Z)"),
        (_with("containerEnabled", "maybe"), "containerEnabled: 'maybe' is not true or false"),
        (_with("revision", -1), "revision: -1 is below 0"),
        (_with("objects", {"a": 1}), "objects: {\"a\": 1} is not a list"),
        # cross references are checked once the fields are valid
        (_with("containerRules.0.dst", "nope"), "containerRules[0].dst: no object named 'nope'"),
        (_with("containerRules.1.src", "net"),
         "containerRules[1].src: 'net' is a subnet object; a container rule's source must be "
         "a container object"),
        (_with("containerRules.1.id", 1),
         "containerRules[1].id: duplicate rule id 1 (first used by containerRules[0])"),
        (_with("containerRules.1.name", "api-db"),
         "containerRules[1].name: duplicate rule name 'api-db' (first used by containerRules[0])"),
    ],
)
def test_bad_spec_names_path_and_value(spec: dict[str, Any], expected: str) -> None:
    assert _errors(_doc(spec)) == [expected]


def test_every_error_is_reported_at_once() -> None:
    spec = _with("containerRules.0.ports", [70000])
    spec["objects"][2]["cidrs"] = ["nope"]
    spec["containerRules"][1]["effect"] = "deny"
    assert _errors(_doc(spec)) == [
        "objects[2].cidrs: 'nope' is not an IPv4 or IPv6 CIDR",
        "containerRules[0].ports[0]: 70000 is above 65535",
        "containerRules[1].effect: 'deny' is not one of 'allow', 'alert' or 'prevent'",
    ]


def test_reference_errors_are_reported_with_field_errors() -> None:
    spec = _with("containerRules.0.ports", [70000])
    spec["containerRules"][1]["dst"] = "nowhere"
    spec["containerRules"][2]["src"] = "net"
    spec["objects"].append({"kind": "host", "name": "nodes", "selector": {}})
    spec["hostRules"] = [{"id": 1, "name": "h", "src": "nodes", "dst": "api"}]
    assert _errors(_doc(spec)) == [
        'objects[3].selector: empty selector: set hosts or labels (hosts: ["*"] means any)',
        "containerRules[0].ports[0]: 70000 is above 65535",
        "containerRules[1].dst: no object named 'nowhere'",
        "containerRules[2].src: 'net' is a subnet object; a container rule's source must be "
        "a container object",
        "hostRules[0].dst: 'api' is a container object; a host rule's destination must be a "
        "host or subnet object",
    ]


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"apiVersion": "cnnf/v2", "kind": "Policy", "spec": {}},
         ["apiVersion: 'cnnf/v2' is not supported (expected 'cnnf/v1')"]),
        ({"apiVersion": "cnnf/v1", "kind": "Topology", "spec": {}},
         ["kind: 'Topology' is not a policy document (expected 'Policy')"]),
        ({"kind": "Policy", "spec": {}}, ["apiVersion: required field is missing (use cnnf/v1)"]),
        ({"apiVersion": "cnnf/v1", "kind": "Policy"}, ["spec: required field is missing"]),
        ({"apiVersion": "cnnf/v1", "kind": "Policy", "spec": [1]}, ["spec: [1] is not a mapping"]),
        ({"apiVersion": "cnnf/v1", "kind": "Policy", "spec": {}, "extra": 1},
         ["extra: unknown field (a document has apiVersion, kind and spec)"]),
        ("[1, 2]", ["a policy document is a mapping with apiVersion, kind and spec; "
                    "got list [1, 2]"]),
        ("just text", ["a policy document is a mapping with apiVersion, kind and spec; "
                       "got str 'just text'"]),
        ("", ["the document is empty (a policy document is a mapping with apiVersion, kind "
              "and spec)"]),
        ("# only a comment\n", ["the document is empty (a policy document is a mapping with "
                                "apiVersion, kind and spec)"]),
        ('{"apiVersion": "cnnf/v1",', ["invalid JSON at line 1 column 26: Expecting property "
                                       "name enclosed in double quotes"]),
        ('{"kind": "Policy", "kind": "Policy"}', ["invalid JSON: duplicate key 'kind'"]),
        (b"\xff\xfe", ["not UTF-8 text (byte 0)"]),
        ({"_id": "networkFirewall", "containerRules": []},
         ["this is the original product's export format (_id: networkFirewall); convert it "
          "with `cnnf policy convert FILE --to native`"]),
    ],
)
def test_bad_envelope(data: Any, expected: list[str]) -> None:
    assert _errors(data) == expected


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("a: &x [1, 2]\nb: *x\n", "YAML aliases (*name) are not allowed"),
        ("apiVersion: cnnf/v1\napiVersion: cnnf/v1\n", "duplicate key 'apiVersion'"),
        ("a: [1, 2\n", "invalid YAML"),
        ("a: !!python/object:os.system x\n", "invalid YAML"),
    ],
)
def test_bad_yaml(text: str, needle: str) -> None:
    (error,) = _errors(text)
    assert needle in error


def test_yaml_bomb_is_refused_quickly() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
    (error,) = _errors("\n".join(lines) + "\n")
    assert "aliases" in error


def test_dump_is_deterministic_and_round_trips() -> None:
    policy = load_policy(EXAMPLE.read_text())
    for fmt in ("json", "yaml"):
        text = dump_policy(policy, fmt)  # type: ignore[arg-type]
        assert load_policy(text) == policy
        assert dump_policy(load_policy(text), fmt) == text  # type: ignore[arg-type]
    doc = policy_document(policy)
    assert list(doc) == ["apiVersion", "kind", "spec"]
    assert list(doc["spec"])[:4] == ["containerEnabled", "hostEnabled", "defaultEffect",
                                     "blockMode"]
    # empty values are always left out; ports are written in their short forms
    assert doc["spec"]["objects"][0] == {
        "name": "frontend", "kind": "container",
        "selector": {"images": ["shop/frontend"], "namespaces": ["shop-web"]},
    }
    rule = doc["spec"]["containerRules"][7]
    assert rule["ports"] == ["*"] and "notes" not in rule and "modified" not in rule


def test_dump_refuses_unknown_format() -> None:
    with pytest.raises(ValueError, match="unknown format"):
        dump_policy(Policy(), "toml")  # type: ignore[arg-type]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policies())
def test_export_then_import_gives_the_same_policy(policy: Policy) -> None:
    for fmt in ("json", "yaml"):
        text = dump_policy(policy, fmt)  # type: ignore[arg-type]
        again = load_policy(text)
        assert again == policy
        assert dump_policy(again, fmt) == text  # type: ignore[arg-type]


# --- random input never crashes the loader --------------------------------------

JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=True)
    | st.text(max_size=10) | st.sampled_from(["*", "80", "1-2", "container", "dns", "cnnf/v1",
                                             "Policy", "10.0.0.0/8", "a=b", "allow"]),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.sampled_from(["kind", "name", "selector", "images", "labels", "cidrs",
                                       "domains", "id", "src", "dst", "ports", "start", "end",
                                       "effect", "objects", "containerRules", "hostRules",
                                       "spec", "x"]) | st.text(max_size=5), children,
                      max_size=4),
    max_leaves=20,
)


def _accepted_or_rejected(data: Any) -> None:
    try:
        load_policy(data)
    except PolicyValidationError as exc:
        assert exc.errors, "a rejection names at least one error"


@settings(max_examples=200, deadline=None)
@given(JSONISH)
def test_random_documents_never_crash(tree: Any) -> None:
    _accepted_or_rejected(tree)
    _accepted_or_rejected(_doc(tree) if isinstance(tree, dict) else {"spec": tree})
    _accepted_or_rejected({"apiVersion": "cnnf/v1", "kind": "Policy", "spec": {"objects": tree}})


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=80) | st.binary(max_size=40))
def test_random_text_never_crashes(text: str | bytes) -> None:
    _accepted_or_rejected(text)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out.extend(_paths(v, (*prefix, k)))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out.extend(_paths(v, (*prefix, i)))
    return out


def mutate(doc: Any, data: st.DataObject) -> None:
    """Delete or replace (with random JSON) one drawn place of ``doc``, in place."""
    path = data.draw(st.sampled_from([p for p in _paths(doc) if p]))
    node = doc
    for part in path[:-1]:
        node = node[part]
    if data.draw(st.booleans()) and isinstance(node, dict):
        del node[path[-1]]
    else:
        node[path[-1]] = data.draw(JSONISH)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policies(max_rules=6), st.data())
def test_mutated_valid_documents_never_crash(policy: Policy, data: st.DataObject) -> None:
    doc = json.loads(dump_policy(policy))
    mutate(doc, data)
    _accepted_or_rejected(doc)


# --- the JSON Schema ---------------------------------------------------------------


def test_shipped_schema_is_up_to_date() -> None:
    assert SCHEMA_FILE.read_text() == schema_text(), (
        "regenerate with: cnnf policy schema > src/cnnf/policy/schema/policy-v1.json")


def test_examples_validate_against_the_schema() -> None:
    schema = policy_json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    raw = yaml.safe_load(EXAMPLE.read_text())
    validator.validate(raw)
    validator.validate(json.loads(dump_policy(load_policy(raw))))
    validator.validate(_doc(GOOD_SPEC))


@pytest.mark.parametrize(
    "spec",
    [
        _with("containerRules.0.ports", [70000]),
        _with("containerRules.0.effect", "deny"),
        _with("objects.0.kind", "pod"),
        _with("objects.0.selector", {"imagez": ["x"]}),
    ],
)
def test_schema_rejects_what_the_loader_rejects(spec: dict[str, Any]) -> None:
    validator = jsonschema.Draft202012Validator(policy_json_schema())
    assert not validator.is_valid(_doc(spec))
    with pytest.raises(PolicyValidationError):
        load_policy(_doc(spec))


# The schema of the native document as shipped before staging (the commit before
# a rule's `staged` and the policy's `stagedDefaultEffect`): what a Defender of
# that release accepts; its model refuses any field it does not know.
BEFORE_STAGING = json.loads(
    (Path(__file__).parent / "data" / "policy-v1-before-staging.json").read_text())


def _keys(value: Any) -> set[str]:
    if isinstance(value, dict):
        return set(value).union(*(_keys(v) for v in value.values()))
    if isinstance(value, list):
        return set().union(*(_keys(v) for v in value))
    return set()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policies())
def test_a_document_with_nothing_staged_is_what_a_defender_before_staging_accepts(
        policy: Policy) -> None:
    """The Console serves its Defenders policy_document(policy): with nothing
    staged it has no `staged` nor `stagedDefaultEffect` anywhere, so Defenders not
    yet upgraded keep taking new policy (they refused every one, keeping a stale one)."""
    plain = policy.in_force()  # everything staged promoted: nothing staged
    doc = policy_document(plain)
    assert not _keys(doc) & {"staged", "stagedDefaultEffect"}
    jsonschema.validate(doc, BEFORE_STAGING)
    assert load_policy(json.dumps(doc)) == plain
    assert '"staged"' not in dump_policy(plain, "json")


def test_what_is_staged_is_still_written_and_refused_by_a_defender_before_staging() -> None:
    spec = copy.deepcopy(GOOD_SPEC)
    spec["containerRules"][0]["staged"] = True
    spec["stagedDefaultEffect"] = "prevent"
    policy = load_policy(json.dumps(_doc(spec)))
    doc = policy_document(policy)
    assert doc["spec"]["containerRules"][0]["staged"] is True
    assert doc["spec"]["stagedDefaultEffect"] == "prevent"
    assert [r.get("staged") for r in doc["spec"]["containerRules"][1:]] == [None] * (
        len(doc["spec"]["containerRules"]) - 1)
    assert load_policy(json.dumps(doc)) == policy
    with pytest.raises(jsonschema.ValidationError, match="staged"):
        jsonschema.validate(doc, BEFORE_STAGING)
