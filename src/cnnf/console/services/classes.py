"""Identity classes for the flows stored before migration 0013, given in the
background: the migration only adds the columns (fast: no table held while a
million rows are rewritten), then the Console walks the table by id in small
committed batches (:data:`BATCH` ids per transaction) and gives each row that
holds an identity text but no class the classes the Console computes when it
stores a flow (:func:`~cnnf.policy.observed.identity_class`).

Until a row has its classes, learning and simulating group it by its own
identity text (:data:`cnnf.console.services.learning.UNCLASSED`): the same
results, fewer rows folded together. A row's identity texts never change once
stored (they are part of its key), so giving a class twice (two replicas, or a
restart mid-walk) writes the same value: no lock beyond the batch's rows, which
an ingestion batch updating the same rows waits for a few milliseconds at most.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import cast

from sqlalchemy import Table, bindparam, text, update
from sqlalchemy.orm import Session

from cnnf.console.store.models import FlowRow
from cnnf.policy.observed import identity_class as _identity_class

FLOWS = cast(Table, FlowRow.__table__)

#: Replicas' texts repeat across the rows: each distinct one's class computed
#: once while it is among the most recent (bounded: a few MB of texts).
identity_class = functools.lru_cache(maxsize=4096)(_identity_class)

#: ids walked per transaction (rows given classes per commit, at most)
BATCH = 5000

_UNCLASSED = ("((src_class = '' AND src_identity <> '') "
              "OR (dst_class = '' AND dst_identity <> ''))")
_FIRST = f"SELECT min(id) FROM flows WHERE {_UNCLASSED}"
_TOP = "SELECT max(id) FROM flows"
_ROWS = (f"SELECT id, src_identity, dst_identity, src_class, dst_class FROM flows "
         f"WHERE id >= :low AND id < :high AND {_UNCLASSED}")
# PostgreSQL: one statement per batch (arrays), not a statement per row.
_PG_UPDATE = ("UPDATE flows SET src_class = v.s, dst_class = v.d FROM unnest("
              "CAST(:ids AS bigint[]), CAST(:ss AS varchar[]), CAST(:ds AS varchar[])) "
              "AS v(id, s, d) WHERE flows.id = v.id")


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
    """The walk over the rows without classes; None when every row has them
    (one scan of the table, once per Console start)."""
    first = session.execute(text(_FIRST)).scalar()
    top = session.execute(text(_TOP)).scalar()
    session.rollback()
    if first is None or top is None:
        return None
    return ClassBackfill(first=int(first), next_id=int(first), top=int(top))


def step(session: Session, walk: ClassBackfill, batch: int = BATCH) -> int:
    """Give the rows of the next ``batch`` ids their classes, committed; returns
    how many rows were given classes."""
    if walk.done:
        return 0
    low, high = walk.next_id, min(walk.next_id + batch, walk.top + 1)
    try:
        rows = session.execute(text(_ROWS), {"low": low, "high": high}).all()
        # The read's transaction ends before the write's begins: SQLite refuses
        # at once (no busy wait) to turn a read into a write once another
        # connection has written since (an ingestion batch, a lease renewal).
        # The texts never change, so the classes read stay right.
        session.rollback()
        computed = ((row_id, identity_class(s), identity_class(d), sc, dc)
                    for row_id, s, d, sc, dc in rows)
        # rows whose texts have no class (read from the key) stay as they are
        changes = [(i, s, d) for i, s, d, sc, dc in computed if (s, d) != (sc, dc)]
        if changes and session.get_bind().dialect.name == "postgresql":
            session.execute(text(_PG_UPDATE), {"ids": [c[0] for c in changes],
                                               "ss": [c[1] for c in changes],
                                               "ds": [c[2] for c in changes]})
        elif changes:
            session.execute(
                update(FLOWS).where(FLOWS.c.id == bindparam("row_id"))
                .values(src_class=bindparam("s"), dst_class=bindparam("d")),
                [{"row_id": i, "s": s, "d": d} for i, s, d in changes])
        session.commit()
    except BaseException:
        session.rollback()
        raise
    walk.next_id = high
    walk.given += len(changes)
    return len(changes)


def run(session: Session, batch: int = BATCH) -> int:
    """The whole walk at once (the benchmark, tests); returns the rows given classes."""
    walk = start(session)
    if walk is None:
        return 0
    while not walk.done:
        step(session, walk, batch)
    return walk.given
