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
    evidence. Stored; nothing in the policy changes until it is applied."""
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
             responses=errors(404, s409="The policy changed since the proposal was learnt; "
                                        "nothing was changed"))
def apply_proposal(*, proposal_id: ProposalId, body: Annotated[ApplyRequest, Body()],
                   db: SessionDep, console: StateDep, who: Writer) -> Applied:
    """Apply the chosen proposed rules (all by default) and the objects they use
    as one change: one revision."""
    return _service(db, console, who).apply(proposal_id, body)


@router.post("/simulate", response_model=SimulateResult, responses=errors(404))
def simulate_policy(*, body: Annotated[SimulateRequest, Body()], db: SessionDep,
                    console: StateDep, who: Writer) -> SimulateResult:
    """Evaluate a draft (a whole policy, changes to the current one, or a stored
    proposal) against the flows of a window with the identities recorded with
    them: the flows whose verdict would change, by edge and by deciding rule.
    Nothing changes."""
    return _service(db, console, who).simulate(body)
