"""Convert between the native policy and the original product's export format.

The original format (DESIGN.md section 1) is one JSON object::

    {"_id": "networkFirewall", "containerEnabled": ..., "hostEnabled": ...,
     "containerRules": [...], "hostRules": [...], "networkEntities": [...]}

Entities carry an integer ``_id`` and a ``type`` of container, host, subnet or
dns. Container and host entities hold ``collections`` of glob lists (``*``
meaning any); subnet entities hold ``subnets: [{name, cidr}]``; dns entities
``domains``. Rules point at entities by ``_id`` and list ports as
``{start, end, deny}``.

Mapping decisions:

- a collection becomes a selector; a field whose patterns include ``*`` does
  not constrain; labels ``key:value`` become ``key=value``;
- several collections on one entity (an OR of selectors) are merged when they
  differ in at most one field (the union of that field is exact); otherwise
  only the first is kept and the rest reported;
- a collection's name and description are kept in the object's description
  (unless the name is the entity's own and there is no description);
- rule ids below 1 or missing (rule generators number from 0) renumber the
  list from 1 in its order; a rule without a name is named ``rule-<id>``;
- fields the native model has no equivalent for (non-``*`` ``appIDs``,
  ``accountIDs``, ``functions``, ``codeRepos``; ``deny: true`` port ranges;
  subnet names; collection colours, owners and times; a rule's
  ``previousName``; unknown keys) are reported in :attr:`Conversion.unmapped`
  with their path, never dropped silently; so is every renumbering and naming;
- native settings the original lacks (default effect other than allow, block
  mode, more than 255 rules in a list) are reported when converting to it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeGuard, TypeVar

from pydantic import BaseModel, ValidationError

from cnnf.errors import FieldError, PolicyValidationError
from cnnf.model import (
    BlockMode,
    ContainerObject,
    ContainerSelector,
    DnsObject,
    Effect,
    HostObject,
    HostSelector,
    Policy,
    Rule,
    SubnetObject,
)
from cnnf.model.objects import (
    CIDR_PATTERN,
    DOMAIN_MAX_LENGTH,
    DOMAIN_PATTERN,
    DOT_SEGMENTS,
    GLOB_PATTERN,
    WS,
    name_problem,
    normalise_cidr,
)
from cnnf.model.rule import MAX_PORT, MAX_RULE_ID, MIN_PORT
from cnnf.policy.check import check_policy
from cnnf.policy.document import ORIGINAL_FORMAT_ID, show, translate_errors

T = TypeVar("T")

ORIGINAL_RULE_LIMIT = 255

# Collection fields with a native selector field, per entity type.
CONTAINER_FIELDS = ("images", "labels", "namespaces", "containers", "hosts", "clusters")
HOST_FIELDS = ("hosts", "labels")
# Collection fields the native model has no equivalent for: only "*" maps.
OTHER_FIELDS = ("appIDs", "accountIDs", "functions", "codeRepos")
# Collection metadata without rule semantics: name and description go into the
# object's description; the rest has no native field and is reported when set.
COLLECTION_META = frozenset({"name", "description", "color", "owner", "modified", "system",
                             "prisma"})
COLLECTION_KEPT = frozenset({"name", "description"})
ENTITY_KEYS = frozenset({"_id", "name", "type", "collections", "subnets", "domains",
                         "description"})
RULE_KEYS = frozenset({"id", "name", "src", "dst", "ports", "effect", "disabled", "notes",
                       "owner", "modified", "previousName", "staged"})
ROOT_KEYS = frozenset({"_id", "containerEnabled", "hostEnabled", "containerRules", "hostRules",
                       "networkEntities", "stagedDefaultEffect"})
# Staging has no equivalent in the original format. A staged rule is written
# disabled (the original product must not enforce it) with "staged": true, and
# the staged default effect as "stagedDefaultEffect": keys CNNF reads back.


@dataclass
class Conversion(Generic[T]):
    """A conversion's result and what could not be carried over (each with its path)."""

    result: T
    unmapped: list[str] = field(default_factory=list)


