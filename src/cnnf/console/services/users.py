"""Users, logins, session and API tokens."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated

from pydantic import Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from cnnf.console.security import (
    Role,
    burn_password_check,
    hash_password,
    new_token,
    password_problem,
    token_hash,
    verify_password,
)
from cnnf.console.services import commit
from cnnf.console.services.errors import Conflict, InvalidInput, NotFound, Unauthorized
from cnnf.console.services.policy import Now, utcnow
from cnnf.console.store.models import TokenRow, UserRow
from cnnf.errors import FieldError
from cnnf.model.rule import JSON_INTEGER, PolicyModel

USER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,99}$")
# Writing last_used on every request would turn reads into writes; once a minute is enough.
LAST_USED_GRANULARITY = timedelta(minutes=1)


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a user, through one token."""

    user_id: int
    name: str
    role: Role
    token_id: int
    token_kind: str


class UserInfo(PolicyModel):
    name: str
    role: Role
    disabled: bool
    created: datetime


class TokenInfo(PolicyModel):
    id: int
    user: str
    kind: str
    name: str
    created: datetime
    expires: datetime | None
    last_used: datetime | None


class NewToken(PolicyModel):
    """A freshly issued secret: shown once, only its hash is kept."""

    token: str
    info: TokenInfo


class TokenRequest(PolicyModel):
    name: Annotated[str, Field(min_length=1, max_length=200)]
    expires_in_days: Annotated[int | None, Field(ge=1, le=3650), JSON_INTEGER] = None


def _user_info(row: UserRow) -> UserInfo:
    return UserInfo(name=row.name, role=Role(row.role), disabled=row.disabled, created=row.created)


def _token_info(row: TokenRow) -> TokenInfo:
    return TokenInfo(id=row.id, user=row.user.name, kind=row.kind, name=row.name,
                     created=row.created, expires=row.expires, last_used=row.last_used)


def check_user_name(name: str) -> None:
    if not USER_NAME.match(name):
        raise InvalidInput([FieldError(
            "name", f"{name!r} is not a user name (letters, digits, . _ @ -; at most 100)"
        )])


def check_password(password: str) -> None:
    problem = password_problem(password)
    if problem:
        raise InvalidInput([FieldError("password", problem)])


class UserService:
    def __init__(self, session: Session, now: Now = utcnow) -> None:
        self.session = session
        self.now = now

    def _commit(self) -> None:
        commit(self.session)

    def _row(self, name: str) -> UserRow:
        row = self.session.scalar(select(UserRow).where(UserRow.name == name))
        if row is None:
            raise NotFound(f"no user named {name!r}")
        return row

    # --- users -----------------------------------------------------------------------

    def create_user(self, name: str, role: Role, password: str) -> UserInfo:
        check_user_name(name)
        check_password(password)
        if self.session.scalar(select(UserRow.id).where(UserRow.name == name)) is not None:
            raise Conflict(f"a user named {name!r} already exists")
        row = UserRow(name=name, role=role.value, password_hash=hash_password(password),
                      disabled=False, created=self.now())
        self.session.add(row)
        self._commit()
        return _user_info(row)

    def list_users(self) -> list[UserInfo]:
        return [_user_info(r) for r in self.session.scalars(select(UserRow).order_by(UserRow.name))]

    def get_user(self, name: str) -> UserInfo:
        return _user_info(self._row(name))

    def update_user(
        self, name: str, *, role: Role | None = None, password: str | None = None,
        disabled: bool | None = None,
    ) -> UserInfo:
        row = self._row(name)
        if password is not None:
            check_password(password)
            row.password_hash = hash_password(password)
            self._drop_sessions(row.id)
        if role is not None:
            row.role = role.value
        if disabled is not None:
            row.disabled = disabled
            if disabled:
                self._drop_sessions(row.id)
        self._commit()
        return _user_info(row)

    def _drop_sessions(self, user_id: int) -> None:
        for token in self.session.scalars(
            select(TokenRow).where(TokenRow.user_id == user_id, TokenRow.kind == "session")
        ).unique():
            self.session.delete(token)

    def delete_user(self, name: str) -> None:
        row = self._row(name)
        self.session.delete(row)
        self._commit()

    def count_admins(self) -> int:
        return len(self.session.scalars(select(UserRow.id).where(
            UserRow.role == Role.ADMIN.value, UserRow.disabled.is_(False))).all())

    # --- logins and tokens -----------------------------------------------------------

    def login(self, name: str, password: str, ttl_seconds: int) -> NewToken:
        row = self.session.scalar(select(UserRow).where(UserRow.name == name))
        if row is None:
            burn_password_check(password)
            raise Unauthorized("wrong user name or password")
        if not verify_password(row.password_hash, password) or row.disabled:
            raise Unauthorized("wrong user name or password")
        return self.issue_session(row.name, ttl_seconds)

    def issue_session(self, name: str, ttl_seconds: int) -> NewToken:
        """A session token for an already authenticated user."""
        row = self._row(name)
        return self._issue(row, "session", "login", self.now() + timedelta(seconds=ttl_seconds))

    def _issue(self, user: UserRow, kind: str, name: str, expires: datetime | None) -> NewToken:
        secret = new_token()
        token = TokenRow(user_id=user.id, kind=kind, name=name, token_hash=token_hash(secret),
                         created=self.now(), expires=expires)
        token.user = user
        self.session.add(token)
        self._commit()
        return NewToken(token=secret, info=_token_info(token))

    def authenticate(self, secret: str) -> Principal:
        token = self.session.scalar(
            select(TokenRow).where(TokenRow.token_hash == token_hash(secret))
        )
        now = self.now()
        if token is None or token.user.disabled:
            raise Unauthorized("invalid or revoked token")
        if token.expires is not None and token.expires <= now:
            raise Unauthorized("token expired")
        if token.last_used is None or now - token.last_used >= LAST_USED_GRANULARITY:
            token.last_used = now
            self._commit()
        return Principal(user_id=token.user_id, name=token.user.name,
                         role=Role(token.user.role), token_id=token.id, token_kind=token.kind)

    def create_api_token(self, principal: Principal, request: TokenRequest) -> NewToken:
        user = self.session.get(UserRow, principal.user_id)
        if user is None:
            raise Unauthorized("the user no longer exists")
        expires = (
            self.now() + timedelta(days=request.expires_in_days)
            if request.expires_in_days else None
        )
        return self._issue(user, "api", request.name, expires)

    def list_tokens(self, principal: Principal, *, everyone: bool = False) -> list[TokenInfo]:
        query = select(TokenRow).order_by(TokenRow.id)
        if not everyone:
            query = query.where(TokenRow.user_id == principal.user_id)
        return [_token_info(r) for r in self.session.scalars(query).unique()]

    def revoke_token(self, principal: Principal, token_id: int, *, any_user: bool) -> None:
        token = self.session.get(TokenRow, token_id)
        if token is None or (token.user_id != principal.user_id and not any_user):
            raise NotFound(f"no token with id {token_id}")
        self.session.delete(token)
        self._commit()

    def logout(self, principal: Principal) -> None:
        token = self.session.get(TokenRow, principal.token_id)
        if token is not None:
            self.session.delete(token)
            self._commit()
