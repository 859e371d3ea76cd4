"""Cross-reference checks a single model cannot make on its own.

The pydantic models validate each field; :func:`check_policy` validates the
policy as a whole: rules name existing objects of the kinds their list allows,
rule ids and names are unique within a list, object names are unique.
"""

from __future__ import annotations

from cnnf.errors import FieldError
from cnnf.model import ObjectKind, Policy, Rule, RuleKind

# Which object kinds each rule list allows at each end (DESIGN.md section 1).
ALLOWED_KINDS: dict[RuleKind, dict[str, frozenset[ObjectKind]]] = {
    RuleKind.CONTAINER: {
        "src": frozenset({ObjectKind.CONTAINER}),
        "dst": frozenset({ObjectKind.CONTAINER, ObjectKind.SUBNET, ObjectKind.DNS}),
    },
    RuleKind.HOST: {
        "src": frozenset({ObjectKind.HOST}),
        "dst": frozenset({ObjectKind.HOST, ObjectKind.SUBNET}),
    },
}

RULE_LISTS: tuple[tuple[RuleKind, str], ...] = (
    (RuleKind.CONTAINER, "containerRules"),
    (RuleKind.HOST, "hostRules"),
)


def rules_of(policy: Policy, kind: RuleKind) -> tuple[Rule, ...]:
    return policy.container_rules if kind is RuleKind.CONTAINER else policy.host_rules


def kinds_text(kinds: frozenset[ObjectKind]) -> str:
    names = sorted(k.value for k in kinds)
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


def check_policy(policy: Policy) -> list[FieldError]:
    """Every cross-reference problem of ``policy``, in document order (empty if none)."""
    errors: list[FieldError] = []
    kinds: dict[str, ObjectKind] = {}
    first_index: dict[str, int] = {}
    for i, obj in enumerate(policy.objects):
        if obj.name in first_index:
            errors.append(
                FieldError(
                    f"objects[{i}].name",
                    f"duplicate object name {obj.name!r} "
                    f"(first used by objects[{first_index[obj.name]}])",
                )
            )
            continue
        first_index[obj.name] = i
        kinds[obj.name] = ObjectKind(obj.kind)

    for kind, list_name in RULE_LISTS:
        seen_ids: dict[int, int] = {}
        seen_names: dict[str, int] = {}
        for i, rule in enumerate(rules_of(policy, kind)):
            path = f"{list_name}[{i}]"
            if rule.id in seen_ids:
                errors.append(
                    FieldError(
                        f"{path}.id",
                        f"duplicate rule id {rule.id} "
                        f"(first used by {list_name}[{seen_ids[rule.id]}])",
                    )
                )
            else:
                seen_ids[rule.id] = i
            if rule.name in seen_names:
                errors.append(
                    FieldError(
                        f"{path}.name",
                        f"duplicate rule name {rule.name!r} "
                        f"(first used by {list_name}[{seen_names[rule.name]}])",
                    )
                )
            else:
                seen_names[rule.name] = i
            for end in ("src", "dst"):
                ref = rule.src if end == "src" else rule.dst
                allowed = ALLOWED_KINDS[kind][end]
                found = kinds.get(ref)
                if found is None:
                    errors.append(FieldError(f"{path}.{end}", f"no object named {ref!r}"))
                elif found not in allowed:
                    where = "source" if end == "src" else "destination"
                    errors.append(
                        FieldError(
                            f"{path}.{end}",
                            f"{ref!r} is a {found.value} object; a {kind.value} rule's {where} "
                            f"must be a {kinds_text(allowed)} object",
                        )
                    )
    return errors