class _Errors:
    def __init__(self) -> None:
        self.items: list[FieldError] = []

    def add(self, path: str, message: str) -> None:
        self.items.append(FieldError(path, message))


def _is_int(value: Any) -> TypeGuard[int | float]:
    """An integer as JSON has it: ``3`` or ``3.0``, not ``true``."""
    if isinstance(value, float):
        return value.is_integer()
    return isinstance(value, int) and not isinstance(value, bool)


def _string_list(value: Any, path: str, errors: _Errors) -> list[str] | None:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        errors.add(path, f"{show(value)} is not a list of strings")
        return None
    return list(value)


def _selector_fields(
    coll: Mapping[str, Any], fields: tuple[str, ...], path: str, errors: _Errors,
    unmapped: list[str],
) -> dict[str, tuple[str, ...]] | None:
    """One collection as native selector fields (unconstrained fields left out)."""
    out: dict[str, tuple[str, ...]] = {}
    ok = True
    for key, value in coll.items():
        kpath = f"{path}.{key}"
        if key in COLLECTION_META:
            if key not in COLLECTION_KEPT and value not in ("", None, False, [], {}):
                unmapped.append(f"{kpath}: {show(value)} has no native field")
            continue
        if key not in fields and key not in OTHER_FIELDS and key not in CONTAINER_FIELDS:
            unmapped.append(f"{kpath}: unknown collection field (value {show(value)})")
            continue
        patterns = _string_list(value, kpath, errors)
        if patterns is None:
            ok = False
            continue
        if not patterns or "*" in patterns:
            continue  # "*" matches anything: no constraint
        if key not in fields:
            unmapped.append(f"{kpath}: {show(patterns)} has no native equivalent; "
                            "the selector matches without it")
            continue
        if key == "labels":
            converted = []
            for i, label in enumerate(patterns):
                lkey, sep, lvalue = label.partition(":")
                if not sep or not lkey:
                    errors.add(f"{kpath}[{i}]", f"{label!r} is not a key:value label")
                    ok = False
                    continue
                converted.append(f"{lkey}={lvalue}")
            patterns = converted
        out[key] = tuple(patterns)
    return out if ok else None


def _merge_collections(
    selectors: list[dict[str, tuple[str, ...]]],
) -> dict[str, tuple[str, ...]] | None:
    """OR of selectors as one selector, when exact: they differ in at most one field."""
    first = selectors[0]
    keys = set().union(*selectors)
    differing = [k for k in keys if any(s.get(k) != first.get(k) for s in selectors)]
    if not differing:
        return first
    if len(differing) > 1:
        return None
    key = differing[0]
    if any(key not in s for s in selectors):
        return {k: v for k, v in first.items() if k != key}  # one side unconstrained
    union: list[str] = []
    for s in selectors:
        union.extend(p for p in s[key] if p not in union)
    return {**first, key: tuple(union)}


def _build(model: type[BaseModel], data: dict[str, Any], path: str, errors: _Errors) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors.items.extend(translate_errors(exc, data, path))
        return None


