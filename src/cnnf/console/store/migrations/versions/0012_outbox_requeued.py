"""Requeued parked audits: when an operator queued a parked audit again. A sink
that refuses it again parks it again at once (it does not hold up the sink's
other audits). Rows stored before: never requeued (NULL).

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from cnnf.console.store.models import UtcDateTime

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("forward_outbox", schema=None) as batch_op:
        batch_op.add_column(sa.Column("requeued", UtcDateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("forward_outbox", schema=None) as batch_op:
        batch_op.drop_column("requeued")
