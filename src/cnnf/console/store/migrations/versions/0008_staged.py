"""Staging and "would" verdicts: a rule's ``staged`` flag, the staged default
effect, and on flows and audits what the policy would have done where nothing
enforced it (a staged rule or default; enforcement off: ``mode`` observed).

Flows gain ``mode``, ``would``, ``would_rule_id`` and ``would_rule_name``, and
their aggregation key the first three of them (before 0006's ``ident``, which
stays last). Rows stored before keep what they meant: enforced, no "would"
verdict.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

_BASE_KEY = ["kind", "src", "dst", "port", "verdict", "rule_id"]
_OLD_KEY = [*_BASE_KEY, "ident"]  # 0006
_NEW_KEY = [*_BASE_KEY, "mode", "would", "would_rule_id", "ident"]


def upgrade() -> None:
    with op.batch_alter_table("rules", schema=None) as batch_op:
        batch_op.add_column(sa.Column("staged", sa.Boolean(), nullable=False,
                                      server_default=sa.false()))
    with op.batch_alter_table("settings", schema=None) as batch_op:
        batch_op.add_column(sa.Column("staged_default_effect", sa.String(length=16),
                                      nullable=True))
    with op.batch_alter_table("audits", schema=None) as batch_op:
        batch_op.add_column(sa.Column("would", sa.Boolean(), nullable=False,
                                      server_default=sa.false()))
    with op.batch_alter_table("flows", schema=None) as batch_op:
        batch_op.add_column(sa.Column("mode", sa.String(length=16), nullable=False,
                                      server_default="enforced"))
        batch_op.add_column(sa.Column("would", sa.String(length=16), nullable=False,
                                      server_default=""))
        batch_op.add_column(sa.Column("would_rule_id", sa.Integer(), nullable=False,
                                      server_default="0"))
        batch_op.add_column(sa.Column("would_rule_name", sa.String(length=200), nullable=False,
                                      server_default=""))
        batch_op.drop_constraint("uq_flows_key", type_="unique")
        batch_op.create_unique_constraint("uq_flows_key", _NEW_KEY)


def downgrade() -> None:
    # Flows that differ only by the new key columns fold into one row first.
    op.execute(
        "DELETE FROM flows WHERE mode <> 'enforced' OR would <> '' OR would_rule_id <> 0"
    )
    with op.batch_alter_table("flows", schema=None) as batch_op:
        batch_op.drop_constraint("uq_flows_key", type_="unique")
        batch_op.create_unique_constraint("uq_flows_key", _OLD_KEY)
        batch_op.drop_column("would_rule_name")
        batch_op.drop_column("would_rule_id")
        batch_op.drop_column("would")
        batch_op.drop_column("mode")
    with op.batch_alter_table("audits", schema=None) as batch_op:
        batch_op.drop_column("would")
    with op.batch_alter_table("settings", schema=None) as batch_op:
        batch_op.drop_column("staged_default_effect")
    with op.batch_alter_table("rules", schema=None) as batch_op:
        batch_op.drop_column("staged")