def _entity(
    ent: Any, path: str, name: str, errors: _Errors, unmapped: list[str]
) -> Any:
    etype = ent.get("type")
    description = ent.get("description", "")
    if not isinstance(description, str):
        errors.add(f"{path}.description", f"{show(description)} is not a string")
        description = ""
    for key in ent:
        if key not in ENTITY_KEYS:
            unmapped.append(f"{path}.{key}: unknown entity field (value {show(ent[key])})")
    if etype in ("container", "host"):
        fields = CONTAINER_FIELDS if etype == "container" else HOST_FIELDS
        colls = ent.get("collections")
        if not isinstance(colls, list) or not colls:
            errors.add(f"{path}.collections", f"a {etype} entity needs at least one collection")
            return None
        selectors = []
        notes: list[str] = []
        for j, coll in enumerate(colls):
            cpath = f"{path}.collections[{j}]"
            if not isinstance(coll, Mapping):
                errors.add(cpath, f"{show(coll)} is not a mapping")
                return None
            note = _collection_note(coll, cpath, (name, ent.get("name")), errors, unmapped)
            if note and note not in notes:
                notes.append(note)
            if not any(k in coll for k in (*CONTAINER_FIELDS, *OTHER_FIELDS)):
                unmapped.append(
                    f"{cpath}: collection {show(coll.get('name', ''))} has no pattern fields "
                    "(a reference by name?); its patterns are unknown here, so it was read as "
                    "matching any workload")
            sel = _selector_fields(coll, fields, cpath, errors, unmapped)
            if sel is None:
                return None
            selectors.append(sel)
        merged = _merge_collections(selectors)
        if merged is None:
            merged = selectors[0]
            unmapped.append(
                f"{path}.collections[1:]: {len(colls) - 1} more collection(s) differ from "
                "collections[0] in more than one field and cannot be one selector; "
                "only collections[0] was kept"
            )
        if not merged:
            merged = {fields[0]: ("*",)}  # every field "*": any workload
        description = "; ".join(part for part in (description, *notes) if part)
        sel_model = ContainerSelector if etype == "container" else HostSelector
        obj_model = ContainerObject if etype == "container" else HostObject
        selector = _build(sel_model, dict(merged), f"{path}.collections", errors)
        if selector is None:
            return None
        return obj_model(name=name, description=description, selector=selector)
    if etype == "subnet":
        subnets = ent.get("subnets")
        if not isinstance(subnets, list) or not subnets:
            errors.add(f"{path}.subnets", "a subnet entity needs at least one {name, cidr}")
            return None
        cidrs: list[str] = []
        bad = False
        for j, sub in enumerate(subnets):
            spath = f"{path}.subnets[{j}]"
            if isinstance(sub, str):
                cidr, cpath = sub, spath
            elif isinstance(sub, Mapping) and isinstance(sub.get("cidr"), str):
                cidr, cpath = sub["cidr"], f"{spath}.cidr"
            else:
                errors.add(spath, f"{show(sub)} is not {{name, cidr}}")
                bad = True
                continue
            try:
                cidrs.append(normalise_cidr(cidr))
            except ValueError as exc:  # at the path the export has, not the native one
                errors.add(cpath, str(exc))
                bad = True
            if isinstance(sub, str):
                continue
            sub_name = sub.get("name", "")
            if sub_name not in ("", None, sub["cidr"], name, ent.get("name")):
                unmapped.append(f"{spath}.name: subnet name {show(sub_name)} has no native "
                                f"field (the CIDR {sub['cidr']} is kept)")
        if bad:
            return None
        return _build(SubnetObject, {"kind": "subnet", "name": name,
                                     "description": description, "cidrs": cidrs}, path, errors)
    if etype == "dns":
        domains = _string_list(ent.get("domains"), f"{path}.domains", errors)
        if domains is None:
            return None
        return _build(DnsObject, {"kind": "dns", "name": name, "description": description,
                                  "domains": domains}, path, errors)
    errors.add(f"{path}.type", f"{show(etype)} is not one of container, host, subnet, dns")
    return None


def _collection_note(
    coll: Mapping[str, Any], path: str, entity_names: tuple[Any, ...], errors: _Errors,
    unmapped: list[str],
) -> str:
    """A collection's name and description as a sentence for the object's description
    (empty when the collection is just named after its entity)."""
    texts: dict[str, str] = {}
    for key in ("name", "description"):
        value = coll.get(key, "")
        if value is None:
            value = ""
        if not isinstance(value, str):
            errors.add(f"{path}.{key}", f"{show(value)} is not a string")
            return ""
        texts[key] = value
    cname, cdesc = texts["name"], texts["description"]
    if not cdesc.strip() and (not cname.strip() or cname in entity_names):
        return ""
    note = f"collection {cname!r}" if cname else "collection"
    if cdesc:
        note += f": {cdesc}"
    kept = " and description" if cdesc else ""
    unmapped.append(f"{path}: collection name{kept} kept in the object's description "
                    f"({note})")
    return note


