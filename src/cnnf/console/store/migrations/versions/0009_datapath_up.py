"""Datapath up: each Defender's own check of its datapath (verdict workers
running, SYN queues bound, chains, rules and sets in place), as it last
reported it, and what was wrong. Rows stored before: never reported (NULL).

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("defenders", schema=None) as batch_op:
        batch_op.add_column(sa.Column("datapath_up", sa.Boolean(), nullable=True))
        batch_op.add_column(sa.Column("datapath_problems", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("defenders", schema=None) as batch_op:
        batch_op.drop_column("datapath_problems")
        batch_op.drop_column("datapath_up")
