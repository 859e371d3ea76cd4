"""Defender management: enrollment tokens, enrollment, the list, revocation; and
the cluster inventory as users see it."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request, Response

from cnnf.console.api.contract import errors
from cnnf.console.api.defender import hub
from cnnf.console.api.deps import Admin, Reader, SessionDep, StateDep
from cnnf.console.services.defenders import (
    DefenderInfo,
    DefenderService,
    Enrolled,
    EnrollmentToken,
    EnrollmentTokenRequest,
    EnrollRequest,
)
from cnnf.model.records import ClusterInventory

router = APIRouter(tags=["defenders"])
DefenderId = Annotated[str, Path(min_length=1, max_length=64)]


@router.post("/defenders/enrollment-tokens", response_model=EnrollmentToken)
def create_enrollment_token(*, db: SessionDep, console: StateDep, who: Admin,
                            body: EnrollmentTokenRequest | None = None) -> EnrollmentToken:
    """A new enrollment token (shown once; reusable by many Defenders until it expires)."""
    hours = (body or EnrollmentTokenRequest()).expires_in_hours
    return DefenderService(db, console.now).create_enrollment_token(who.name, hours)


@router.post("/defenders/enroll", response_model=Enrolled,
             responses=errors(401, s401="Invalid or expired enrollment token"))
def enroll(body: EnrollRequest, *, db: SessionDep, console: StateDep) -> Enrolled:
    """Trade an enrollment token for a Defender credential (no user credentials)."""
    return DefenderService(db, console.now).enroll(body)


@router.get("/defenders", response_model=list[DefenderInfo])
def list_defenders(*, db: SessionDep, console: StateDep, _: Reader) -> list[DefenderInfo]:
    """Enrolled Defenders: connected if seen in the last 30 s, version, protected workloads."""
    return DefenderService(db, console.now).list_defenders()


@router.delete("/defenders/{defender_id}", status_code=204, response_class=Response,
               responses=errors(404))
def revoke_defender(defender_id: DefenderId, *, request: Request, db: SessionDep,
                    console: StateDep, _: Admin) -> Response:
    """Revoke a Defender's credential: every later call of it gets 401."""
    DefenderService(db, console.now).revoke(defender_id)
    link = hub(request)
    link.changed("credentials")  # every replica rechecks its cached credentials first
    link.changed("inventory")
    return Response(status_code=204)


@router.get("/inventory", response_model=ClusterInventory)
def cluster_inventory(*, db: SessionDep, console: StateDep, _: Reader) -> ClusterInventory:
    """Containers and hosts cluster-wide, as the Defenders last reported them."""
    return DefenderService(db, console.now).cluster_inventory()
