"""Helpers for Console tests: an injected clock, an in-process API client, the
Console under test with one signed-in user per role."""

from __future__ import annotations

import asyncio
import functools
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from fastapi import FastAPI
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from cnnf.console.security import Role, hash_password
from cnnf.console.services.users import UserService
from cnnf.console.store.models import UserRow

PASSWORD = "correct horse battery"


@dataclass
class Clock:
    """Injected time: wall clock for records, monotonic for rate limits."""

    wall: datetime = field(default_factory=lambda: datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))
    mono: float = 1000.0

    def now(self) -> datetime:
        return self.wall

    def monotonic(self) -> float:
        return self.mono

    def advance(self, seconds: float) -> None:
        self.wall += timedelta(seconds=seconds)
        self.mono += seconds


class ApiClient:
    """A synchronous client calling the ASGI app in-process (no sockets)."""

    def __init__(self, app: FastAPI, token: str | None = None, address: str = "127.0.0.1"):
        self._loop = asyncio.new_event_loop()
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app, client=(address, 40000)),
            base_url="http://console.test", headers=headers,
        )

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        return self._loop.run_until_complete(self._client.request(method, url, **kwargs))

    def get(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", url, **kwargs)

    def put(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("PUT", url, **kwargs)

    def patch(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("PATCH", url, **kwargs)

    def delete(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("DELETE", url, **kwargs)

    def close(self) -> None:
        self._loop.run_until_complete(self._client.aclose())
        self._loop.close()


@dataclass
class Console:
    app: FastAPI
    engine: Engine
    clock: Clock
    clients: list[ApiClient] = field(default_factory=list)
    tokens: dict[Role, str] = field(default_factory=dict)

    def client(self, token: str | None = None, address: str = "127.0.0.1") -> ApiClient:
        c = ApiClient(self.app, token, address)
        self.clients.append(c)
        return c

    def as_role(self, role: Role) -> ApiClient:
        return self.client(self.tokens[role])

    def session(self) -> Session:
        return Session(self.engine)

    def add_user(self, name: str, role: Role, password: str = PASSWORD) -> str:
        """Create a user in the store and open a session; returns its token.

        argon2 is slow on purpose, so the fixture stores a hash computed once
        (login itself is tested on its own, through the API)."""
        with self.session() as s:
            s.add(UserRow(name=name, role=role.value, password_hash=_hash(password),
                          disabled=False, created=self.clock.now()))
            s.commit()
            return UserService(s, self.clock.now).issue_session(name, 3600).token


@functools.cache
def _hash(password: str) -> str:
    return hash_password(password)
