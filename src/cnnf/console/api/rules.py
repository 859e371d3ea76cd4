"""Container rules and host rules: ordered lists with insert-at and move."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Path, Query
from pydantic import Field

from cnnf.console.api.contract import errors
from cnnf.console.api.deps import (
    MAX_INT,
    ExpectedRevision,
    Reader,
    SessionDep,
    StateDep,
    Writer,
    policy_service,
)
from cnnf.console.services.policy import RuleDraft
from cnnf.model import Rule, RuleKind
from cnnf.model.rule import JSON_INTEGER, PolicyModel

router = APIRouter(prefix="/rules/{kind}", tags=["rules"])
Kind = Annotated[RuleKind, Path(description="container or host")]
RuleId = Annotated[int, Path(ge=1, le=MAX_INT)]


class PlacedRule(Rule):
    """A rule with its place in its list (0 is evaluated first)."""

    position: int


class Move(PolicyModel):
    position: Annotated[int, Field(ge=0, le=MAX_INT), JSON_INTEGER]


def _placed(position: int, rule: Rule) -> PlacedRule:
    return PlacedRule.model_validate({**rule.model_dump(), "position": position})


@router.get("", response_model=list[PlacedRule])
def list_rules(*, kind: Kind, db: SessionDep, console: StateDep,
               who: Reader) -> list[PlacedRule]:
    policy = policy_service(db, console, who).policy()
    rules = policy.container_rules if kind is RuleKind.CONTAINER else policy.host_rules
    return [_placed(i, r) for i, r in enumerate(rules)]


_CLASH = ("Clashes with the stored policy; nothing was changed: the id or name is in use, "
          "an object the rule names does not exist or is of a kind this end cannot have, "
          "or the position is past the end of the list")


@router.post("", response_model=PlacedRule, status_code=201, responses=errors(409, s409=_CLASH))
def create_rule(*,
    kind: Kind, draft: Annotated[RuleDraft, Body()], db: SessionDep, console: StateDep,
    position: Annotated[
        int | None, Query(ge=0, le=MAX_INT, description="insert here; default: last")
    ] = None,
    who: Writer,
) -> PlacedRule:
    service = policy_service(db, console, who)
    rule = service.create_rule(kind, draft, position)
    return _placed(*service.get_rule(kind, rule.id))


@router.get("/{rule_id}", response_model=PlacedRule, responses=errors(404))
def get_rule(*, kind: Kind, rule_id: RuleId, db: SessionDep, console: StateDep,
             who: Reader) -> PlacedRule:
    return _placed(*policy_service(db, console, who).get_rule(kind, rule_id))


@router.put("/{rule_id}", response_model=PlacedRule, responses=errors(404, 409, s409=_CLASH))
def update_rule(*, kind: Kind, rule_id: RuleId, draft: Annotated[RuleDraft, Body()],
                db: SessionDep, console: StateDep,
                who: Writer) -> PlacedRule:
    service = policy_service(db, console, who)
    service.update_rule(kind, rule_id, draft)
    return _placed(*service.get_rule(kind, rule_id))


@router.delete("/{rule_id}", status_code=204, responses=errors(404))
def delete_rule(*, kind: Kind, rule_id: RuleId, db: SessionDep, console: StateDep,
                who: Writer) -> None:
    policy_service(db, console, who).delete_rule(kind, rule_id)


@router.post("/{rule_id}/move", response_model=list[PlacedRule],
             responses=errors(404, 409, s409="the position is past the end of the list"))
def move_rule(*, kind: Kind, rule_id: RuleId, body: Move, db: SessionDep, console: StateDep,
              who: Writer) -> list[PlacedRule]:
    """Move a rule to ``position``; returns the list in its new order."""
    rules = policy_service(db, console, who).move_rule(kind, rule_id, body.position)
    return [_placed(i, r) for i, r in enumerate(rules)]


@router.post("/{rule_id}/promote", response_model=PlacedRule,
             responses=errors(404, 409, s409=(
                 "the rule is not staged, or the policy is not at expectedRevision")))
def promote_rule(*, kind: Kind, rule_id: RuleId, db: SessionDep, console: StateDep,
                 expected_revision: ExpectedRevision = None, who: Writer) -> PlacedRule:
    """Put a staged rule in force (its ``staged`` flag cleared): one change, one
    revision; Defenders enforce it from that revision on, unless the rule is also
    disabled or enforcement of its kind is off (the settings' switches). With
    ``expectedRevision``, only if the policy is still at that revision (else 409,
    nothing changed): what was reviewed is what is promoted."""
    service = policy_service(db, console, who)
    service.promote_rule(kind, rule_id, expected_revision)
    return _placed(*service.get_rule(kind, rule_id))