def _number_rules(rules: list[Any], list_name: str, unmapped: list[str]) -> dict[int, Any]:
    """New ids for a list in which some rule's id is missing or below 1 (rule
    generators number from 0): the whole list is numbered from 1 in its order, so
    that ids stay unique and ordered. Empty when every id can stay."""
    ids = [raw.get("id") if isinstance(raw, Mapping) else 1 for raw in rules]
    if not any(i is None or (_is_int(i) and i < 1) for i in ids):
        return {}
    out: dict[int, Any] = {}
    for i, old in enumerate(ids):
        if old is not None and not _is_int(old):
            continue  # not a number: refused where the rule is validated
        new = i + 1
        out[i] = new
        if old is None:
            unmapped.append(f"{list_name}[{i}].id: missing; numbered {new}")
        elif old != new:
            unmapped.append(f"{list_name}[{i}].id: {old} renumbered to {new} (ids start at 1)")
    return out


def _name_rules(rules: list[Any], ids: dict[int, Any], list_name: str,
                unmapped: list[str]) -> dict[int, str]:
    """Names for the rules of a list that have none: ``rule-<id>``, made unique."""
    taken = {raw["name"] for raw in rules
             if isinstance(raw, Mapping) and isinstance(raw.get("name"), str)}
    out: dict[int, str] = {}
    for i, raw in enumerate(rules):
        if not isinstance(raw, Mapping) or raw.get("name") not in (None, ""):
            continue
        rule_id = ids.get(i, raw.get("id"))
        base = name = f"rule-{rule_id}"
        n = 2
        while name in taken:
            name = f"{base}-{n}"
            n += 1
        taken.add(name)
        out[i] = name
        unmapped.append(f"{list_name}[{i}].name: missing; named {name!r}")
    return out


def _text(raw: Mapping[str, Any], key: str, path: str, errors: _Errors) -> str:
    """A rule's optional text field: a string, or null for none."""
    value = raw.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        errors.add(f"{path}.{key}", f"{show(value)} is not a string")
        return ""
    return value


def _ports(value: Any, path: str, errors: _Errors, unmapped: list[str]) -> list[Any] | None:
    if value is None or value == []:
        return ["*"]
    if not isinstance(value, list):
        errors.add(path, f"{show(value)} is not a list of {{start, end, deny}}")
        return None
    out: list[Any] = []
    for i, port in enumerate(value):
        ppath = f"{path}[{i}]"
        if not isinstance(port, Mapping):
            errors.add(ppath, f"{show(port)} is not {{start, end, deny}}")
            continue
        deny = port.get("deny", False)
        if not isinstance(deny, bool):
            errors.add(f"{ppath}.deny", f"{show(deny)} is not true or false")
            continue
        if deny:
            unmapped.append(f"{ppath}: deny: true port ranges have no native equivalent; "
                            f"{show(dict(port))} was left out")
            continue
        extra = set(port) - {"start", "end", "deny"}
        for key in sorted(extra):
            unmapped.append(f"{ppath}.{key}: unknown port field (value {show(port[key])})")
        start, end = port.get("start"), port.get("end", port.get("start"))
        if not _is_int(start) or not _is_int(end):
            errors.add(ppath, f"{show(dict(port))} needs integer start and end")
            continue
        out.append({"start": int(start), "end": int(end)})
    return out


