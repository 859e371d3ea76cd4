"""Change notices between Console processes on one PostgreSQL (LISTEN/NOTIFY).

Each Console replica waits for Defenders' long-polls on in-process notifiers.
A change committed through one replica must wake the long-polls waiting on all
the others: after its commit, the replica publishes the topic (``policy``,
``inventory``, or ``credentials`` for a revocation) on the channel
``cnnf_changes``, and every replica's listener thread (one connection each,
LISTENing) wakes its own notifiers. A listener that lost its connection
reconnects and then wakes everything once, since it may have missed notices
meanwhile; the long-polls' store poll (slower when the feed runs) remains a
backstop for a publisher killed between its commit and its notice.

A process has woken its own long-polls before it publishes, so its listener
drops its own notices: heard again, each change woke every long-poll of the
publishing replica a second time, and read the store again, for nothing. A
notice's payload is ``<topic> <origin>``, the origin a random token of the
publishing process (not its connection's backend pid: a server restart or a
pooler gives another replica's connection the same pid, and its notices,
revocations included, would be dropped). A bare ``<topic>`` (a replica of an
earlier version) is heard as before; such a replica ignores the new payloads
and learns of other replicas' changes by its store poll until it is upgraded.

SQLite runs one Console process: no feed, only the in-process notifiers.
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import Callable

import psycopg
from sqlalchemy import Engine
from sqlalchemy.engine import make_url

log = logging.getLogger("cnnf.console.feed")
CHANNEL = "cnnf_changes"
TOPICS = ("policy", "inventory", "credentials")


def libpq_url(engine: Engine) -> str | None:
    """The engine's database as a libpq URL, or None when it is not PostgreSQL."""
    url = engine.url
    if url.get_backend_name() != "postgresql":
        return None
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


class ChangeFeed:
    """Publishes change topics and calls ``on_change(topic)`` for every topic
    another process published, from a listener thread (the publisher has told
    its own process)."""

    def __init__(self, url: str, on_change: Callable[[str], None],
                 retry_seconds: float = 1.0) -> None:
        make_url(url)  # a bad URL fails here, not in the thread
        self.url = url
        self.on_change = on_change
        self.retry_seconds = retry_seconds
        self._stop = threading.Event()
        self._listening = threading.Event()
        self._publish_lock = threading.Lock()
        self._publisher: psycopg.Connection[tuple[object, ...]] | None = None
        self.origin = secrets.token_hex(8)  # this process, in its notices' payloads
        self.received = 0
        self._thread = threading.Thread(target=self._listen, daemon=True, name="cnnf-feed")
        self._thread.start()

    def wait_listening(self, timeout: float) -> bool:
        return self._listening.wait(timeout)

    def publish(self, topic: str) -> None:
        """Tell every process; a failure is logged (their store poll catches up)."""
        with self._publish_lock:
            for attempt in (1, 2):
                try:
                    if self._publisher is None or self._publisher.closed:
                        self._publisher = psycopg.connect(self.url, autocommit=True,
                                                          connect_timeout=5)
                    self._publisher.execute("SELECT pg_notify(%s, %s)",
                                            (CHANNEL, f"{topic} {self.origin}"))
                    return
                except psycopg.Error as exc:
                    if self._publisher is not None:
                        self._publisher.close()
                    self._publisher = None
                    if attempt == 2:
                        log.warning("change feed: could not publish %r: %s", topic, exc)

    def _listen(self) -> None:
        missed = False
        while not self._stop.is_set():
            try:
                with psycopg.connect(self.url, autocommit=True, connect_timeout=5) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self._listening.set()
                    if missed:  # notices may have come while we were away
                        for topic in TOPICS:
                            self.on_change(topic)
                    while not self._stop.is_set():
                        for notice in conn.notifies(timeout=0.5):
                            self.received += 1
                            topic, _, origin = notice.payload.partition(" ")
                            if origin == self.origin:
                                continue  # ours: this process was told before it published
                            if topic in TOPICS:
                                self.on_change(topic)
            except psycopg.Error as exc:
                self._listening.clear()
                missed = True
                log.warning("change feed: listener lost its connection (%s); reconnecting",
                            exc)
                self._stop.wait(self.retry_seconds)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        with self._publish_lock:
            if self._publisher is not None:
                self._publisher.close()
                self._publisher = None
