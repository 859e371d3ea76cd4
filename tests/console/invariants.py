"""What a JSON Schema cannot state about a policy, applied to generated documents.

The published schema states each field's syntax; these rules span several fields,
and the Console checks them on the whole request (the operations' descriptions
say so): a rule names objects (native) or entities by ``_id`` (original format)
that the document has, of the kinds its list allows; object names, entity
``_id`` s, rule ids and rule names are unique; a port range's start is not above
its end; a rule in a PUT has the id of its path. :func:`hold` rewrites a
schema-valid request so that it keeps them, changing only what they concern, so
that the positive-data check sees what a client that reads the descriptions sends.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

# Which kinds each end of a rule may name (DESIGN.md section 1).
ENDS = {
    "containerRules": ({"container"}, {"container", "subnet", "dns"}),
    "hostRules": ({"host"}, {"host", "subnet"}),
}
MAX_NAME = 200


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _ordered(ports: Any) -> None:
    for port in ports if isinstance(ports, list) else ():
        if isinstance(port, dict) and _number(port.get("start")) and _number(port.get("end")) \
                and port["start"] > port["end"]:
            port["start"], port["end"] = port["end"], port["start"]


def _unique(value: str, taken: set[str]) -> str:
    name, n = value, 2
    while name in taken:
        suffix = f"-{n}"
        name = value[: MAX_NAME - len(suffix)] + suffix
        n += 1
    taken.add(name)
    return name


def _rules(doc: dict[str, Any], kinds: dict[Any, str], pick: Callable[[Any], Any]) -> None:
    """Point every rule at objects of allowed kinds (dropping it when the document
    has none), make ids and names unique, order port ranges."""
    for list_name, (src_kinds, dst_kinds) in ENDS.items():
        rules = doc.get(list_name)
        if not isinstance(rules, list):
            continue
        kept: list[Any] = []
        ids: set[Any] = set()
        names: set[str] = set()
        for rule in rules:
            src = [k for k, v in kinds.items() if v in src_kinds]
            dst = [k for k, v in kinds.items() if v in dst_kinds]
            if not src or not dst:
                continue
            if rule.get("src") not in src:
                rule["src"] = pick(src[0])
            if rule.get("dst") not in dst:
                rule["dst"] = pick(dst[0])
            if _number(rule.get("id")):
                while rule["id"] in ids:
                    rule["id"] = rule["id"] - 1 if rule["id"] > 1 else max(ids) + 1
                ids.add(rule["id"])
            if isinstance(rule.get("name"), str) and rule["name"]:
                rule["name"] = _unique(rule["name"], names)
            _ordered(rule.get("ports"))
            kept.append(rule)
        doc[list_name] = kept


def native(spec: dict[str, Any]) -> None:
    names: set[str] = set()
    kinds: dict[Any, str] = {}
    for obj in spec.get("objects", []):
        obj["name"] = _unique(obj["name"], names)
        kinds[obj["name"]] = obj["kind"]
    _rules(spec, kinds, lambda name: name)


def original(doc: dict[str, Any]) -> None:
    ids: set[int] = set()
    names: set[str] = set()
    kinds: dict[Any, str] = {}
    for ent in doc.get("networkEntities", []):
        while ent["_id"] in ids:
            ent["_id"] += 1
        ids.add(ent["_id"])
        ent["name"] = _unique(ent["name"], names)
        kinds[ent["_id"]] = ent["type"]
    _rules(doc, kinds, lambda ent_id: ent_id)


def hold(label: str, case: Any) -> None:
    """Make a positive case's request keep the whole-document rules (see above)."""
    body = case.body
    if not isinstance(body, dict):
        return
    if label in ("POST /api/v1/rules/{kind}", "PUT /api/v1/rules/{kind}/{rule_id}"):
        _ordered(body.get("ports"))
        if label.startswith("PUT") and body.get("id") is not None:
            body["id"] = case.path_parameters["rule_id"]
    elif label == "PUT /api/v1/policy":
        native(body)
    elif label == "POST /api/v1/policy/import":
        if "spec" in body:
            native(body["spec"])
        else:
            original(body)
    elif label == "PUT /api/v1/policies/firewall/network":
        original(body)
    elif label in ("POST /api/v1/policy/simulate", "POST /api/v1/policy/proposals"):
        window(body)
        if label.endswith("simulate"):
            draft(body)


def window(body: dict[str, Any]) -> None:
    """``since`` before ``until`` (RFC 3339 texts; compared as times)."""
    from datetime import datetime

    since, until = body.get("since"), body.get("until")
    if isinstance(since, str) and isinstance(until, str):
        try:
            a, b = datetime.fromisoformat(since), datetime.fromisoformat(until)
        except ValueError:
            return
        if a > b:
            body["since"], body["until"] = until, since
        elif a == b:
            del body["until"]


def draft(body: dict[str, Any]) -> None:
    """Exactly one draft; a whole one keeps the document rules; changes name
    the objects they bring."""
    kept = next((k for k in ("policy", "changes", "proposal") if body.get(k) is not None),
                "changes")
    for k in ("policy", "changes", "proposal"):
        if k != kept:
            body.pop(k, None)
    if kept == "changes":
        if not isinstance(body.get("changes"), dict):
            body["changes"] = {}
        changes = body["changes"]
        changes.pop("removeRules", None)  # the stored policy's rules are not known here
        native(changes)
    elif kept == "policy":
        native(body["policy"])
