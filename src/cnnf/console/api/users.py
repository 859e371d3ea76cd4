"""User management (admin only) and API tokens (each user their own)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query
from pydantic import Field, StrictBool

from cnnf.console.api.contract import errors
from cnnf.console.api.deps import MAX_INT, Admin, Caller, SessionDep, StateDep
from cnnf.console.security import MIN_PASSWORD_LENGTH, Permission, Role, allowed
from cnnf.console.services.errors import Conflict, Forbidden
from cnnf.console.services.users import (
    USER_NAME,
    NewToken,
    TokenInfo,
    TokenRequest,
    UserInfo,
    UserService,
)
from cnnf.model.rule import PolicyModel

router = APIRouter(tags=["users"])


# The schema states what the services check, so a client can validate before sending.
UserName = Annotated[str, Field(min_length=1, max_length=100, pattern=USER_NAME.pattern)]
Password = Annotated[str, Field(min_length=MIN_PASSWORD_LENGTH, max_length=1000)]


class UserCreate(PolicyModel):
    name: UserName
    role: Role
    password: Password


class UserUpdate(PolicyModel):
    role: Role | None = None
    password: Password | None = None
    disabled: StrictBool | None = None


@router.get("/users", response_model=list[UserInfo])
def list_users(*, db: SessionDep, console: StateDep,
               _: Admin) -> list[UserInfo]:
    return UserService(db, console.now).list_users()


@router.post("/users", response_model=UserInfo, status_code=201,
             responses=errors(409))
def create_user(*, body: UserCreate, db: SessionDep, console: StateDep,
                _: Admin) -> UserInfo:
    return UserService(db, console.now).create_user(body.name, body.role, body.password)


@router.get("/users/{name}", response_model=UserInfo, responses=errors(404))
def get_user(*, name: str, db: SessionDep, console: StateDep,
             _: Admin) -> UserInfo:
    return UserService(db, console.now).get_user(name)


@router.patch("/users/{name}", response_model=UserInfo, responses=errors(404, 409))
def update_user(*, name: str, body: UserUpdate, db: SessionDep, console: StateDep,
                _: Admin) -> UserInfo:
    users = UserService(db, console.now)
    current = users.get_user(name)
    losing_admin = current.role is Role.ADMIN and not current.disabled and (
        (body.role is not None and body.role is not Role.ADMIN) or body.disabled
    )
    if losing_admin and users.count_admins() <= 1:
        raise Conflict(f"{name!r} is the last enabled admin")
    return users.update_user(name, role=body.role, password=body.password,
                             disabled=body.disabled)


@router.delete("/users/{name}", status_code=204, responses=errors(404, 409))
def delete_user(*, name: str, db: SessionDep, console: StateDep,
                _: Admin) -> None:
    users = UserService(db, console.now)
    current = users.get_user(name)
    if current.role is Role.ADMIN and not current.disabled and users.count_admins() <= 1:
        raise Conflict(f"{name!r} is the last enabled admin")
    users.delete_user(name)


@router.get("/tokens", response_model=list[TokenInfo],
            responses=errors(403, s403="all=true by a role other than admin"))
def list_tokens(*,
    db: SessionDep, console: StateDep,
    everyone: Annotated[bool, Query(alias="all", description="every user's (admin)")] = False,
    who: Caller,
) -> list[TokenInfo]:
    if everyone and not allowed(who.role, Permission.ADMIN):
        raise Forbidden("only admins may list every user's tokens")
    return UserService(db, console.now).list_tokens(who, everyone=everyone)


@router.post("/tokens", response_model=NewToken, status_code=201)
def create_token(*, body: TokenRequest, db: SessionDep, console: StateDep,
                 who: Caller) -> NewToken:
    """An API token for automation, acting with the caller's role. Shown once."""
    return UserService(db, console.now).create_api_token(who, body)


@router.delete("/tokens/{token_id}", status_code=204, responses=errors(404))
def revoke_token(*, token_id: Annotated[int, Path(ge=1, le=MAX_INT)], db: SessionDep,
                 console: StateDep, who: Caller) -> None:
    UserService(db, console.now).revoke_token(
        who, token_id, any_user=allowed(who.role, Permission.ADMIN)
    )
