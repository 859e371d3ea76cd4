"""Learning and simulation: flows keep the identities of both ends as recorded
(``src_identity``, ``dst_identity``, their digest ``ident`` in the flow key),
and learnt proposals are stored (``proposals``).

Flows stored before this revision get empty identities; learning and
simulation read them back from the flow's key (``image:shop/api``).

Revision ID: 0006
Revises: 0004
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import cnnf.console.store.models

revision = "0006"
down_revision = "0004"
branch_labels = None
depends_on = None

_OLD_KEY = ["kind", "src", "dst", "port", "verdict", "rule_id"]


def upgrade() -> None:
    with op.batch_alter_table("flows", schema=None) as batch_op:
        batch_op.add_column(sa.Column("src_identity", sa.Text(), nullable=False,
                                      server_default=""))
        batch_op.add_column(sa.Column("dst_identity", sa.Text(), nullable=False,
                                      server_default=""))
        batch_op.add_column(sa.Column("ident", sa.String(length=40), nullable=False,
                                      server_default=""))
        batch_op.drop_constraint("uq_flows_key", type_="unique")
        batch_op.create_unique_constraint("uq_flows_key", [*_OLD_KEY, "ident"])
    op.create_table(
        "proposals",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("created", cnnf.console.store.models.UtcDateTime(timezone=True),
                  nullable=False),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("since", cnnf.console.store.models.UtcDateTime(timezone=True),
                  nullable=False),
        sa.Column("until", cnnf.console.store.models.UtcDateTime(timezone=True),
                  nullable=False),
        sa.Column("base_revision", sa.BigInteger(), nullable=False),
        sa.Column("applied_revision", sa.BigInteger(), nullable=True),
        sa.Column("body", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_proposals")),
    )
    with op.batch_alter_table("proposals", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_proposals_created"), ["created"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("proposals", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_proposals_created"))
    op.drop_table("proposals")
    # Flows that differ only by identity fold back into one row per old key:
    # the first row takes the counts and the seen window of all, then the
    # others go (nothing counted is lost).
    same = " AND ".join(f"f2.{c} = flows.{c}" for c in _OLD_KEY)
    keep = f"SELECT MIN(id) FROM flows GROUP BY {', '.join(_OLD_KEY)}"
    op.execute(
        f"UPDATE flows SET count = (SELECT SUM(f2.count) FROM flows f2 WHERE {same}), "
        f"first_seen = (SELECT MIN(f2.first_seen) FROM flows f2 WHERE {same}), "
        f"last_seen = (SELECT MAX(f2.last_seen) FROM flows f2 WHERE {same}) "
        f"WHERE id IN ({keep})")
    op.execute(f"DELETE FROM flows WHERE id NOT IN ({keep})")
    with op.batch_alter_table("flows", schema=None) as batch_op:
        batch_op.drop_constraint("uq_flows_key", type_="unique")
        batch_op.create_unique_constraint("uq_flows_key", _OLD_KEY)
        batch_op.drop_column("ident")
        batch_op.drop_column("dst_identity")
        batch_op.drop_column("src_identity")
