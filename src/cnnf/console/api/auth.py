"""Login, logout, and who am I."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, HTTPException, Request
from pydantic import Field

from cnnf.console.api.contract import errors
from cnnf.console.api.deps import Caller, SessionDep, StateDep
from cnnf.console.security import Role
from cnnf.console.services.errors import Unauthorized
from cnnf.console.services.users import UserService
from cnnf.model.rule import PolicyModel

router = APIRouter(prefix="/auth", tags=["auth"])


class LoginRequest(PolicyModel):
    username: Annotated[str, Field(min_length=1, max_length=100)]
    password: Annotated[str, Field(min_length=1, max_length=1000)]


class LoginResponse(PolicyModel):
    token: str
    token_type: str = "bearer"
    expires: datetime | None
    role: Role


class Me(PolicyModel):
    name: str
    role: Role
    token_kind: str


@router.post("/login", response_model=LoginResponse,
             responses=errors(401, 429, s401="Wrong user name or password"))
def login(
    *, body: LoginRequest, request: Request, db: SessionDep, console: StateDep
) -> LoginResponse:
    """Exchange a user name and password for a session token (no credentials needed)."""
    client = request.client.host if request.client else "-"
    wait = console.limiter.retry_after(body.username, client)
    if wait:
        raise HTTPException(
            429, f"too many failed logins for {body.username!r}; retry in {math.ceil(wait)} s",
            headers={"Retry-After": str(math.ceil(wait))},
        )
    users = UserService(db, console.now)
    try:
        issued = users.login(body.username, body.password, console.config.session_ttl_seconds)
    except Unauthorized:
        console.limiter.failed(body.username, client)
        raise
    console.limiter.succeeded(body.username, client)
    role = users.get_user(body.username).role
    return LoginResponse(token=issued.token, expires=issued.info.expires, role=role)


@router.post("/logout", status_code=204)
def logout(*,
    db: SessionDep, console: StateDep, who: Caller
) -> None:
    """Revoke the token this request was made with."""
    UserService(db, console.now).logout(who)


@router.get("/me", response_model=Me)
def me(*, who: Caller) -> Me:
    return Me(name=who.name, role=who.role, token_kind=who.token_kind)
