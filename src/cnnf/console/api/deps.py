"""Request-scoped dependencies: the store session, the caller, permission checks.

Every route declares the permission it needs with :func:`allow`; the
authorization tests read these declarations from the app's routes, so a new
route cannot escape them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

from fastapi import Depends, Query, Request, Security
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session, sessionmaker

from cnnf.console.api.contract import Guard
from cnnf.console.config import ConsoleConfig
from cnnf.console.security import LoginLimiter, Permission, allowed
from cnnf.console.services.errors import Forbidden, Unauthorized
from cnnf.console.services.policy import PolicyService
from cnnf.console.services.users import Principal, UserService
from cnnf.model.rule import RFC3339

# Integers the store keeps in 32-bit columns (ids, positions); paging offsets too.
MAX_INT = 2**31 - 1
Timestamp = Annotated[datetime, RFC3339]
Limit = Annotated[int, Query(ge=1, le=1000)]
ExpectedRevision = Annotated[int | None, Query(
    alias="expectedRevision", ge=0, le=2**63 - 1, description=(
        "the policy revision the caller reviewed (GET /policy: revision); when given, "
        "refused with 409 unless the policy is still at it"))]
Offset = Annotated[int, Query(ge=0, le=MAX_INT)]


@dataclass
class ConsoleState:
    """Everything the routes share, built once by :func:`cnnf.console.app.create_app`."""

    config: ConsoleConfig
    sessions: sessionmaker[Session]
    limiter: LoginLimiter
    now: Callable[[], datetime]


def state(request: Request) -> ConsoleState:
    console: ConsoleState = request.app.state.console
    return console


async def _state(request: Request) -> ConsoleState:
    # async: FastAPI runs a plain ``def`` dependency in a worker thread, a thread
    # hop per request for an attribute read (costly on the Defender link's
    # thousands of long-polls)
    return state(request)


StateDep = Annotated[ConsoleState, Depends(_state)]


def session(console: StateDep) -> Iterator[Session]:
    with console.sessions() as s:
        yield s


SessionDep = Annotated[Session, Depends(session)]
_bearer = HTTPBearer(auto_error=False, description="A session token from login, or an API token")


def principal(
    console: StateDep,
    db: SessionDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    if credentials is None:
        raise Unauthorized("authentication required: send 'Authorization: Bearer <token>'")
    return UserService(db, console.now).authenticate(credentials.credentials)


class Require(Guard):
    """Dependency: the caller, if its role grants ``permission`` (else 403)."""

    def __init__(self, permission: Permission) -> None:
        self.permission = permission

    def __call__(self, who: Annotated[Principal, Depends(principal)]) -> Principal:
        if not allowed(who.role, self.permission):
            raise Forbidden(
                f"role {who.role.value!r} may not do this (needs {self.permission.value!r})"
            )
        return who

    async def check(self, request: Request) -> None:
        console = state(request)
        credentials = await _bearer(request)

        def run() -> None:
            with console.sessions() as db:
                self(principal(console, db, credentials))

        await run_in_threadpool(run)

    def __repr__(self) -> str:
        return f"Require({self.permission.value})"


_REQUIRES = {p: Require(p) for p in Permission}


def allow(permission: Permission) -> Any:
    """The dependency marker for ``permission`` (use the aliases below in signatures).

    Declared as a security scope, so the OpenAPI document shows each operation's
    permission (``security: [{HTTPBearer: [policy]}]``)."""
    return Security(_REQUIRES[permission], scopes=[permission.value])


# ``who: Writer`` in a route's signature: the caller, if allowed (else 401/403).
Reader = Annotated[Principal, allow(Permission.READ)]
Writer = Annotated[Principal, allow(Permission.POLICY)]
Admin = Annotated[Principal, allow(Permission.ADMIN)]
Caller = Annotated[Principal, allow(Permission.SELF)]


def policy_service(db: Session, console: ConsoleState, who: Principal) -> PolicyService:
    return PolicyService(db, actor=who.name, now=console.now)
