"""The whole policy: mode switches, ordered rules, network objects, settings."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import Field, StrictBool

from cnnf.model.objects import NetworkObject
from cnnf.model.rule import JSON_INTEGER, Effect, PolicyModel, Rule


class BlockMode(StrEnum):
    """How a prevented connection is refused."""

    RESET = "reset"  # TCP reset: the client fails at once
    DROP = "drop"  # silent drop: the client waits for its timeout


class Policy(PolicyModel):
    """A complete policy. Cross-references (rules naming objects, unique ids and
    names, rule source kinds) are checked by :func:`cnnf.policy.check.check_policy`."""

    container_enabled: StrictBool = False
    host_enabled: StrictBool = False
    default_effect: Effect = Effect.ALLOW  # for connections no rule matches
    # The default effect being tried out: evaluated as if in force for
    # connections no rule matches, reported as "would" verdicts, not enforced.
    staged_default_effect: Effect | None = None
    block_mode: BlockMode = BlockMode.RESET
    objects: tuple[NetworkObject, ...] = ()
    container_rules: tuple[Rule, ...] = ()
    host_rules: tuple[Rule, ...] = ()
    revision: Annotated[int, Field(ge=0), JSON_INTEGER] = 0

    @property
    def staging(self) -> bool:
        """Whether anything is staged: an enabled staged rule or a staged default."""
        return self.staged_default_effect is not None or any(
            r.staged and not r.disabled for r in (*self.container_rules, *self.host_rules))

    def in_force(self) -> Policy:
        """The policy as it would be with everything staged promoted: staged rules
        in force, the staged default effect as the default."""
        def promote(rules: tuple[Rule, ...]) -> tuple[Rule, ...]:
            return tuple(r.model_copy(update={"staged": False}) if r.staged else r
                         for r in rules)
        return self.model_copy(update={
            "container_rules": promote(self.container_rules),
            "host_rules": promote(self.host_rules),
            "default_effect": self.staged_default_effect or self.default_effect,
            "staged_default_effect": None,
        })

    def object(self, name: str) -> NetworkObject | None:
        for obj in self.objects:
            if obj.name == name:
                return obj
        return None
