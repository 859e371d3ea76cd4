"""The change feed between Console processes (PostgreSQL LISTEN/NOTIFY), on a real
PostgreSQL: notices reach the other processes, not the publisher itself, and a
listener whose connection was killed reconnects and wakes everything once."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from tests.polling import poll

from cnnf.console.store.feed import CHANNEL, TOPICS, ChangeFeed

pytestmark = pytest.mark.postgres


class Heard:
    def __init__(self) -> None:
        self.topics: list[str] = []
        self.lock = threading.Lock()

    def __call__(self, topic: str) -> None:
        with self.lock:
            self.topics.append(topic)

    def count(self, topic: str) -> int:
        with self.lock:
            return self.topics.count(topic)


@pytest.fixture
def url(pg_server: Any) -> str:
    db: str = pg_server.create_database()
    return db.replace("postgresql+psycopg://", "postgresql://")


@pytest.fixture
def feeds(url: str) -> Iterator[tuple[ChangeFeed, Heard, ChangeFeed, Heard]]:
    heard_a, heard_b = Heard(), Heard()
    a, b = ChangeFeed(url, heard_a, retry_seconds=0.1), ChangeFeed(url, heard_b,
                                                                   retry_seconds=0.1)
    try:
        assert a.wait_listening(10) and b.wait_listening(10)
        yield a, heard_a, b, heard_b
    finally:
        a.close()
        b.close()


def test_a_notice_reaches_the_other_process_and_not_the_publisher(
        feeds: tuple[ChangeFeed, Heard, ChangeFeed, Heard]) -> None:
    a, heard_a, b, heard_b = feeds
    a.publish("policy")
    assert poll(lambda: heard_b.count("policy") == 1, 10)
    # The publisher's own notice came back to its listener, and was dropped there
    # (its process woke its own long-polls before publishing).
    assert poll(lambda: a.received == 1, 10)
    b.publish("inventory")
    assert poll(lambda: heard_a.count("inventory") == 1, 10)
    assert poll(lambda: b.received == 2, 10)
    assert heard_a.topics == ["inventory"]
    assert heard_b.topics == ["policy"]


def test_a_publisher_whose_connection_died_publishes_again_and_its_echo_is_still_dropped(
        url: str, feeds: tuple[ChangeFeed, Heard, ChangeFeed, Heard]) -> None:
    a, heard_a, _, heard_b = feeds
    a.publish("policy")
    assert poll(lambda: heard_b.count("policy") == 1, 10)
    with psycopg.connect(url, autocommit=True) as admin:
        killed = admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = "
            "current_database() AND pid <> pg_backend_pid() AND query LIKE '%pg_notify%'"
        ).fetchall()
    assert killed  # the publishing connection, found by its last statement
    a.publish("policy")  # reconnects (a new backend pid)
    assert poll(lambda: heard_b.count("policy") == 2, 10)
    assert poll(lambda: a.received == 2, 10)
    assert heard_a.topics == []


def test_a_listener_whose_connection_was_killed_reconnects_and_wakes_everything(
        url: str, feeds: tuple[ChangeFeed, Heard, ChangeFeed, Heard]) -> None:
    a, heard_a, b, heard_b = feeds
    with psycopg.connect(url, autocommit=True) as admin:
        killed = admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = "
            "current_database() AND query LIKE 'LISTEN%'").fetchall()
    assert len(killed) == 2  # both processes' listeners
    # Notices may have been missed while away: every topic once, on reconnection.
    assert poll(lambda: all(heard_b.count(t) == 1 for t in TOPICS), 10), heard_b.topics
    assert poll(lambda: all(heard_a.count(t) == 1 for t in TOPICS), 10), heard_a.topics
    assert a.wait_listening(10) and b.wait_listening(10)
    a.publish("credentials")
    assert poll(lambda: heard_b.count("credentials") == 2, 10)


def test_a_notice_of_another_process_sent_on_the_same_backend_is_heard(
        url: str, feeds: tuple[ChangeFeed, Heard, ChangeFeed, Heard]) -> None:
    """Two replicas' notices sent through one server backend (a pooler in
    transaction mode; or, after a server restart, another replica's connection
    given the pid this one's had): each process still hears the other's, since
    its own are told apart by a token of the process, not by the backend."""
    a, heard_a, b, heard_b = feeds
    a.publish("inventory")  # opens a's publishing connection
    assert poll(lambda: heard_b.count("inventory") == 1, 10)
    assert a._publisher is not None
    # b's revocation notice, sent from a's backend.
    a._publisher.execute("SELECT pg_notify(%s, %s)", (CHANNEL, f"credentials {b.origin}"))
    assert poll(lambda: heard_a.count("credentials") == 1, 10), heard_a.topics
    assert poll(lambda: b.received == 2, 10)
    assert heard_b.count("credentials") == 0  # b's own, dropped by b


def test_a_bare_topic_from_a_replica_of_an_earlier_version_is_heard_by_all(
        url: str, feeds: tuple[ChangeFeed, Heard, ChangeFeed, Heard]) -> None:
    _, heard_a, _, heard_b = feeds
    with psycopg.connect(url, autocommit=True) as old:
        old.execute("SELECT pg_notify(%s, 'policy')", (CHANNEL,))
    assert poll(lambda: heard_a.count("policy") == 1 and heard_b.count("policy") == 1, 10)
