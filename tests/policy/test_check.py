"""check_policy: cross-references, unique ids and names, allowed object kinds."""

from __future__ import annotations

from typing import Any

import pytest

from cnnf.errors import FieldError
from cnnf.model import Policy
from cnnf.policy.check import check_policy

OBJECTS: list[dict[str, Any]] = [
    {"kind": "container", "name": "api", "selector": {"images": ["shop/api"]}},
    {"kind": "container", "name": "db", "selector": {"images": ["shop/db"]}},
    {"kind": "host", "name": "nodes", "selector": {"hosts": ["node-*"]}},
    {"kind": "subnet", "name": "net", "cidrs": ["10.0.0.0/8"]},
    {"kind": "dns", "name": "partner", "domains": ["api.partner.example"]},
]


def _policy(container_rules: list[dict[str, Any]] = (), host_rules: list[dict[str, Any]] = (),
            objects: list[dict[str, Any]] = OBJECTS) -> Policy:  # type: ignore[assignment]
    return Policy.model_validate({"objects": list(objects), "containerRules": list(container_rules),
                                  "hostRules": list(host_rules)})


def _rule(rid: int, src: str, dst: str, name: str | None = None) -> dict[str, Any]:
    return {"id": rid, "name": name or f"r{rid}", "src": src, "dst": dst}


@pytest.mark.parametrize(
    ("container_rules", "host_rules"),
    [
        ([_rule(1, "api", "db"), _rule(2, "api", "net"), _rule(3, "api", "partner")], []),
        ([], [_rule(1, "nodes", "nodes"), _rule(2, "nodes", "net")]),
        # ids and names are unique per list: the same id in both lists is fine
        ([_rule(1, "api", "db")], [_rule(1, "nodes", "net")]),
        ([], []),
    ],
)
def test_valid(container_rules: list[dict[str, Any]], host_rules: list[dict[str, Any]]) -> None:
    assert check_policy(_policy(container_rules, host_rules)) == []


@pytest.mark.parametrize(
    ("container_rules", "host_rules", "expected"),
    [
        ([_rule(1, "api", "nope")], [],
         [FieldError("containerRules[0].dst", "no object named 'nope'")]),
        ([_rule(1, "ghost", "db")], [],
         [FieldError("containerRules[0].src", "no object named 'ghost'")]),
        ([_rule(1, "nodes", "db")], [],
         [FieldError("containerRules[0].src", "'nodes' is a host object; a container rule's "
                                              "source must be a container object")]),
        ([_rule(1, "api", "nodes")], [],
         [FieldError("containerRules[0].dst", "'nodes' is a host object; a container rule's "
                     "destination must be a container, dns or subnet object")]),
        ([], [_rule(1, "api", "nodes")],
         [FieldError("hostRules[0].src", "'api' is a container object; a host rule's source "
                                         "must be a host object")]),
        ([], [_rule(1, "nodes", "partner")],
         [FieldError("hostRules[0].dst", "'partner' is a dns object; a host rule's destination "
                                         "must be a host or subnet object")]),
        ([_rule(1, "api", "db"), _rule(2, "api", "net"), _rule(1, "api", "partner", "r3")], [],
         [FieldError("containerRules[2].id", "duplicate rule id 1 (first used by "
                                             "containerRules[0])")]),
        ([_rule(1, "api", "db", "same"), _rule(2, "api", "net", "same")], [],
         [FieldError("containerRules[1].name", "duplicate rule name 'same' (first used by "
                                               "containerRules[0])")]),
    ],
)
def test_errors(container_rules: list[dict[str, Any]], host_rules: list[dict[str, Any]],
                expected: list[FieldError]) -> None:
    assert check_policy(_policy(container_rules, host_rules)) == expected


def test_duplicate_object_names_and_every_error_reported() -> None:
    objects = [*OBJECTS, {"kind": "subnet", "name": "api", "cidrs": ["::/0"]}]
    policy = _policy([_rule(1, "x", "y"), _rule(1, "api", "db", "other")], [], objects)
    assert [str(e) for e in check_policy(policy)] == [
        "objects[5].name: duplicate object name 'api' (first used by objects[0])",
        "containerRules[0].src: no object named 'x'",
        "containerRules[0].dst: no object named 'y'",
        "containerRules[1].id: duplicate rule id 1 (first used by containerRules[0])",
    ]
