"""Learn a policy from the stored flows (proposals) and simulate drafts (what-if)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Path

from cnnf.console.api.contract import errors
from cnnf.console.api.deps import (
    MAX_INT,
    Limit,
    Offset,
    Reader,
    SessionDep,
    StateDep,
    Writer,
    policy_service,
)
from cnnf.console.services.learning import (
    Applied,
    ApplyRequest,
    LearningService,
    ProposalOut,
    ProposalPage,
    ProposalRequest,
    SimulateRequest,
    SimulateResult,
)
from cnnf.console.services.users import Principal

router = APIRouter(prefix="/policy", tags=["learn"])
ProposalId = Annotated[int, Path(ge=1, le=MAX_INT)]


def _service(db: SessionDep, console: StateDep, who: Principal) -> LearningService:
    return LearningService(db, policy_service(db, console, who))


@router.post("/proposals", response_model=ProposalOut, status_code=201)
def create_proposal(*, body: Annotated[ProposalRequest, Body()], db: SessionDep,
                    console: StateDep, who: Writer) -> ProposalOut:
    """Learn a policy from the flows of a window (and scope): the resulting
    policy, a diff against the current one, and every proposed rule with its
    evidence. Stored; nothing in the policy changes until it is applied.
    ``since`` must be before ``until`` (422 otherwise)."""
    return _service(db, console, who).propose(body)


@router.get("/proposals", response_model=ProposalPage)
def list_proposals(*, db: SessionDep, console: StateDep, limit: Limit = 100,
                   offset: Offset = 0, who: Reader) -> ProposalPage:
    """Stored proposals, newest first."""
    return _service(db, console, who).page(limit, offset)


@router.get("/proposals/{proposal_id}", response_model=ProposalOut, responses=errors(404))
def get_proposal(*, proposal_id: ProposalId, db: SessionDep, console: StateDep,
                 who: Reader) -> ProposalOut:
    return _service(db, console, who).get(proposal_id)


@router.post("/proposals/{proposal_id}/apply", response_model=Applied,
             responses=errors(404, s409="The policy changed since the proposal was learnt, "
                                        "or the proposal has no such rule; nothing was "
                                        "changed"))
def apply_proposal(*, proposal_id: ProposalId, body: Annotated[ApplyRequest, Body()],
                   db: SessionDep, console: StateDep, who: Writer) -> Applied:
    """Apply the chosen proposed rules (all by default) and the objects they use
    as one change: one revision."""
    return _service(db, console, who).apply(proposal_id, body)


@router.post("/simulate", response_model=SimulateResult, responses=errors(
    404, 409, s409="The changes do not fit the current policy (named); nothing was changed"))
def simulate_policy(*, body: Annotated[SimulateRequest, Body()], db: SessionDep,
                    console: StateDep, who: Writer) -> SimulateResult:
    """Evaluate a draft (a whole policy, changes to the current one, or a stored
    proposal) against the flows of a window with the identities recorded with
    them: the flows whose verdict would change, by edge and by deciding rule.
    Nothing changes. Exactly one draft; ``since`` before ``until``; a whole
    draft keeps the policy's own rules (rules name objects it has, of the kinds
    their list allows; unique names and ids; ordered port ranges), else 422;
    changes that do not fit the current policy (a rule naming an object it
    lacks, a rule to remove it does not have) are a conflict, 409."""
    return _service(db, console, who).simulate(body)
