"""Identity classes for the flows stored before migration 0013, given in the
background: the migration only adds the columns (fast: no table held while a
million rows are rewritten), then the Console walks the table by id in small
committed batches (:data:`BATCH` ids per transaction) and gives each row that
holds an identity text but no class the classes the Console computes when it
stores a flow (:func:`~cnnf.policy.observed.identity_class`).

How far the walk went is kept in the store (``settings.classes_walked_to``,
written with each batch): a start resumes there, and a later walk (the
Console looks again every few minutes, for flows stored by a replica still
running the previous version during a rolling upgrade) reads only the flows
stored since (and the last :data:`MARGIN` ids before, for rows committed late),
never the whole table again.

Until a row has its classes, learning and simulating group it by its own
identity text (:data:`cnnf.console.services.learning.UNCLASSED`): the same
results, fewer rows folded together. A row's identity texts never change once
stored (they are part of its key), so giving a class twice writes the same
value; a batch writes a row's classes only if the row still holds the texts
they were computed from (SQLite may give a pruned row's id to a new row).
On PostgreSQL a batch locks its rows in id order and waits at most
:data:`LOCK_WAIT` for a row an ingestion batch holds (then it gives up and is
tried again): ingestion never waits behind it for long, and never deadlocks
with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

from sqlalchemy import CursorResult, Table, bindparam, text, update
from sqlalchemy.orm import Session

from cnnf.console.services.records import cached_identity_class as identity_class
from cnnf.console.store.models import FlowRow

FLOWS = cast(Table, FlowRow.__table__)

#: ids walked per transaction (rows given classes per commit, at most)
BATCH = 5000
#: PostgreSQL: how long a batch waits for a row lock before it gives up
LOCK_WAIT = "100ms"
#: ids below the last walk's end walked again by the next: on PostgreSQL a
#: row's id is taken when it is inserted but the row is seen once its
#: transaction commits, so a row a previous-version replica was still
#: committing may have an id below the end (rows that have classes cost a read)
MARGIN = 10 * BATCH

_UNCLASSED = ("((src_class = '' AND src_identity <> '') "
              "OR (dst_class = '' AND dst_identity <> ''))")
_WALKED = "SELECT classes_walked_to FROM settings WHERE id = 1"
_TOP = "SELECT max(id) FROM flows"
_ROWS = (f"SELECT id, src_identity, dst_identity, src_class, dst_class FROM flows "
         f"WHERE id >= :low AND id < :high AND {_UNCLASSED}")
_MARK = ("UPDATE settings SET classes_walked_to = :walked "
         "WHERE id = 1 AND classes_walked_to < :walked")
# PostgreSQL: the rows locked in id order first (ingestion's upserts lock rows
# too: one order for the walk), then one statement per batch (arrays).
_PG_LOCK = "SELECT id FROM flows WHERE id = ANY(CAST(:ids AS bigint[])) ORDER BY id FOR UPDATE"
_PG_UPDATE = ("UPDATE flows SET src_class = v.s, dst_class = v.d FROM unnest("
              "CAST(:ids AS bigint[]), CAST(:ss AS varchar[]), CAST(:ds AS varchar[]), "
              "CAST(:sts AS text[]), CAST(:dts AS text[])) AS v(id, s, d, st, dt) "
              "WHERE flows.id = v.id AND flows.src_identity = v.st "
              "AND flows.dst_identity = v.dt")


@dataclass
class ClassBackfill:
    """Where the walk is: ids from ``next_id`` to ``top`` are left to walk."""

    first: int
    next_id: int
    top: int
    given: int = 0  # rows given classes so far

    @property
    def done(self) -> bool:
        return self.next_id > self.top

    @property
    def progress(self) -> float:
        """The part of the id range walked, 0 to 1."""
        span = self.top - self.first + 1
        return 1.0 if self.done or span <= 0 else (self.next_id - self.first) / span


def start(session: Session) -> ClassBackfill | None:
    """The walk over the flows stored since the last walk's end (all of them
    after the upgrade to 0013), and the last :data:`MARGIN` ids before it; None
    when no flow was stored since."""
    walked = int(session.execute(text(_WALKED)).scalar() or 0)
    top = session.execute(text(_TOP)).scalar()
    session.rollback()
    if top is None or int(top) <= walked:
        return None
    first = max(walked + 1 - MARGIN, 1) if walked else 1
    return ClassBackfill(first=first, next_id=first, top=int(top))


def step(session: Session, walk: ClassBackfill, batch: int = BATCH) -> int:
    """Give the rows of the next ``batch`` ids their classes, committed with how
    far the walk went; returns how many rows were given classes."""
    if walk.done:
        return 0
    low, high = walk.next_id, min(walk.next_id + batch, walk.top + 1)
    postgresql = session.get_bind().dialect.name == "postgresql"
    try:
        rows = session.execute(text(_ROWS), {"low": low, "high": high}).all()
        # The read's transaction ends before the write's begins: SQLite refuses
        # at once (no busy wait) to turn a read into a write once another
        # connection has written since (an ingestion batch, a lease renewal).
        # The texts never change, so the classes read stay right.
        session.rollback()
        computed = ((row_id, identity_class(s), identity_class(d), sc, dc, s, d)
                    for row_id, s, d, sc, dc in rows)
        # rows whose texts have no class (read from the key) stay as they are
        changes = [(i, s, d, st, dt) for i, s, d, sc, dc, st, dt in computed
                   if (s, d) != (sc, dc)]
        given = 0
        if postgresql:
            session.execute(text(f"SET LOCAL lock_timeout = '{LOCK_WAIT}'"))
        if changes and postgresql:
            ids = [c[0] for c in changes]
            session.execute(text(_PG_LOCK), {"ids": ids})
            result = session.execute(text(_PG_UPDATE), {
                "ids": ids, "ss": [c[1] for c in changes], "ds": [c[2] for c in changes],
                "sts": [c[3] for c in changes], "dts": [c[4] for c in changes]})
            given = cast(CursorResult[None], result).rowcount
        elif changes:
            result = session.execute(
                update(FLOWS).where(FLOWS.c.id == bindparam("row_id"),
                                    FLOWS.c.src_identity == bindparam("st"),
                                    FLOWS.c.dst_identity == bindparam("dt"))
                .values(src_class=bindparam("s"), dst_class=bindparam("d")),
                [{"row_id": i, "s": s, "d": d, "st": st, "dt": dt}
                 for i, s, d, st, dt in changes])
            given = cast(CursorResult[None], result).rowcount
        session.execute(text(_MARK), {"walked": high - 1})
        session.commit()
    except BaseException:
        session.rollback()
        raise
    walk.next_id = high
    walk.given += max(given, 0)  # rows retention pruned meanwhile are not counted
    return max(given, 0)


def run(session: Session, batch: int = BATCH) -> int:
    """The whole walk at once (the benchmark, tests); returns the rows given classes."""
    walk = start(session)
    if walk is None:
        return 0
    while not walk.done:
        step(session, walk, batch)
    return walk.given
