"""The one place where the Console reaches the policy modules it depends on:
cross-reference checks and the document formats (native and the original
product's). They are looked up at call time so the Console keeps working, with
a minimal built-in check and the plain native envelope, while they land."""

from __future__ import annotations

import importlib
import json
from collections import Counter
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from pydantic import ValidationError

from cnnf.errors import CnnfError, FieldError, PolicyValidationError
from cnnf.model import ObjectKind, Policy

API_VERSION = "cnnf/v1"

_SRC_KINDS = {"containerRules": {ObjectKind.CONTAINER}, "hostRules": {ObjectKind.HOST}}
_DST_KINDS = {
    "containerRules": {ObjectKind.CONTAINER, ObjectKind.SUBNET, ObjectKind.DNS},
    "hostRules": {ObjectKind.HOST, ObjectKind.SUBNET},
}


def _module(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


class FormatUnavailable(CnnfError):
    """The requested policy format is not available in this build."""


@dataclass
class Loaded:
    policy: Policy
    unmapped: list[str] = field(default_factory=list)


def check(policy: Policy) -> list[FieldError]:
    """Cross references: :func:`cnnf.policy.check.check_policy` when present."""
    module = _module("cnnf.policy.check")
    if module is not None:
        return list(module.check_policy(policy))
    return _builtin_check(policy)


def _builtin_check(policy: Policy) -> list[FieldError]:
    errors: list[FieldError] = []
    names = Counter(o.name for o in policy.objects)
    for i, obj in enumerate(policy.objects):
        if names[obj.name] > 1:
            errors.append(FieldError(f"objects[{i}].name", f"duplicate object name {obj.name!r}"))
    for list_name, rules in (
        ("containerRules", policy.container_rules),
        ("hostRules", policy.host_rules),
    ):
        ids = Counter(r.id for r in rules)
        rule_names = Counter(r.name for r in rules)
        for i, rule in enumerate(rules):
            path = f"{list_name}[{i}]"
            if ids[rule.id] > 1:
                errors.append(FieldError(f"{path}.id", f"duplicate rule id {rule.id}"))
            if rule_names[rule.name] > 1:
                errors.append(FieldError(f"{path}.name", f"duplicate rule name {rule.name!r}"))
            for end, kinds in (("src", _SRC_KINDS[list_name]), ("dst", _DST_KINDS[list_name])):
                ref = getattr(rule, end)
                target = policy.object(ref)
                if target is None:
                    errors.append(FieldError(f"{path}.{end}", f"no object named {ref!r}"))
                elif target.kind not in kinds:
                    allowed = " or ".join(sorted(kinds))
                    errors.append(
                        FieldError(
                            f"{path}.{end}",
                            f"object {ref!r} is a {target.kind} object; {end} must be {allowed}",
                        )
                    )
    return errors


def _pydantic_errors(exc: ValidationError, prefix: str = "") -> list[FieldError]:
    out = []
    for err in exc.errors():
        path = prefix
        for part in err["loc"]:
            if isinstance(part, int):
                path += f"[{part}]"
            else:
                path += f".{part}" if path else str(part)
        out.append(FieldError(path, f"{err['msg']} (got {err.get('input')!r})"))
    return out


def load_native(data: bytes | str | dict[str, Any], source: str = "") -> Policy:
    module = _module("cnnf.policy.document")
    if module is not None:
        policy: Policy = module.load_policy(data, source=source)
        return policy
    if not isinstance(data, dict):
        try:
            data = json.loads(data)
        except ValueError as exc:
            raise PolicyValidationError([FieldError("", f"not JSON: {exc}")], source) from None
    if not isinstance(data, dict):
        raise PolicyValidationError([FieldError("", "the document must be a mapping")], source)
    errors = []
    if data.get("apiVersion") != API_VERSION:
        errors.append(FieldError("apiVersion", f"must be {API_VERSION!r}"))
    if data.get("kind") != "Policy":
        errors.append(FieldError("kind", "must be 'Policy'"))
    if errors:
        raise PolicyValidationError(errors, source)
    try:
        return Policy.model_validate(data.get("spec", {}))
    except ValidationError as exc:
        raise PolicyValidationError(_pydantic_errors(exc, "spec"), source) from None


def dump_native(policy: Policy) -> str:
    module = _module("cnnf.policy.document")
    if module is not None:
        text: str = module.dump_policy(policy, "json")
        return text
    doc = {"apiVersion": API_VERSION, "kind": "Policy", "spec": policy.model_dump(mode="json")}
    return json.dumps(doc, indent=2) + "\n"


def _prisma() -> ModuleType:
    module = _module("cnnf.policy.prisma")
    if module is None:
        raise FormatUnavailable("the prisma format is not available in this build")
    return module


def load_prisma(data: bytes | str | dict[str, Any], source: str = "") -> Loaded:
    module = _prisma()
    if not isinstance(data, dict):
        try:
            data = json.loads(data)
        except ValueError as exc:
            raise PolicyValidationError([FieldError("", f"not JSON: {exc}")], source) from None
    if not isinstance(data, dict):
        raise PolicyValidationError([FieldError("", "the document must be a mapping")], source)
    conversion = module.from_prisma(data)
    return Loaded(conversion.result, list(conversion.unmapped))


def dump_prisma(policy: Policy) -> tuple[dict[str, Any], list[str]]:
    conversion = _prisma().to_prisma(policy)
    return conversion.result, list(conversion.unmapped)
