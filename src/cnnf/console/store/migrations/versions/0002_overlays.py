"""Data overlays: vulnerability and compliance counts per image and host.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import cnnf.console.store.models

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "overlays",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("name", sa.String(length=300), nullable=False),
        sa.Column("critical", sa.Integer(), nullable=False),
        sa.Column("high", sa.Integer(), nullable=False),
        sa.Column("medium", sa.Integer(), nullable=False),
        sa.Column("low", sa.Integer(), nullable=False),
        sa.Column("unknown", sa.Integer(), nullable=False),
        sa.Column("compliance_passed", sa.Integer(), nullable=False),
        sa.Column("compliance_failed", sa.Integer(), nullable=False),
        sa.Column("source", sa.String(length=300), nullable=False),
        sa.Column("updated", cnnf.console.store.models.UtcDateTime(timezone=True),
                  nullable=False),
        sa.Column("top", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_overlays")),
        sa.UniqueConstraint("kind", "name", name="uq_overlays_kind_name"),
    )


def downgrade() -> None:
    op.drop_table("overlays")
