"""Flows keep each end's identity class (``src_class``, ``dst_class``: the
identity's digest without the container name), what learning and simulating
group the flows by.

The rows stored before this revision get their classes here, computed from
their identity texts as the Console computes them when it stores a flow, a
batch of rows at a time (each distinct text parsed once). The downgrade drops
the columns; the rows stay.

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Callable

import sqlalchemy as sa
from alembic import op

from cnnf.policy.observed import identity_class

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

BATCH = 20000
#: The identity texts whose classes are kept while backfilling, in characters
#: (about 32 MB): workloads choose how many distinct texts there are (every
#: DNS name and address they reach is a destination identity).
MAX_HELD = 32_000_000


def backfill(connection: sa.Connection) -> int:
    """Every row's classes from its identity texts, by id range; returns the
    rows given a class (rows without identities keep ``""``)."""
    flows = sa.table("flows", sa.column("id", sa.BigInteger()),
                     sa.column("src_identity", sa.Text()), sa.column("dst_identity", sa.Text()),
                     sa.column("src_class", sa.String()), sa.column("dst_class", sa.String()))
    classes: dict[str, str] = {}
    held = 0  # characters of the texts held

    def class_of(text: str) -> str:
        nonlocal held
        found = classes.get(text)
        if found is None:
            if held > MAX_HELD:  # distinct texts by the million (a scan): bounded
                classes.clear()
                held = 0
            found = classes[text] = identity_class(text)
            held += len(text)
        return found

    if connection.dialect.name == "sqlite":
        return _backfill_sqlite(connection, class_of)
    postgresql = connection.dialect.name == "postgresql"
    update = (sa.update(flows).where(flows.c.id == sa.bindparam("row_id"))
              .values(src_class=sa.bindparam("s"), dst_class=sa.bindparam("d")))
    # PostgreSQL: one statement per batch (arrays), not a statement per row.
    batch_update = sa.text(
        "UPDATE flows SET src_class = v.s, dst_class = v.d FROM unnest("
        "CAST(:ids AS bigint[]), CAST(:ss AS varchar[]), CAST(:ds AS varchar[])) "
        "AS v(id, s, d) WHERE flows.id = v.id")
    last, done = None, 0
    while True:
        query = (sa.select(flows.c.id, flows.c.src_identity, flows.c.dst_identity)
                 .where(sa.or_(flows.c.src_identity != "", flows.c.dst_identity != ""))
                 .order_by(flows.c.id).limit(BATCH))
        if last is not None:
            query = query.where(flows.c.id > last)
        rows = connection.execute(query).all()
        if not rows:
            return done
        changes = [{"row_id": i, "s": class_of(s), "d": class_of(d)} for i, s, d in rows]
        changes = [c for c in changes if c["s"] or c["d"]]
        if changes and postgresql:
            connection.execute(batch_update, {"ids": [c["row_id"] for c in changes],
                                              "ss": [c["s"] for c in changes],
                                              "ds": [c["d"] for c in changes]})
        elif changes:
            connection.execute(update, changes)
        done += len(changes)
        last = rows[-1][0]


def _backfill_sqlite(connection: sa.Connection, class_of: Callable[[str], str]) -> int:
    """SQLite: one UPDATE per range of ids, the classes computed by a function
    SQLite calls per text (about ten times faster than an UPDATE per row)."""
    raw = connection.connection.driver_connection
    if raw is None:
        raise RuntimeError("no SQLite connection to backfill the flows on")
    raw.create_function("cnnf_identity_class", 1, class_of, deterministic=True)
    update = sa.text(
        "UPDATE flows SET src_class = cnnf_identity_class(src_identity), "
        "dst_class = cnnf_identity_class(dst_identity) "
        "WHERE id > :low AND id <= :high AND (src_identity != '' OR dst_identity != '')")
    done = 0
    try:
        top = connection.scalar(sa.text("SELECT max(id) FROM flows")) or 0
        for low in range(0, top, BATCH):
            result = connection.execute(update, {"low": low, "high": low + BATCH})
            done += result.rowcount
    finally:
        raw.create_function("cnnf_identity_class", 1, None)
    return done


def upgrade() -> None:
    with op.batch_alter_table("flows", schema=None) as batch_op:
        batch_op.add_column(sa.Column("src_class", sa.String(length=32), nullable=False,
                                      server_default=""))
        batch_op.add_column(sa.Column("dst_class", sa.String(length=32), nullable=False,
                                      server_default=""))
    backfill(op.get_bind())
    if op.get_bind().dialect.name == "postgresql":
        # The planner's statistics for the new columns now, not at autovacuum's
        # next pass: it estimates the groups of the grouped query from them.
        op.execute("ANALYZE flows")


def downgrade() -> None:
    with op.batch_alter_table("flows", schema=None) as batch_op:
        batch_op.drop_column("dst_class")
        batch_op.drop_column("src_class")