def from_prisma(doc: Mapping[str, Any], *, source: str = "") -> Conversion[Policy]:
    """Convert an original-format export into a native policy.

    Raises :class:`PolicyValidationError` (every problem, with its path) when
    the document cannot be converted; reports lossy parts in ``unmapped``.
    """
    errors = _Errors()
    unmapped: list[str] = []
    if not isinstance(doc, Mapping):
        raise PolicyValidationError([FieldError("", f"{show(doc)} is not a mapping")], source)
    if doc.get("_id", ORIGINAL_FORMAT_ID) != ORIGINAL_FORMAT_ID:
        errors.add("_id", f"{show(doc.get('_id'))} is not {ORIGINAL_FORMAT_ID!r}")
    for key in doc:
        if key not in ROOT_KEYS:
            unmapped.append(f"{key}: unknown field (value {show(doc[key])})")

    settings: dict[str, Any] = {}
    for key in ("containerEnabled", "hostEnabled"):
        value = doc.get(key, False)
        if not isinstance(value, bool):
            errors.add(key, f"{show(value)} is not true or false")
        settings[key] = value is True

    names: dict[int, str] = {}
    objects: list[Any] = []
    entities = doc.get("networkEntities", [])
    if not isinstance(entities, list):
        errors.add("networkEntities", f"{show(entities)} is not a list")
        entities = []
    used_names: set[str] = set()
    for i, ent in enumerate(entities):
        path = f"networkEntities[{i}]"
        if not isinstance(ent, Mapping):
            errors.add(path, f"{show(ent)} is not a mapping")
            continue
        ent_id = ent.get("_id")
        if not _is_int(ent_id):
            errors.add(f"{path}._id", f"{show(ent_id)} is not an integer")
            continue
        ent_id = int(ent_id)
        if ent_id in names:
            errors.add(f"{path}._id", f"duplicate entity _id {ent_id}")
            continue
        name = ent.get("name")
        if not isinstance(name, str) or not name:
            errors.add(f"{path}.name", f"{show(name)} is not a name")
            continue
        problem = name_problem(name)
        if problem:
            errors.add(f"{path}.name", problem)
            continue
        if name in used_names:
            new_name = f"{name}-{ent_id}"
            unmapped.append(f"{path}.name: duplicate entity name {name!r} renamed to "
                            f"{new_name!r}")
            name = new_name
        used_names.add(name)
        names[ent_id] = name
        obj = _entity(ent, path, name, errors, unmapped)
        if obj is not None:
            objects.append(obj)

    lists: dict[str, list[Rule]] = {"containerRules": [], "hostRules": []}
    for list_name in ("containerRules", "hostRules"):
        rules = doc.get(list_name, [])
        if not isinstance(rules, list):
            errors.add(list_name, f"{show(rules)} is not a list")
            continue
        new_ids = _number_rules(rules, list_name, unmapped)
        new_names = _name_rules(rules, new_ids, list_name, unmapped)
        for i, raw in enumerate(rules):
            path = f"{list_name}[{i}]"
            if not isinstance(raw, Mapping):
                errors.add(path, f"{show(raw)} is not a mapping")
                continue
            for key in raw:
                if key not in RULE_KEYS:
                    unmapped.append(f"{path}.{key}: unknown rule field (value {show(raw[key])})")
            previous = raw.get("previousName")
            if previous not in (None, "", raw.get("name")):
                unmapped.append(f"{path}.previousName: {show(previous)} has no native field")
            ends: dict[str, str] = {}
            for end in ("src", "dst"):
                ref = raw.get(end)
                if _is_int(ref) and int(ref) in names:
                    ends[end] = names[int(ref)]
                else:
                    errors.add(f"{path}.{end}", f"no entity with _id {show(ref)}")
            ports = _ports(raw.get("ports"), f"{path}.ports", errors, unmapped)
            if ports is not None and not ports:
                unmapped.append(f"{path}: every port range is deny: true; the rule was "
                                "left out")
                continue
            # Validate the other fields even when an end or a port is broken, so
            # that one run reports every error of the rule.
            data = {
                "id": new_ids.get(i, raw.get("id")),
                "name": new_names.get(i, raw.get("name")),
                "src": ends.get("src", "?"),
                "dst": ends.get("dst", "?"),
                "ports": ["*"] if ports is None else ports,
                "effect": raw.get("effect", "allow"),
                # written disabled so the original product does not enforce it
                "disabled": False if raw.get("staged") is True else raw.get("disabled", False),
                "staged": raw.get("staged", False),
                "notes": _text(raw, "notes", path, errors),
                "owner": _text(raw, "owner", path, errors),
                "modified": _text(raw, "modified", path, errors) or None,
            }
            rule = _build(Rule, data, path, errors)
            if rule is not None and len(ends) == 2 and ports is not None:
                lists[list_name].append(rule)

    staged_default = doc.get("stagedDefaultEffect")
    if staged_default is not None and staged_default not in {e.value for e in Effect}:
        errors.add("stagedDefaultEffect", f"{show(staged_default)} is not allow, alert or "
                   "prevent")
        staged_default = None
    if errors.items:
        raise PolicyValidationError(errors.items, source)
    policy = Policy(
        container_enabled=settings["containerEnabled"],
        host_enabled=settings["hostEnabled"],
        staged_default_effect=None if staged_default is None else Effect(staged_default),
        objects=tuple(objects),
        container_rules=tuple(lists["containerRules"]),
        host_rules=tuple(lists["hostRules"]),
    )
    problems = check_policy(policy)
    if problems:
        raise PolicyValidationError(problems, source)
    return Conversion(policy, unmapped)


