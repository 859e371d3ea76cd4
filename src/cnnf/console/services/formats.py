"""The one place where the Console reaches the policy modules: the cross-reference
check and the document formats (native ``cnnf/v1`` and the original product's)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

from cnnf.errors import FieldError, PolicyValidationError
from cnnf.model import Policy
from cnnf.policy.check import check_policy
from cnnf.policy.document import (
    dump_policy,
    load_policy,
    looks_like_original_format,
    parse_text,
)
from cnnf.policy.prisma import from_prisma, to_prisma


@dataclass
class Loaded:
    policy: Policy
    unmapped: list[str] = field(default_factory=list)


def check(policy: Policy) -> list[FieldError]:
    """Cross references: rules name existing objects of allowed kinds, unique ids and names."""
    return list(check_policy(policy))


def load_native(data: bytes | str | dict[str, Any], source: str = "") -> Policy:
    return load_policy(data, source=source)


def dump_native(policy: Policy) -> str:
    return dump_policy(policy, "json")


WHOLE_POLICY_KEYS = ("containerEnabled", "hostEnabled", "containerRules", "hostRules",
                     "networkEntities")


def load_prisma(data: bytes | str | dict[str, Any], source: str = "", *,
                whole: bool = False) -> Loaded:
    """An original-format document as a policy. ``whole``: the document replaces
    the whole policy (the original's PUT), so each part must be present: a list
    left out is refused, not read as "no rules"."""
    tree = parse_text(data, source=source) if isinstance(data, str | bytes) else data
    if not isinstance(tree, dict):
        raise PolicyValidationError([FieldError("", "the document must be a mapping")], source)
    missing = [k for k in WHOLE_POLICY_KEYS if k not in tree] if whole else []
    if missing:
        raise PolicyValidationError(
            [FieldError(k, "required field is missing (the document replaces the whole "
                           "policy; send [] or false to mean none)") for k in missing], source)
    conversion = from_prisma(tree, source=source)
    return Loaded(conversion.result, list(conversion.unmapped))


def load_recognised(data: bytes | str, source: str = "",
                    ) -> tuple[Literal["native", "prisma"], Loaded]:
    """A native document, or one in the original product's format recognised as such
    (``_id: networkFirewall``): which it was ("native" or "prisma"), and the policy."""
    tree = parse_text(data, source=source)
    if looks_like_original_format(tree):
        return "prisma", load_prisma(tree, source=source)
    return "native", Loaded(load_native(tree, source=source))


def dump_prisma(policy: Policy) -> tuple[dict[str, Any], list[str]]:
    conversion = to_prisma(policy)
    return conversion.result, list(conversion.unmapped)


def dump_prisma_text(policy: Policy) -> tuple[str, list[str]]:
    doc, unmapped = dump_prisma(policy)
    return json.dumps(doc, indent=2) + "\n", unmapped
