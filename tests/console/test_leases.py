"""Leases on a real store (SQLite and PostgreSQL): one holder at a time, renewed
while alive, taken over once a dead holder's expiry passed, at once after a
clean release; the injected clocks stand in for the passing time."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from consoletest import Clock
from sqlalchemy import event
from sqlalchemy.orm import Session, sessionmaker

from cnnf.console.services.leases import Lease
from cnnf.console.store.db import connect, migrate
from cnnf.console.store.models import LeaseRow


def _clocks() -> Clock:
    return Clock(wall=datetime(2026, 11, 30, 12, 0, tzinfo=UTC), mono=100.0)


@pytest.fixture
def sessions(db_url: str) -> Iterator[sessionmaker[Session]]:
    engine = connect(db_url)
    migrate(engine)
    try:
        yield sessionmaker(engine, expire_on_commit=False)
    finally:
        engine.dispose()


def lease(sessions: sessionmaker[Session], clocks: Clock, holder: str) -> Lease:
    return Lease(sessions, "singleton", holder=holder, ttl=10.0, clock=clocks.now,
                 monotonic=clocks.monotonic)


def row(sessions: sessionmaker[Session]) -> tuple[str, datetime]:
    with sessions() as s:
        got = s.get(LeaseRow, "singleton")
        assert got is not None
        return got.holder, got.expires


def test_one_holder_renewing_and_a_takeover_after_the_expiry(
        sessions: sessionmaker[Session]) -> None:
    clocks = _clocks()
    a, b = lease(sessions, clocks, "a"), lease(sessions, clocks, "b")
    assert a.renew() and a.held
    assert not b.renew() and not b.held
    assert row(sessions) == ("a", clocks.wall + timedelta(seconds=10))
    clocks.advance(5)
    assert a.ensure()  # renewed: a quarter ttl passed
    assert row(sessions)[1] == clocks.wall + timedelta(seconds=10)
    clocks.advance(8)  # a's row is still valid (renewed 8 s ago)
    assert not b.renew()
    assert not a.held  # but a no longer counts itself the holder: 0.75 ttl passed
    clocks.advance(2.5)  # a dead since its last renewal 10.5 s ago
    assert b.renew() and b.held
    assert row(sessions)[0] == "b"
    assert not a.renew() and not a.held  # a woke up: it is told it lost the lease
    assert (a.taken, b.taken) == (1, 1)


def test_a_clean_release_hands_the_lease_over_at_once(sessions: sessionmaker[Session]) -> None:
    clocks = _clocks()
    a, b = lease(sessions, clocks, "a"), lease(sessions, clocks, "b")
    assert a.renew()
    a.release()
    assert not a.held
    assert b.renew() and row(sessions)[0] == "b"
    a.release()  # not a's to release any more: changes nothing
    assert not a.renew() and row(sessions)[0] == "b"


def test_a_process_not_holding_the_lease_tries_to_take_it_on_a_timer(
        sessions: sessionmaker[Session]) -> None:
    """The forwarder calls ensure() on every report batch: a replica that does not
    hold the lease must not write to the store each time, only every ttl / 4."""
    clocks = _clocks()
    a, b = lease(sessions, clocks, "a"), lease(sessions, clocks, "b")
    assert a.renew()
    statements: list[str] = []
    engine = sessions.kw["bind"]

    def count(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    try:
        assert not b.ensure()  # tries once
        tried = len(statements)
        assert tried > 0
        for _ in range(100):  # a hundred report batches within the same quarter ttl
            assert not b.ensure()
        assert len(statements) == tried
        clocks.advance(2.5)  # a quarter ttl later: one more try (a still holds it)
        assert not b.ensure()
        assert len(statements) > tried
        clocks.advance(8.5)  # a died after its last renewal; b takes over on its timer
        assert b.ensure() and row(sessions)[0] == "b"
    finally:
        event.remove(engine, "before_cursor_execute", count)
