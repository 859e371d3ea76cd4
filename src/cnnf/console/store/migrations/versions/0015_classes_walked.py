"""The settings row keeps how far the Console's background walk giving flows
their identity classes has gone (``classes_walked_to``: every flow with an id
up to it was walked), so that a Console start resumes the walk there, or
walks only the flows stored since, instead of scanning the whole flows table
for rows without classes (:mod:`cnnf.console.services.classes`).

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("settings", schema=None) as batch_op:
        batch_op.add_column(sa.Column("classes_walked_to", sa.BigInteger(), nullable=False,
                                      server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("settings", schema=None) as batch_op:
        batch_op.drop_column("classes_walked_to")