def _collection(name: str, fields: dict[str, tuple[str, ...]], all_fields: tuple[str, ...],
                ) -> dict[str, Any]:
    coll: dict[str, Any] = {"name": name}
    for key in (*all_fields, *OTHER_FIELDS):
        coll[key] = list(fields.get(key) or ("*",))
    return coll


def to_prisma(policy: Policy) -> Conversion[dict[str, Any]]:
    """Convert a native policy into the original export format.

    Reports native settings the original format cannot hold in ``unmapped``.
    """
    problems = check_policy(policy)
    if problems:
        raise PolicyValidationError(problems)
    unmapped: list[str] = []
    if policy.default_effect is not Effect.ALLOW:
        unmapped.append(f"defaultEffect: {policy.default_effect.value} has no equivalent "
                        "(the original product allows unmatched connections)")
    if policy.block_mode is not BlockMode.RESET:
        unmapped.append(f"blockMode: {policy.block_mode.value} has no equivalent (the "
                        "original product drops prevented connections silently)")
    if policy.staged_default_effect is not None:
        unmapped.append(f"stagedDefaultEffect: {policy.staged_default_effect.value} has no "
                        "equivalent (kept as stagedDefaultEffect, which only CNNF reads)")
    ids: dict[str, int] = {}
    entities: list[dict[str, Any]] = []
    for i, obj in enumerate(policy.objects, start=1):
        ids[obj.name] = i
        ent: dict[str, Any] = {"_id": i, "name": obj.name, "type": obj.kind.value}
        if obj.description:
            ent["description"] = obj.description
        if isinstance(obj, ContainerObject | HostObject):
            sel = obj.selector
            all_fields = CONTAINER_FIELDS if isinstance(obj, ContainerObject) else HOST_FIELDS
            fields = {k: tuple(getattr(sel, k)) for k in all_fields}
            labels = []
            for j, label in enumerate(fields["labels"]):
                key, _, value = label.partition("=")
                if ":" in key:
                    unmapped.append(f"objects[{i - 1}].selector.labels[{j}]: key {key!r} "
                                    "contains ':' and cannot be written as key:value")
                labels.append(f"{key}:{value}")
            fields["labels"] = tuple(labels)
            ent["collections"] = [_collection(obj.name, fields, all_fields)]
        elif isinstance(obj, SubnetObject):
            ent["subnets"] = [{"name": cidr, "cidr": cidr} for cidr in obj.cidrs]
        elif isinstance(obj, DnsObject):
            ent["domains"] = list(obj.domains)
        entities.append(ent)

    def rules(list_name: str, items: tuple[Rule, ...]) -> list[dict[str, Any]]:
        if len(items) > ORIGINAL_RULE_LIMIT:
            unmapped.append(f"{list_name}: {len(items)} rules; the original product accepts "
                            f"at most {ORIGINAL_RULE_LIMIT}")
        out = []
        for i, rule in enumerate(items):
            raw: dict[str, Any] = {
                "id": rule.id,
                "name": rule.name,
                "src": ids[rule.src],
                "dst": ids[rule.dst],
                "ports": [{"start": p.start, "end": p.end, "deny": False} for p in rule.ports],
                "effect": rule.effect.value,
                "disabled": rule.disabled or rule.staged,
            }
            if rule.staged:
                raw["staged"] = True
                unmapped.append(
                    f"{list_name}[{i}] ({rule.name}): staged has no equivalent; written "
                    "disabled with staged: true (CNNF reads it back staged"
                    + ("; its own disabled flag is lost)" if rule.disabled else ")"))
            if rule.notes:
                raw["notes"] = rule.notes
            if rule.owner:
                raw["owner"] = rule.owner
            if rule.modified is not None:
                raw["modified"] = rule.modified.isoformat().replace("+00:00", "Z")
            out.append(raw)
        return out

    doc = {
        "_id": ORIGINAL_FORMAT_ID,
        "containerEnabled": policy.container_enabled,
        "containerRules": rules("containerRules", policy.container_rules),
        "hostEnabled": policy.host_enabled,
        "hostRules": rules("hostRules", policy.host_rules),
        "networkEntities": entities,
    }
    if policy.staged_default_effect is not None:
        doc["stagedDefaultEffect"] = policy.staged_default_effect.value
    return Conversion(doc, unmapped)


