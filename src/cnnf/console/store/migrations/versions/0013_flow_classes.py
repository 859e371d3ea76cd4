"""Flows keep each end's identity class (``src_class``, ``dst_class``: the
identity's digest without the container name), what learning and simulating
group the flows by.

Only the columns are added here (empty for the rows stored before): adding a
column with a constant default rewrites no row (PostgreSQL 11 and later,
SQLite), so the flows table is held for moments, not for the minutes a
million rows' backfill took. The Console gives those rows their classes in
the background, in small committed batches
(:mod:`cnnf.console.services.classes`); until then learning and simulating
group each by its own identity text (the same results). The downgrade drops
the columns; the rows stay.

An earlier form of this revision computed the classes here, holding the
table: stores migrated by it have them already (the background walk then
finds nothing to give).

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("flows", schema=None) as batch_op:
        batch_op.add_column(sa.Column("src_class", sa.String(length=32), nullable=False,
                                      server_default=""))
        batch_op.add_column(sa.Column("dst_class", sa.String(length=32), nullable=False,
                                      server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("flows", schema=None) as batch_op:
        batch_op.drop_column("dst_class")
        batch_op.drop_column("src_class")
