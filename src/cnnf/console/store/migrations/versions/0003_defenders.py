"""Defenders: enrollment tokens, enrolled Defenders (credential hash, last seen,
latest inventory), the cluster inventory revision, and the ids of stored report
batches (idempotent redelivery).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import cnnf.console.store.models

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Time = cnnf.console.store.models.UtcDateTime


def upgrade() -> None:
    op.create_table(
        "enrollment_tokens",
        sa.Column("id", BigId, nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("created", Time(timezone=True), nullable=False),
        sa.Column("expires", Time(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(length=200), nullable=False),
        sa.Column("uses", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_enrollment_tokens")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_enrollment_tokens_token_hash")),
    )
    op.create_table(
        "defenders",
        sa.Column("id", BigId, nullable=False),
        sa.Column("defender_id", sa.String(length=64), nullable=False),
        sa.Column("hostname", sa.String(length=300), nullable=False),
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("credential_hash", sa.String(length=64), nullable=False),
        sa.Column("enrolled", Time(timezone=True), nullable=False),
        sa.Column("last_seen", Time(timezone=True), nullable=True),
        sa.Column("revoked", sa.Boolean(), nullable=False),
        sa.Column("protected", sa.Integer(), nullable=False),
        sa.Column("inventory", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_defenders")),
        sa.UniqueConstraint("credential_hash", name=op.f("uq_defenders_credential_hash")),
        sa.UniqueConstraint("defender_id", name=op.f("uq_defenders_defender_id")),
    )
    state = op.create_table(
        "inventory_state",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("revision", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_inventory_state")),
    )
    op.bulk_insert(state, [{"id": 1, "revision": 0}])
    op.create_table(
        "report_batches",
        sa.Column("batch_id", sa.String(length=100), nullable=False),
        sa.Column("defender_id", sa.String(length=64), nullable=False),
        sa.Column("received", Time(timezone=True), nullable=False),
        sa.Column("flows", sa.Integer(), nullable=False),
        sa.Column("audits", sa.Integer(), nullable=False),
        sa.Column("dropped", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("batch_id", name=op.f("pk_report_batches")),
    )
    op.create_index(op.f("ix_report_batches_received"), "report_batches", ["received"],
                    unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_report_batches_received"), table_name="report_batches")
    op.drop_table("report_batches")
    op.drop_table("inventory_state")
    op.drop_table("defenders")
    op.drop_table("enrollment_tokens")
