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

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

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


def downgrade() -> None:
    with op.batch_alter_table("forward_outbox") as batch_op:
        batch_op.drop_column("parked")
    op.drop_table("forward_sinks")
    if _outbox_aside():
        with op.batch_alter_table("audits", recreate="always",
                                  table_kwargs={"sqlite_autoincrement": False}):
            pass
        _outbox_back()
