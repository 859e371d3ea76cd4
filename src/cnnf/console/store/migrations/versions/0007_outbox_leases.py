"""Durable forwarding and singleton work across Console replicas: the forwarding
outbox (one row per audit and sink until delivered) and leases.

Audits stored before this revision are not queued: they were forwarded (or
dropped) by the in-memory forwarder of the version that stored them.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import cnnf.console.store.models

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

Time = cnnf.console.store.models.UtcDateTime


def upgrade() -> None:
    op.create_table(
        "forward_outbox",
        sa.Column("sink", sa.String(length=200), nullable=False),
        sa.Column("audit_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
                  nullable=False),
        sa.Column("queued", Time(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["audit_id"], ["audits.id"], ondelete="CASCADE",
                                name=op.f("fk_forward_outbox_audit_id_audits")),
        sa.PrimaryKeyConstraint("sink", "audit_id", name=op.f("pk_forward_outbox")),
    )
    op.create_index(op.f("ix_forward_outbox_audit_id"), "forward_outbox", ["audit_id"])
    op.create_table(
        "leases",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("holder", sa.String(length=200), nullable=False),
        sa.Column("expires", Time(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_leases")),
    )


def downgrade() -> None:
    # What a downgrade of 0010 kept aside for forwarding (see migrations.kept) has
    # no use without forwarding.
    from cnnf.console.store.migrations.kept import KEPT_AUDIT_IDS, KEPT_PARKED, tables

    for kept in {KEPT_PARKED, KEPT_AUDIT_IDS} & tables():
        op.drop_table(kept)
    op.drop_table("leases")
    op.drop_index(op.f("ix_forward_outbox_audit_id"), table_name="forward_outbox")
    op.drop_table("forward_outbox")
