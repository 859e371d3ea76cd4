"""The native policy document: ``apiVersion: cnnf/v1``, ``kind: Policy``, ``spec``.

One format, written as JSON or YAML. :func:`load_policy` validates the whole
document before anything uses it and reports every problem with its path and
the bad value (``containerRules[3].ports[0].end: 70000 is above 65535``).
:func:`dump_policy` is deterministic: keys in model order, objects and rules in
policy order, and empty values (``""``, ``[]``, ``null``) always left out, so
export -> import -> export gives the same bytes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Literal

import yaml
from pydantic import ValidationError

from cnnf.errors import FieldError, PolicyValidationError
from cnnf.model import ObjectKind, Policy
from cnnf.policy.check import ALLOWED_KINDS, RULE_LISTS, check_policy, kinds_text

API_VERSION = "cnnf/v1"
KIND = "Policy"
ORIGINAL_FORMAT_ID = "networkFirewall"  # ``_id`` of the original product's export

_KINDS_TEXT = ", ".join(k.value for k in ObjectKind)
_KIND_VALUES = frozenset(k.value for k in ObjectKind)
_MAX_SHOWN = 60


# libyaml's parser when PyYAML has it (ten times faster on large documents).
_SafeLoader: Any = yaml.CSafeLoader if yaml.__with_libyaml__ else yaml.SafeLoader


class _StrictLoader(_SafeLoader):  # type: ignore[misc]
    """A safe loader that refuses aliases (no "billion laughs") and duplicate keys.

    A node built twice can only be an alias (``*name``) of an anchored node:
    refusing that refuses every alias, whatever the parser."""

    def construct_object(self, node: Any, deep: bool = False) -> Any:
        if node in self.constructed_objects or node in self.recursive_objects:
            raise yaml.constructor.ConstructorError(
                None, None, "YAML aliases (*name) are not allowed in policy documents",
                node.start_mark,
            )
        return super().construct_object(node, deep=deep)

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen: set[tuple[str, str]] = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                key = (key_node.tag, key_node.value)
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key_node.value!r}", key_node.start_mark
                    )
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _json_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def parse_text(data: str | bytes, *, source: str = "") -> Any:
    """Parse JSON or YAML text into plain data; syntax problems raise
    :class:`PolicyValidationError`. JSON is recognised by its leading ``{``/``[``."""
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise PolicyValidationError(
                [FieldError("", f"not UTF-8 text (byte {exc.start})")], source
            ) from None
    text = data.lstrip("\ufeff")
    try:
        if text.lstrip()[:1] in ("{", "["):
            return json.loads(text, object_pairs_hook=_json_pairs)
        return yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass
    except json.JSONDecodeError as exc:
        msg = f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
    except yaml.YAMLError as exc:
        msg = f"invalid YAML: {' '.join(str(exc).split())}"
    except ValueError as exc:  # duplicate JSON key
        msg = f"invalid JSON: {exc}"
    except RecursionError:
        msg = "the document is nested too deeply"
    raise PolicyValidationError([FieldError("", msg)], source)


def show(value: Any) -> str:
    """A short, readable rendering of a bad input value for error messages."""
    if isinstance(value, str):
        text = repr(value)
    else:
        try:
            text = json.dumps(value, default=str, ensure_ascii=False)
        except (TypeError, ValueError, RecursionError):
            text = repr(value)
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 3] + "..."


_MISSING = object()


def _render_loc(loc: tuple[int | str, ...], data: Any) -> tuple[str, Any]:
    """Turn a pydantic ``loc`` into ``a[3].b`` by walking the input alongside it.

    Discriminator tags (``objects.0.container.selector``) are skipped; a loc that
    goes below a scalar (a port written as ``80`` is expanded to start/end) stops
    at the scalar, so the path names what the user wrote.
    """
    path = ""
    node = data
    for item in loc:
        if isinstance(item, int) and isinstance(node, (list, tuple)):
            if 0 <= item < len(node):
                path += f"[{item}]"
                node = node[item]
                continue
            break
        if isinstance(node, Mapping):
            if item in node:
                path += f".{item}" if path else str(item)
                node = node[item]
            elif node.get("kind") == item:
                continue  # the discriminated union's tag
            else:
                path += f".{item}" if path else str(item)
                node = _MISSING
            continue
        break
    return path, node


def _message(err: Mapping[str, Any]) -> str:
    kind = err["type"]
    value = err.get("input")
    ctx = err.get("ctx") or {}
    v = show(value)
    match kind:
        case "less_than_equal":
            return f"{v} is above {ctx.get('le')}"
        case "less_than":
            return f"{v} is not below {ctx.get('lt')}"
        case "greater_than_equal":
            return f"{v} is below {ctx.get('ge')}"
        case "greater_than":
            return f"{v} is not above {ctx.get('gt')}"
        case "missing":
            return "required field is missing"
        case "extra_forbidden":
            return f"unknown field (value {v})"
        case "string_too_short":
            return "must not be empty" if ctx.get("min_length") in (1, None) else (
                f"must be at least {ctx.get('min_length')} characters"
            )
        case "too_short":
            return "must not be empty" if ctx.get("min_length") in (1, None) else (
                f"needs at least {ctx.get('min_length')} item(s)"
            )
        case "string_pattern_mismatch":
            return f"{v} does not match {ctx.get('pattern')}"
        case "string_too_long":
            return f"is longer than {ctx.get('max_length')} characters"
        case "too_long":
            return f"has more than {ctx.get('max_length')} items"
        case "enum" | "literal_error":
            return f"{v} is not one of {ctx.get('expected')}"
        case "union_tag_invalid":
            return f"kind {show(ctx.get('tag'))} is not one of {_KINDS_TEXT}"
        case "union_tag_not_found":
            return f"missing kind (one of {_KINDS_TEXT})"
        case "bool_parsing" | "bool_type":
            return f"{v} is not true or false"
        case "int_parsing" | "int_type" | "int_from_float" | "int_parsing_size":
            return f"{v} is not an integer"
        case "string_type" | "string_unicode":
            return f"{v} is not a string"
        case "list_type" | "tuple_type" | "iterable_type" | "set_type":
            return f"{v} is not a list"
        case "model_type" | "dict_type" | "model_attributes_type":
            return f"{v} is not a mapping"
        case "value_error" | "assertion_error":
            msg = str(err.get("msg", ""))
            for prefix in ("Value error, ", "Assertion failed, "):
                msg = msg.removeprefix(prefix)
            return msg
    if kind.startswith(("datetime", "date_", "timezone")):
        return f"{v} is not a date-time (ISO 8601, like 2024-05-01T12:00:00Z)"
    return f"{err.get('msg')} (got {v})"


def translate_errors(exc: ValidationError, data: Any, prefix: str = "") -> list[FieldError]:
    """pydantic errors as :class:`FieldError` s with document paths, deduplicated."""
    out: list[FieldError] = []
    seen: set[tuple[str, str]] = set()
    for err in exc.errors():
        path, _ = _render_loc(tuple(err["loc"]), data)
        if err["type"] == "union_tag_not_found":
            path += ".kind"
        if prefix:
            path = f"{prefix}.{path}" if path and not path.startswith("[") else prefix + path
        message = _message(err)
        if (path, message) not in seen:
            seen.add((path, message))
            out.append(FieldError(path, message))
    return out


def _raw_reference_errors(spec: Mapping[str, Any]) -> list[FieldError]:
    """Cross-reference errors found in a spec that failed field validation, so
    that one run reports them too (the full check runs on a valid policy)."""
    objects = spec.get("objects", [])
    kinds: dict[str, Any] = {}
    if not isinstance(objects, list):
        return []  # the object names are unknown: nothing certain to say
    if objects:
        for obj in objects:
            if isinstance(obj, Mapping) and isinstance(obj.get("name"), str):
                kinds.setdefault(obj["name"], obj.get("kind"))
    errors: list[FieldError] = []
    for kind, list_name in RULE_LISTS:
        rules = spec.get(list_name)
        if not isinstance(rules, list):
            continue
        for i, rule in enumerate(rules):
            if not isinstance(rule, Mapping):
                continue
            for end in ("src", "dst"):
                ref = rule.get(end)
                if not isinstance(ref, str) or not ref:
                    continue
                allowed = ALLOWED_KINDS[kind][end]
                if ref not in kinds:
                    errors.append(FieldError(f"{list_name}[{i}].{end}",
                                             f"no object named {ref!r}"))
                elif (isinstance(kinds[ref], str) and kinds[ref] in _KIND_VALUES
                      and kinds[ref] not in allowed):
                    where = "source" if end == "src" else "destination"
                    errors.append(FieldError(
                        f"{list_name}[{i}].{end}",
                        f"{ref!r} is a {kinds[ref]} object; a {kind.value} rule's {where} "
                        f"must be a {kinds_text(allowed)} object"))
    return errors


def validate_spec(spec: Mapping[str, Any], *, source: str = "") -> Policy:
    """Validate a ``spec`` mapping (fields, then cross-references) into a policy."""
    try:
        policy = Policy.model_validate(spec)
    except ValidationError as exc:
        errors = translate_errors(exc, spec) + _raw_reference_errors(spec)
        raise PolicyValidationError(errors, source) from None
    except RecursionError:
        raise PolicyValidationError(
            [FieldError("", "the document is nested too deeply")], source
        ) from None
    problems = check_policy(policy)
    if problems:
        raise PolicyValidationError(problems, source)
    return policy


def looks_like_original_format(tree: Any) -> bool:
    return isinstance(tree, Mapping) and (
        tree.get("_id") == ORIGINAL_FORMAT_ID
        or ("apiVersion" not in tree and "networkEntities" in tree)
    )


def load_policy(data: str | bytes | Mapping[str, Any], *, source: str = "") -> Policy:
    """Load and validate a native policy document (JSON/YAML text or parsed data).

    Raises :class:`PolicyValidationError` listing every problem; nothing is
    returned unless the whole document is valid.
    """
    tree: Any = parse_text(data, source=source) if isinstance(data, str | bytes) else data
    if tree is None:  # an empty file, or only comments
        raise PolicyValidationError(
            [FieldError("", "the document is empty (a policy document is a mapping with "
                            "apiVersion, kind and spec)")],
            source,
        )
    if not isinstance(tree, Mapping):
        raise PolicyValidationError(
            [FieldError("", f"a policy document is a mapping with apiVersion, kind and spec; "
                            f"got {type(tree).__name__} {show(tree)}")],
            source,
        )
    if looks_like_original_format(tree):
        raise PolicyValidationError(
            [FieldError("", "this is the original product's export format (_id: networkFirewall);"
                            " convert it with `cnnf policy convert FILE --to native`")],
            source,
        )
    errors: list[FieldError] = []
    version = tree.get("apiVersion", _MISSING)
    if version is _MISSING:
        errors.append(FieldError("apiVersion", f"required field is missing (use {API_VERSION})"))
    elif version != API_VERSION:
        errors.append(FieldError("apiVersion", f"{show(version)} is not supported "
                                               f"(expected {API_VERSION!r})"))
    kind = tree.get("kind", _MISSING)
    if kind is _MISSING:
        errors.append(FieldError("kind", f"required field is missing (use {KIND})"))
    elif kind != KIND:
        errors.append(FieldError("kind", f"{show(kind)} is not a policy document "
                                         f"(expected {KIND!r})"))
    errors.extend(
        FieldError(str(key), "unknown field (a document has apiVersion, kind and spec)")
        for key in tree
        if key not in ("apiVersion", "kind", "spec")
    )
    spec = tree.get("spec", _MISSING)
    if spec is _MISSING:
        errors.append(FieldError("spec", "required field is missing"))
    elif not isinstance(spec, Mapping):
        errors.append(FieldError("spec", f"{show(spec)} is not a mapping"))
    else:
        try:
            policy = validate_spec(spec, source=source)
        except PolicyValidationError as exc:
            errors.extend(exc.errors)
        else:
            if not errors:
                return policy
    raise PolicyValidationError(errors, source)


def _prune(value: Any) -> Any:
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            pruned = _prune(item)
            if pruned is None or pruned in ("", [], {}):
                continue
            out[key] = pruned
        return out
    if isinstance(value, list):
        return [_prune(item) for item in value]
    return value


def policy_document(policy: Policy) -> dict[str, Any]:
    """The native document for ``policy`` as plain data (what :func:`dump_policy` writes,
    and what the Console serves its Defenders). A rule's ``staged`` is left out when
    false (and ``stagedDefaultEffect`` when unset, with every other empty value):
    with nothing staged the document is exactly what a Defender of a release before
    staging accepts (its model refuses fields it does not know), so Defenders not yet
    upgraded keep taking new policy."""
    spec = _prune(policy.model_dump(mode="json", by_alias=True))
    for kind in ("containerRules", "hostRules"):
        for rule in spec.get(kind, ()):
            if rule.get("staged") is False:
                del rule["staged"]
    return {"apiVersion": API_VERSION, "kind": KIND, "spec": spec}


def dump_policy(policy: Policy, fmt: Literal["json", "yaml"] = "json") -> str:
    """Serialise ``policy`` as a native document, deterministically."""
    doc = policy_document(policy)
    if fmt == "json":
        return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"
    if fmt == "yaml":
        return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, default_flow_style=False)
    raise ValueError(f"unknown format {fmt!r} (json or yaml)")


_PORT_SPEC: dict[str, Any] = {
    "description": "A port (80), a range ('8000-8080' or {start, end}), or '*' for any port.",
    "anyOf": [
        {"type": "integer", "minimum": 1, "maximum": 65535},
        {"type": "string", "pattern": r"^\s*(\*|[0-9]+(-[0-9]+)?)\s*$"},
        {"$ref": "#/$defs/PortRange"},
    ],
}


def policy_json_schema() -> dict[str, Any]:
    """The JSON Schema of the native document, generated from the model.

    Rule ports accept the short forms the model accepts (``80``, ``"8000-8080"``,
    ``"*"``), which pydantic's generated schema cannot know about.
    """
    spec = Policy.model_json_schema(by_alias=True, mode="validation")
    defs: dict[str, Any] = spec.pop("$defs")
    defs["PortSpec"] = _PORT_SPEC
    rule = defs["Rule"]
    rule["properties"]["ports"] = {
        "title": "Ports",
        "default": ["*"],
        "anyOf": [
            {"$ref": "#/$defs/PortSpec"},
            {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/PortSpec"}},
        ],
    }
    defs["Policy"] = spec
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": f"CNNF policy document ({API_VERSION})",
        "type": "object",
        "additionalProperties": False,
        "required": ["apiVersion", "kind", "spec"],
        "properties": {
            "apiVersion": {"const": API_VERSION},
            "kind": {"const": KIND},
            "spec": {"$ref": "#/$defs/Policy"},
        },
        "$defs": dict(sorted(defs.items())),
    }


def schema_text() -> str:
    """The schema as shipped in ``cnnf/policy/schema/policy-v1.json``."""
    return json.dumps(policy_json_schema(), indent=2, ensure_ascii=False) + "\n"
