"""Audits name Kubernetes pods: ``src_pod`` and ``dst_pod`` (empty for other
containers, and for the audits stored before this revision).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # NOT NULL with a server default: the rows already stored get "" (no pod).
    with op.batch_alter_table("audits", schema=None) as batch_op:
        batch_op.add_column(sa.Column("src_pod", sa.String(length=300), nullable=False,
                                      server_default=""))
        batch_op.add_column(sa.Column("dst_pod", sa.String(length=300), nullable=False,
                                      server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("audits", schema=None) as batch_op:
        batch_op.drop_column("dst_pod")
        batch_op.drop_column("src_pod")
