"""Fixtures for Console tests: a store on SQLite or on a real PostgreSQL server
(started by the fixture), the app in-process, and API clients per role."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from consoletest import ApiClient, Clock, Console

from cnnf.console.app import create_app
from cnnf.console.config import ConsoleConfig
from cnnf.console.security import Role
from cnnf.console.store.db import connect

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import postgres


@pytest.fixture(scope="session")
def pg_server() -> Iterator[postgres.PostgresServer]:
    reason = postgres.available()
    if reason:
        pytest.fail(f"PostgreSQL tests cannot run: {reason} (deselect with -m 'not postgres')")
    with postgres.postgres_server() as server:
        yield server


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store' / 'console.db'}"
    server: postgres.PostgresServer = request.getfixturevalue("pg_server")
    return server.create_database()


@pytest.fixture
def console(db_url: str, tmp_path: Path) -> Iterator[Console]:
    clock = Clock()
    engine = connect(db_url)
    config = ConsoleConfig(db_url=db_url, data_dir=tmp_path, max_body_bytes=256 * 1024)
    app = create_app(config, engine=engine, now=clock.now, monotonic=clock.monotonic)
    c = Console(app=app, engine=engine, clock=clock)
    for role in Role:
        c.tokens[role] = c.add_user(f"{role.value}-user", role)
    try:
        yield c
    finally:
        for client in c.clients:
            client.close()
        c.app.state.link.forwarder.close()  # the lifespan closes it in a served Console
        engine.dispose()


@pytest.fixture
def admin(console: Console) -> ApiClient:
    return console.as_role(Role.ADMIN)
