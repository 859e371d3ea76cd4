"""Forwarding for the fleet: audit ids that never repeat on SQLite, the sinks as
one configuration in the store, and parked outbox rows.

- ``audits`` on SQLite gains AUTOINCREMENT: without it SQLite hands out the
  largest id plus one, so once retention pruned every audit the next one got an
  id a receiver had already seen (and dropped as a repeat). The table is copied
  (SQLite cannot alter that); the outbox rows, which a DROP TABLE would cascade
  away, are kept aside and put back. PostgreSQL's sequence never repeats.
- ``forward_sinks``: the syslog and webhook targets of every replica, written
  by the Console started last; ingestion on any replica queues each audit for
  every one of them, and the forwarding replica delivers to every one.
- ``forward_outbox.parked``: a record a sink rejects on its own (a webhook
  answering 4xx for it whatever else the batch holds) is set aside, with the
  time, instead of blocking the sink forever.

A downgrade keeps what the older schema cannot hold out of harm's way: parked
rows go to ``cnnf_kept_parked`` (the older outbox would send them again), and
on SQLite the highest audit id handed out to ``cnnf_kept_audit_ids`` (removing
AUTOINCREMENT loses SQLite's record of it). The upgrade puts the parked rows
back and starts the ids after the highest the store has any record of.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from cnnf.console.store.migrations.kept import (
    KEPT_AUDIT_IDS,
    KEPT_PARKED,
    highest_audit_id,
    seed_audit_ids,
    tables,
)
from cnnf.console.store.models import UtcDateTime

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def _outbox_aside() -> bool:
    """On SQLite, copy the outbox away before ``audits`` is copied (its DROP would
    cascade to the outbox); True when it did."""
    if op.get_bind().dialect.name != "sqlite":
        return False
    op.execute("CREATE TEMP TABLE cnnf_outbox_kept AS SELECT sink, audit_id, queued "
               "FROM forward_outbox")
    return True


def _outbox_back() -> None:
    op.execute("DELETE FROM forward_outbox")
    op.execute("INSERT INTO forward_outbox (sink, audit_id, queued) "
               "SELECT sink, audit_id, queued FROM cnnf_outbox_kept")
    op.execute("DROP TABLE cnnf_outbox_kept")


def upgrade() -> None:
    if _outbox_aside():
        with op.batch_alter_table("audits", recreate="always",
                                  table_kwargs={"sqlite_autoincrement": True}):
            pass
        _outbox_back()
    op.create_table(
        "forward_sinks",
        sa.Column("name", sa.String(200), primary_key=True),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("updated", UtcDateTime(), nullable=False),
    )
    with op.batch_alter_table("forward_outbox") as batch_op:
        batch_op.add_column(sa.Column("parked", UtcDateTime(), nullable=True))
    have = tables()
    seed_audit_ids()  # before the kept tables go: they may hold the highest id
    if KEPT_PARKED in have:
        # Parked again; those whose audit retention pruned meanwhile are gone.
        op.execute(f"INSERT INTO forward_outbox (sink, audit_id, queued, parked) "
                   f"SELECT k.sink, k.audit_id, k.queued, k.parked FROM {KEPT_PARKED} k "
                   f"WHERE EXISTS (SELECT 1 FROM audits a WHERE a.id = k.audit_id) "
                   f"AND NOT EXISTS (SELECT 1 FROM forward_outbox o "
                   f"WHERE o.sink = k.sink AND o.audit_id = k.audit_id)")
        op.drop_table(KEPT_PARKED)
    if KEPT_AUDIT_IDS in have:
        op.drop_table(KEPT_AUDIT_IDS)


def downgrade() -> None:
    have = tables()
    if KEPT_PARKED not in have:
        op.create_table(
            KEPT_PARKED,
            sa.Column("sink", sa.String(200), nullable=False),
            sa.Column("audit_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
                      nullable=False),
            sa.Column("queued", UtcDateTime(), nullable=False),
            sa.Column("parked", UtcDateTime(), nullable=False),
        )
    op.execute(f"INSERT INTO {KEPT_PARKED} (sink, audit_id, queued, parked) "
               "SELECT sink, audit_id, queued, parked FROM forward_outbox "
               "WHERE parked IS NOT NULL")
    op.execute("DELETE FROM forward_outbox WHERE parked IS NOT NULL")
    with op.batch_alter_table("forward_outbox") as batch_op:
        batch_op.drop_column("parked")
    op.drop_table("forward_sinks")
    if _outbox_aside():
        high = highest_audit_id()
        if KEPT_AUDIT_IDS not in have:
            op.create_table(KEPT_AUDIT_IDS, sa.Column("high", sa.BigInteger(), nullable=False))
        op.execute(f"DELETE FROM {KEPT_AUDIT_IDS}")
        op.execute(f"INSERT INTO {KEPT_AUDIT_IDS} (high) VALUES ({int(high)})")
        with op.batch_alter_table("audits", recreate="always",
                                  table_kwargs={"sqlite_autoincrement": False}):
            pass
        _outbox_back()
