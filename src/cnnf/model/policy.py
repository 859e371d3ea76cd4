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
    block_mode: BlockMode = BlockMode.RESET
    objects: tuple[NetworkObject, ...] = ()
    container_rules: tuple[Rule, ...] = ()
    host_rules: tuple[Rule, ...] = ()
    revision: Annotated[int, Field(ge=0), JSON_INTEGER] = 0

    def object(self, name: str) -> NetworkObject | None:
        for obj in self.objects:
            if obj.name == name:
                return obj
        return None
