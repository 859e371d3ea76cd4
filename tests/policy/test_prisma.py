"""The original product's export format, both ways, with nothing dropped silently."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cnnf.errors import PolicyValidationError
from cnnf.model import (
    BlockMode,
    ContainerObject,
    ContainerSelector,
    DnsObject,
    Effect,
    HostObject,
    HostSelector,
    Policy,
    SubnetObject,
)
from cnnf.policy.document import load_policy
from cnnf.policy.prisma import from_prisma, to_prisma
from tests.policy.strategies import policies
from tests.policy.test_document import mutate

ROOT = Path(__file__).resolve().parents[2]
EXPORT = json.loads((ROOT / "examples" / "prisma-export.json").read_text())
ANY = {"images": ["*"], "hosts": ["*"], "labels": ["*"], "containers": ["*"],
       "namespaces": ["*"], "clusters": ["*"], "appIDs": ["*"], "accountIDs": ["*"],
       "functions": ["*"], "codeRepos": ["*"]}


def _coll(**fields: list[str]) -> dict[str, Any]:
    return {**ANY, **fields}


def _doc(entities: list[dict[str, Any]], rules: list[dict[str, Any]] = (),  # type: ignore[assignment]
         host_rules: list[dict[str, Any]] = (), **extra: Any) -> dict[str, Any]:  # type: ignore[assignment]
    return {"_id": "networkFirewall", "containerEnabled": True, "hostEnabled": False,
            "containerRules": list(rules), "hostRules": list(host_rules),
            "networkEntities": entities, **extra}


def _container(eid: int, name: str, *colls: dict[str, Any]) -> dict[str, Any]:
    return {"_id": eid, "name": name, "type": "container", "collections": list(colls)}


def _rule(rid: int, src: int, dst: int, **extra: Any) -> dict[str, Any]:
    return {"id": rid, "name": f"r{rid}", "src": src, "dst": dst,
            "ports": [{"start": 80, "end": 80, "deny": False}], "effect": "allow", **extra}


def test_example_export_converts() -> None:
    conv = from_prisma(EXPORT)
    policy = conv.result
    assert policy.container_enabled and not policy.host_enabled
    assert [o.name for o in policy.objects] == ["frontend", "api", "db", "web-tier", "internet",
                                                 "partner", "nodes"]
    api = policy.object("api")
    assert isinstance(api, ContainerObject)
    assert api.selector == ContainerSelector(images=("shop/api:*",), labels=("app=api",),
                                             namespaces=("shop-web",))
    assert policy.object("internet") == SubnetObject(name="internet", cidrs=("0.0.0.0/0",))
    # the collection's name is kept, in the object's description
    assert policy.object("nodes") == HostObject(name="nodes", description="collection 'all-nodes'",
                                                selector=HostSelector(hosts=("node-*",)))
    first = policy.container_rules[0]
    assert (first.id, first.name, first.src, first.dst, first.owner) == (
        1, "frontend-to-api", "frontend", "api", "admin")
    assert first.modified is not None and first.modified.year == 2024
    assert [str(p) for p in policy.container_rules[2].ports] == ["80", "443"]
    assert policy.container_rules[2].effect is Effect.PREVENT
    assert policy.container_rules[3].notes == "payment provider"
    kept = "collection name kept in the object's description"
    assert conv.unmapped == [
        f"networkEntities[0].collections[0]: {kept} (collection 'shop-frontend')",
        f"networkEntities[1].collections[0]: {kept} (collection 'shop-api')",
        f"networkEntities[2].collections[0]: {kept} (collection 'shop-db')",
        f"networkEntities[3].collections[0]: {kept} (collection 'shop-web')",
        "networkEntities[4].subnets[0].name: subnet name 'internet-v4' has no native field "
        "(the CIDR 0.0.0.0/0 is kept)",
        f"networkEntities[6].collections[0]: {kept} (collection 'all-nodes')",
    ]


@pytest.mark.parametrize(
    ("collections", "selector", "unmapped"),
    [
        ([_coll()], ContainerSelector(images=("*",)), []),
        ([_coll(images=["shop/*"], labels=["app:api", "tier:*"])],
         ContainerSelector(images=("shop/*",), labels=("app=api", "tier=*")), []),
        # "*" among other patterns matches anything: no constraint
        ([_coll(images=["shop/api", "*"], namespaces=["prod"])],
         ContainerSelector(namespaces=("prod",)), []),
        # collections differing in one field merge exactly
        ([_coll(images=["a"], namespaces=["prod"]), _coll(images=["b"], namespaces=["prod"])],
         ContainerSelector(images=("a", "b"), namespaces=("prod",)), []),
        ([_coll(images=["a"], namespaces=["prod"]), _coll(images=["*"], namespaces=["prod"])],
         ContainerSelector(namespaces=("prod",)), []),
        # differing in two fields: cannot be one selector; the rest is reported
        ([_coll(images=["a"], namespaces=["x"]), _coll(images=["b"], namespaces=["y"])],
         ContainerSelector(images=("a",), namespaces=("x",)),
         ["networkEntities[0].collections[1:]: 1 more collection(s) differ from collections[0] "
          "in more than one field and cannot be one selector; only collections[0] was kept"]),
        ([_coll(images=["a"], appIDs=["app-1"])], ContainerSelector(images=("a",)),
         ['networkEntities[0].collections[0].appIDs: ["app-1"] has no native equivalent; the '
          "selector matches without it"]),
        ([{"name": "All"}], ContainerSelector(images=("*",)),
         ["networkEntities[0].collections[0]: collection name kept in the object's description "
          "(collection 'All')",
          "networkEntities[0].collections[0]: collection 'All' has no pattern fields (a "
          "reference by name?); its patterns are unknown here, so it was read as matching any "
          "workload"]),
        ([{**_coll(images=["a"]), "colour": "red"}], ContainerSelector(images=("a",)),
         ["networkEntities[0].collections[0].colour: unknown collection field (value 'red')"]),
    ],
)
def test_collections_to_selectors(collections: list[dict[str, Any]], selector: ContainerSelector,
                                  unmapped: list[str]) -> None:
    conv = from_prisma(_doc([_container(1, "x", *collections)]))
    assert [o.selector for o in conv.result.objects] == [selector]  # type: ignore[union-attr]
    assert conv.unmapped == unmapped


def test_ports_deny_and_defaults() -> None:
    ents = [_container(1, "a", _coll(images=["a"])), _container(2, "b", _coll(images=["b"]))]
    rules = [
        _rule(1, 1, 2, ports=[{"start": 80, "end": 90, "deny": False},
                              {"start": 22, "end": 22, "deny": True}]),
        _rule(2, 1, 2, ports=[{"start": 22, "end": 22, "deny": True}]),
        _rule(3, 1, 2, ports=[]),
        {"id": 4, "src": 2, "dst": 1, "previousName": "old", "color": "blue"},
    ]
    conv = from_prisma(_doc(ents, rules))
    got = conv.result.container_rules
    assert [(r.id, r.name, [str(p) for p in r.ports]) for r in got] == [
        (1, "r1", ["80-90"]), (3, "r3", ["*"]), (4, "rule-4", ["*"])]
    assert conv.unmapped == [
        "containerRules[3].name: missing; named 'rule-4'",
        "containerRules[0].ports[1]: deny: true port ranges have no native equivalent; "
        '{"start": 22, "end": 22, "deny": true} was left out',
        "containerRules[1].ports[0]: deny: true port ranges have no native equivalent; "
        '{"start": 22, "end": 22, "deny": true} was left out',
        "containerRules[1]: every port range is deny: true; the rule was left out",
        "containerRules[3].color: unknown rule field (value 'blue')",
        "containerRules[3].previousName: 'old' has no native field",
    ]


def test_entity_kinds_names_and_unknown_fields() -> None:
    ents = [
        _container(1, "web", _coll(images=["web"])),
        _container(2, "web", _coll(images=["web2"])),
        {"_id": 3, "name": "nets", "type": "subnet", "subnets": [
            {"name": "office", "cidr": "10.1.0.0/16"}, {"name": "", "cidr": "fd00::/8"},
            "10.2.0.0/16"]},
        {"_id": 4, "name": "names", "type": "dns", "domains": ["*.example.com", "a.example"],
         "description": "partners", "owner": "bob"},
        {"_id": 5, "name": "hosts", "type": "host",
         "collections": [_coll(hosts=["node-1"], labels=["zone:a"], images=["x"])]},
    ]
    conv = from_prisma(_doc(ents, [], [], modified="2024-01-01"))
    objs = conv.result.objects
    assert [o.name for o in objs] == ["web", "web-2", "nets", "names", "hosts"]
    assert objs[2] == SubnetObject(name="nets", cidrs=("10.1.0.0/16", "fd00::/8", "10.2.0.0/16"))
    assert objs[3] == DnsObject(name="names", description="partners",
                                domains=("*.example.com", "a.example"))
    assert objs[4] == HostObject(name="hosts",
                                 selector=HostSelector(hosts=("node-1",), labels=("zone=a",)))
    assert conv.unmapped == [
        "modified: unknown field (value '2024-01-01')",
        "networkEntities[1].name: duplicate entity name 'web' renamed to 'web-2'",
        "networkEntities[2].subnets[0].name: subnet name 'office' has no native field "
        "(the CIDR 10.1.0.0/16 is kept)",
        "networkEntities[3].owner: unknown entity field (value 'bob')",
        'networkEntities[4].collections[0].images: ["x"] has no native equivalent; the selector '
        "matches without it",
    ]


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda d: d.update(_id="somethingElse"), "_id: 'somethingElse' is not 'networkFirewall'"),
        (lambda d: d["networkEntities"][0].update(type="pod"),
         "networkEntities[0].type: 'pod' is not one of container, host, subnet, dns"),
        (lambda d: d["networkEntities"][0].update(_id="one"),
         "networkEntities[0]._id: 'one' is not an integer"),
        (lambda d: d["networkEntities"][1].update(_id=1),
         "networkEntities[1]._id: duplicate entity _id 1"),
        (lambda d: d["networkEntities"][4]["subnets"][0].update(cidr="10.0.0.0/99"),
         "networkEntities[4].subnets[0].cidr: '10.0.0.0/99' is not an IPv4 or IPv6 CIDR"),
        (lambda d: d["networkEntities"][0].update(collections=[]),
         "networkEntities[0].collections: a container entity needs at least one collection"),
        (lambda d: d["networkEntities"][1]["collections"][0].update(labels=["app"]),
         "networkEntities[1].collections[0].labels[0]: 'app' is not a key:value label"),
        (lambda d: d["containerRules"][0].update(dst=99),
         "containerRules[0].dst: no entity with _id 99"),
        (lambda d: d["containerRules"][0]["ports"][0].update(end=70000),
         "containerRules[0].ports[0].end: 70000 is above 65535"),
        (lambda d: d["containerRules"][0].update(effect="deny"),
         "containerRules[0].effect: 'deny' is not one of 'allow', 'alert' or 'prevent'"),
        (lambda d: d["containerRules"][0].update(src=7),
         "containerRules[0].src: 'nodes' is a host object; a container rule's source must be a "
         "container object"),
        (lambda d: d["containerRules"][1].update(id=1),
         "containerRules[1].id: duplicate rule id 1 (first used by containerRules[0])"),
        (lambda d: d.update(hostEnabled="yes"), "hostEnabled: 'yes' is not true or false"),
    ],
)
def test_bad_exports(mutate: Any, expected: str) -> None:
    doc = copy.deepcopy(EXPORT)
    mutate(doc)
    with pytest.raises(PolicyValidationError) as info:
        from_prisma(doc)
    # the first error is the cause; rules naming a broken entity may follow it
    assert str(info.value.errors[0]) == expected


def test_every_error_of_a_rule_is_reported_at_once() -> None:
    doc = copy.deepcopy(EXPORT)
    doc["containerRules"][0].update(dst=99, effect="deny")
    doc["containerRules"][0]["ports"][0].update(end=70000)
    doc["containerRules"][1]["ports"] = "80"
    with pytest.raises(PolicyValidationError) as info:
        from_prisma(doc)
    assert [str(e) for e in info.value.errors] == [
        "containerRules[0].dst: no entity with _id 99",
        "containerRules[0].ports[0].end: 70000 is above 65535",
        "containerRules[0].effect: 'deny' is not one of 'allow', 'alert' or 'prevent'",
        "containerRules[1].ports: '80' is not a list of {start, end, deny}",
    ]


def test_to_prisma_reports_what_the_original_cannot_hold() -> None:
    policy = load_policy((ROOT / "examples" / "shop-policy.yaml").read_text())
    conv = to_prisma(policy.model_copy(update={"block_mode": BlockMode.DROP}))
    assert conv.unmapped == [
        "defaultEffect: alert has no equivalent (the original product allows unmatched "
        "connections)",
        "blockMode: drop has no equivalent (the original product drops prevented connections "
        "silently)",
    ]
    conv = to_prisma(policy.model_copy(update={"default_effect": Effect.ALLOW,
                                               "block_mode": BlockMode.RESET}))
    assert conv.unmapped == []
    doc = conv.result
    assert doc["_id"] == "networkFirewall"
    ent = doc["networkEntities"][0]
    assert ent == {"_id": 1, "name": "frontend", "type": "container", "collections": [
        {**ANY, "name": "frontend", "images": ["shop/frontend"], "namespaces": ["shop-web"]}]}
    assert doc["networkEntities"][10]["subnets"] == [
        {"name": "0.0.0.0/0", "cidr": "0.0.0.0/0"}, {"name": "::/0", "cidr": "::/0"}]
    rule = doc["containerRules"][4]
    assert rule == {"id": 5, "name": "worker-to-db", "src": 6, "dst": 4,
                    "ports": [{"start": 5432, "end": 5432, "deny": False}], "effect": "allow",
                    "disabled": False, "notes": "nightly order export", "owner": "data-team"}


def test_to_prisma_reports_the_rule_limit_and_odd_labels() -> None:
    objects = (ContainerObject(name="a", selector=ContainerSelector(labels=("k:x=v",))),)
    rules = [{"id": i, "name": f"r{i}", "src": "a", "dst": "a"} for i in range(1, 258)]
    policy = Policy.model_validate({"objects": objects, "containerRules": rules})
    assert to_prisma(policy).unmapped == [
        "objects[0].selector.labels[0]: key 'k:x' contains ':' and cannot be written as "
        "key:value",
        "containerRules: 257 rules; the original product accepts at most 255",
    ]


def _expressible(policy: Policy) -> Policy:
    """What the original format can carry: no default effect, block mode or revision;
    a field containing ``*`` is the same as no constraint."""
    objects = []
    for obj in policy.objects:
        if isinstance(obj, ContainerObject | HostObject):
            fields = {k: () if "*" in v else v for k, v in obj.selector.model_dump().items()}
            if not any(fields.values()):
                fields[next(iter(fields))] = ("*",)
            objects.append(
                obj.model_copy(update={"selector": type(obj.selector)(**fields)}))
        else:
            objects.append(obj)
    return policy.model_copy(update={"objects": tuple(objects), "default_effect": Effect.ALLOW,
                                     "block_mode": BlockMode.RESET, "revision": 0})


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policies())
def test_native_to_original_to_native_keeps_every_rule(policy: Policy) -> None:
    there = to_prisma(policy)
    assert all(u.startswith(("defaultEffect:", "blockMode:")) for u in there.unmapped)
    back = from_prisma(json.loads(json.dumps(there.result)))
    assert back.unmapped == []
    assert back.result.container_rules == policy.container_rules
    assert back.result.host_rules == policy.host_rules
    assert back.result == _expressible(policy)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_mutated_exports_never_crash(data: st.DataObject) -> None:
    doc = copy.deepcopy(EXPORT)
    mutate(doc, data)
    try:
        from_prisma(doc)
    except PolicyValidationError as exc:
        assert exc.errors


def test_generated_rules_numbered_from_zero_without_names_are_renumbered_and_named() -> None:
    # The shape a rule generator writes from the audit CSV: ids from 0, no names.
    ents = [_container(0, "a", _coll(images=["a"])), _container(1, "b", _coll(images=["b"]))]
    rules = [{"id": i, "src": 0, "dst": 1, "ports": [{"start": p, "end": p, "deny": False}],
              "effect": "allow"} for i, p in enumerate((80, 443))]
    rules.append({"id": 7, "name": "rule-1", "src": 1, "dst": 0, "effect": "alert"})
    conv = from_prisma(_doc(ents, rules))
    got = conv.result.container_rules
    assert [(r.id, r.name, r.src, r.dst) for r in got] == [
        (1, "rule-1-2", "a", "b"), (2, "rule-2", "a", "b"), (3, "rule-1", "b", "a")]
    assert conv.unmapped == [
        "containerRules[0].id: 0 renumbered to 1 (ids start at 1)",
        "containerRules[1].id: 1 renumbered to 2 (ids start at 1)",
        "containerRules[2].id: 7 renumbered to 3 (ids start at 1)",
        "containerRules[0].name: missing; named 'rule-1-2'",
        "containerRules[1].name: missing; named 'rule-2'",
    ]
    # valid ids stay as they are; a missing id alone numbers the list
    conv = from_prisma(_doc(ents, [_rule(5, 0, 1), {**_rule(9, 1, 0), "id": None}]))
    assert [r.id for r in conv.result.container_rules] == [1, 2]
    assert conv.unmapped[:2] == ["containerRules[0].id: 5 renumbered to 1 (ids start at 1)",
                                 "containerRules[1].id: missing; numbered 2"]
    assert [r.id for r in from_prisma(_doc(ents, [_rule(5, 0, 1)])).result.container_rules] == [5]
    # an id that is not a number is still refused, naming it
    with pytest.raises(PolicyValidationError) as info:
        from_prisma(_doc(ents, [_rule(0, 0, 1), {**_rule(2, 0, 1), "id": "two"}]))
    assert str(info.value.errors[0]).startswith("containerRules[1].id: 'two'")


def test_collection_name_and_description_are_kept_and_other_metadata_reported() -> None:
    ents = [
        _container(1, "web", {**_coll(images=["web:*"]), "name": "web-coll",
                              "description": "the web tier", "color": "#3FA2F7",
                              "owner": "alice", "modified": "2024-01-01T00:00:00Z",
                              "system": False}),
        {**_container(2, "db", {**_coll(images=["db"]), "name": "db"}),
         "description": "databases"},
        _container(3, "both", {**_coll(images=["x"]), "name": "c1"},
                   {**_coll(images=["y"]), "name": "c2", "description": "second"}),
    ]
    conv = from_prisma(_doc(ents))
    descriptions = {o.name: o.description for o in conv.result.objects}
    assert descriptions == {
        "web": "collection 'web-coll': the web tier",
        "db": "databases",  # a collection named after its entity adds nothing
        "both": "collection 'c1'; collection 'c2': second",
    }
    kept = "kept in the object's description"
    assert conv.unmapped == [
        f"networkEntities[0].collections[0]: collection name and description {kept} "
        "(collection 'web-coll': the web tier)",
        "networkEntities[0].collections[0].color: '#3FA2F7' has no native field",
        "networkEntities[0].collections[0].owner: 'alice' has no native field",
        "networkEntities[0].collections[0].modified: '2024-01-01T00:00:00Z' has no native field",
        f"networkEntities[2].collections[0]: collection name {kept} (collection 'c1')",
        f"networkEntities[2].collections[1]: collection name and description {kept} "
        "(collection 'c2': second)",
    ]
    # converting back and again keeps the description and reports nothing new
    again = from_prisma(json.loads(json.dumps(to_prisma(conv.result).result)))
    assert again.unmapped == [] and again.result.objects == conv.result.objects
