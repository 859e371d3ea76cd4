"""Leases: work that one Console process does at a time when several share a store.

Forwarding audits and retention pruning must run once however many Console
replicas serve the same PostgreSQL database. A process holds the lease named
``singleton`` by writing itself and an expiry into its row, and renews it every
``ttl / 4`` seconds (each worker needing it calls :meth:`Lease.ensure`); when
the holder dies (or stops renewing), another process takes the row over once
the expiry passed: the others try every ``ttl / 4`` seconds, so within
``1.25 ttl`` seconds. The
holder stops counting itself the holder a quarter ``ttl`` before the row
expires, so two processes never both believe they hold it unless the hosts'
clocks differ by more than that (keep them in sync with NTP). Forwarding is
at-least-once, so even that case repeats deliveries, never loses them.

On SQLite (one process) the same code runs; the one process always holds it.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from sqlalchemy import or_, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from cnnf.console.store.models import LeaseRow

log = logging.getLogger("cnnf.console.leases")
SINGLETON = "singleton"
DEFAULT_TTL = 10.0


def wall_clock() -> datetime:
    return datetime.now(UTC)


def holder_name() -> str:
    """This process, uniquely: host, pid and a random part (pids repeat in containers)."""
    return f"{socket.gethostname()[:100]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Lease:
    """One named lease in the store, held by this process while :meth:`renew`
    keeps succeeding (a :class:`LeaseKeeper` calls it periodically)."""

    def __init__(self, sessions: sessionmaker[Session], name: str = SINGLETON, *,
                 holder: str | None = None, ttl: float = DEFAULT_TTL,
                 clock: Callable[[], datetime] = wall_clock,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.sessions = sessions
        self.name = name
        self.holder = holder or holder_name()
        self.ttl = ttl
        self.clock = clock
        self.monotonic = monotonic
        self._held_until = 0.0
        self._renewed = 0.0
        self._tried = float("-inf")  # when a process not holding it last tried to take it
        self._lock = threading.Lock()
        self.taken = 0  # times this process took the lease (metric)

    @property
    def held(self) -> bool:
        return self.monotonic() < self._held_until

    def renew(self) -> bool:
        """Take the lease if it is free or expired, or extend it if ours; True if held."""
        started = self.monotonic()
        was_held = self.held
        now = self.clock()
        expires = now + timedelta(seconds=self.ttl)
        with self.sessions() as session:
            try:
                result = session.execute(
                    update(LeaseRow)
                    .where(LeaseRow.name == self.name,
                           or_(LeaseRow.holder == self.holder, LeaseRow.expires < now))
                    .values(holder=self.holder, expires=expires))
                got = bool(getattr(result, "rowcount", 0))
                if not got and session.get(LeaseRow, self.name) is None:
                    session.add(LeaseRow(name=self.name, holder=self.holder, expires=expires))
                    session.flush()
                    got = True
                session.commit()
            except IntegrityError:  # another process created the row at this moment
                session.rollback()
                got = False
            except BaseException:
                session.rollback()
                raise
        if got:
            self._renewed = started
            self._held_until = started + self.ttl * 0.75
            if not was_held:
                self.taken += 1
                log.info("lease %r: held by this process (%s)", self.name, self.holder)
        elif was_held:
            self._held_until = 0.0
            log.warning("lease %r: lost to another process", self.name)
        return got

    def ensure(self) -> bool:
        """Renew when a quarter ``ttl`` passed since the last renewal; True while
        held. A process not holding the lease tries to take it at most once per
        quarter ``ttl`` however often this is called (the forwarder calls it on
        every report batch; only the holder's calls may touch the store). Each
        worker that needs the lease calls this in its loop, so no thread of its
        own keeps it."""
        with self._lock:
            now = self.monotonic()
            if self.held:
                if now - self._renewed < self.ttl / 4:
                    return True
            elif now - self._tried < self.ttl / 4:
                return False
            self._tried = now
            try:
                return self.renew()
            except SQLAlchemyError as exc:  # the store is away: we cannot know we hold it
                log.warning("lease %r: could not renew: %s", self.name, exc)
                return self.held

    def release(self) -> None:
        """Give the lease up (a clean stop): another process takes it at once."""
        self._held_until = 0.0
        with self.sessions() as session:
            session.execute(update(LeaseRow).where(LeaseRow.name == self.name,
                                                   LeaseRow.holder == self.holder)
                            .values(expires=datetime(1970, 1, 1, tzinfo=UTC)))
            session.commit()