__all__ = ["Conversion", "from_prisma", "to_prisma"]


# An original-format label: ``key:value`` globs, the key without ``:`` or ``=``.
_ORIGINAL_LABEL = (rf"^(?:[^{WS}\[:=]+|[^{WS}\[:=]*\[[^{WS}:=]*\][^{WS}:=]*)"
                   rf":(?:[^{WS}\[]+|[^{WS}\[]*\[[^{WS}]*\][^{WS}]*)$")


def original_format_schema(*, whole: bool) -> dict[str, Any]:
    """The JSON Schema of a document in the original format, as :func:`from_prisma`
    reads it: what it refuses, the schema refuses; fields it does not know are
    allowed and reported as unmapped. ``whole``: every part of the policy must be
    present (a PUT replaces everything, so a forgotten list is not read as empty).
    What a schema cannot state is checked on the whole document: rules name
    entities by ``_id`` (of kinds their list allows), ``_id`` s and entity names are
    unique, a port range's start is not above its end, rule ids and names unique."""
    def patterns(item: dict[str, Any]) -> dict[str, Any]:
        return {"anyOf": [{"type": "array", "items": item}, item, {"type": "null"}],
                "description": "patterns; \"*\" matches anything"}

    glob = {"type": "string", "pattern": GLOB_PATTERN}
    label = {"anyOf": [{"const": "*"}, {"type": "string", "pattern": _ORIGINAL_LABEL}]}
    text = {"type": ["string", "null"]}

    def collection(fields: tuple[str, ...]) -> dict[str, Any]:
        # The fields this entity's selector has are patterns; the others are
        # reported (unless "*") whatever they hold, so any strings.
        every = {key: {"type": "string"} for key in (*CONTAINER_FIELDS, *OTHER_FIELDS)}
        items = {**every, **{f: label if f == "labels" else glob for f in fields}}
        return {"type": "object", "properties": {
            **{key: patterns(item) for key, item in items.items()},
            "name": text, "description": text}}
    common = {"_id": {"type": "integer"},
              "name": {"type": "string", "minLength": 1, "maxLength": 200,
                       "not": {"enum": list(DOT_SEGMENTS)}},  # an object's name rule
              "description": {"type": "string"}}
    entity_kinds = [
        *({"properties": {"type": {"const": kind},
                          "collections": {"type": "array", "minItems": 1,
                                          "items": collection(fields)}},
           "required": ["collections"]}
          for kind, fields in (("container", CONTAINER_FIELDS), ("host", HOST_FIELDS))),
        {"properties": {"type": {"const": "subnet"},
                        "subnets": {"type": "array", "minItems": 1, "items": {"anyOf": [
                            {"type": "string", "pattern": CIDR_PATTERN},
                            {"type": "object", "required": ["cidr"], "properties": {
                                "cidr": {"type": "string", "pattern": CIDR_PATTERN}}},
                        ]}}},
         "required": ["subnets"]},
        {"properties": {"type": {"const": "dns"},
                        "domains": {"anyOf": [
                            {"type": "array", "minItems": 1, "items": {
                                "type": "string", "pattern": DOMAIN_PATTERN,
                                "maxLength": DOMAIN_MAX_LENGTH}},
                            {"type": "string", "pattern": DOMAIN_PATTERN,
                             "maxLength": DOMAIN_MAX_LENGTH}]}},
         "required": ["domains"]},
    ]
    entity = {"type": "object", "title": "OriginalEntity",
              "required": ["_id", "name", "type"], "properties": common,
              "oneOf": entity_kinds}
    port = {"type": "object", "title": "OriginalPort", "required": ["start"], "properties": {
        "start": {"type": "integer", "minimum": MIN_PORT, "maximum": MAX_PORT},
        "end": {"type": "integer", "minimum": MIN_PORT, "maximum": MAX_PORT},
        "deny": {"type": "boolean"}}}
    rule = {
        "type": "object", "title": "OriginalRule", "required": ["src", "dst"],
        "properties": {
            "id": {"type": ["integer", "null"], "maximum": MAX_RULE_ID,
                   "description": "missing or below 1 in any rule: the list is numbered "
                                  "from 1"},
            "name": {"type": ["string", "null"], "maxLength": 200,
                     "description": "missing or empty: named rule-<id>"},
            "src": {"type": "integer", "description": "the _id of the source entity"},
            "dst": {"type": "integer", "description": "the _id of the destination entity"},
            "ports": {"type": ["array", "null"], "items": port,
                      "description": "missing or empty: any port"},
            "effect": {"enum": [e.value for e in Effect]},
            "disabled": {"type": "boolean"},
            "staged": {"type": "boolean", "description": (
                "CNNF's own key (the original product has no staging): true, the rule "
                "is staged, reported as \"would\" verdicts, not enforced; written "
                "with disabled: true so the original product does not enforce it")},
            "notes": text, "owner": text,
            "modified": {"anyOf": [{"type": "string", "format": "date-time"},
                                   {"const": ""}, {"type": "null"}]},
        },
    }
    root_lists = ("containerRules", "hostRules", "networkEntities")
    return {
        "type": "object", "title": "OriginalPolicy",
        "description": "the network firewall policy in the original product's shape",
        "required": ["containerEnabled", "hostEnabled", *root_lists] if whole else [],
        # How a document is recognised as one in this format (document.py
        # looks_like_original_format): its _id, or entities and no apiVersion.
        **({} if whole else {"anyOf": [
            {"required": ["_id"]},
            {"required": ["networkEntities"], "not": {"required": ["apiVersion"]}}]}),
        "properties": {
            "_id": {"const": ORIGINAL_FORMAT_ID},
            "containerEnabled": {"type": "boolean"},
            "hostEnabled": {"type": "boolean"},
            "containerRules": {"type": "array", "items": rule},
            "hostRules": {"type": "array", "items": rule},
            "networkEntities": {"type": "array", "items": entity},
            "stagedDefaultEffect": {"enum": [*(e.value for e in Effect), None],
                                    "description": (
                "CNNF's own key: the default effect being tried out (\"would\" "
                "verdicts, not enforced)")},
        },
    }
