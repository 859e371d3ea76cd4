"""The tests' throw-away PostgreSQL server (tests/postgres.py) survives its port
being taken between choosing it and listening on it (another test stream beside
this one, as ``make test`` runs them): it starts on another port."""

from __future__ import annotations

import socket

import psycopg
import pytest

from tests import postgres

pytestmark = pytest.mark.postgres


def test_a_port_taken_before_the_server_listens_is_replaced_by_another() -> None:
    reason = postgres.available()
    if reason:
        pytest.fail(f"PostgreSQL tests cannot run: {reason}")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        server = postgres.PostgresServer()
        server.port = taken.getsockname()[1]  # as if another process took it meanwhile
        try:
            server.start()
            assert server.port != taken.getsockname()[1]
            with psycopg.connect(f"host=127.0.0.1 port={server.port} user=postgres "
                                 "dbname=postgres") as conn:
                assert conn.execute("SELECT 1").fetchone() == (1,)
        finally:
            server.stop()
