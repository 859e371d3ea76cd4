"""Initial schema: policy (objects, rules, settings), history, users, tokens, audits, flows.

Revision ID: 0001
Revises:
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import cnnf.console.store.models

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audits",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("time", cnnf.console.store.models.UtcDateTime(timezone=True), nullable=False),
        sa.Column("type", sa.String(length=16), nullable=False),
        sa.Column("rule_id", sa.Integer(), nullable=True),
        sa.Column("rule_name", sa.String(length=200), nullable=False),
        sa.Column("blocked", sa.Boolean(), nullable=False),
        sa.Column("effect", sa.String(length=16), nullable=False),
        sa.Column("src_image", sa.String(length=300), nullable=False),
        sa.Column("src_container", sa.String(length=300), nullable=False),
        sa.Column("src_namespace", sa.String(length=200), nullable=False),
        sa.Column("src_hostname", sa.String(length=300), nullable=False),
        sa.Column("src_address", sa.String(length=64), nullable=False),
        sa.Column("dst_image", sa.String(length=300), nullable=False),
        sa.Column("dst_container", sa.String(length=300), nullable=False),
        sa.Column("dst_namespace", sa.String(length=200), nullable=False),
        sa.Column("dst_hostname", sa.String(length=300), nullable=False),
        sa.Column("dst_address", sa.String(length=64), nullable=False),
        sa.Column("port", sa.Integer(), nullable=False),
        sa.Column("dst_subnet", sa.String(length=64), nullable=False),
        sa.Column("dst_domain", sa.String(length=300), nullable=False),
        sa.Column("msg", sa.Text(), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("revision", sa.BigInteger(), nullable=False),
        sa.Column("defender", sa.String(length=200), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audits")),
    )
    with op.batch_alter_table("audits", schema=None) as batch_op:
        batch_op.create_index("ix_audits_dst_image", ["dst_image"], unique=False)
        batch_op.create_index("ix_audits_rule_name", ["rule_name"], unique=False)
        batch_op.create_index("ix_audits_src_image", ["src_image"], unique=False)
        batch_op.create_index(batch_op.f("ix_audits_time"), ["time"], unique=False)

    op.create_table(
        "changes",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("at", cnnf.console.store.models.UtcDateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("resource", sa.String(length=300), nullable=False),
        sa.Column("revision", sa.BigInteger(), nullable=False),
        sa.Column("before", sa.JSON(), nullable=True),
        sa.Column("after", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_changes")),
    )
    with op.batch_alter_table("changes", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_changes_at"), ["at"], unique=False)

    op.create_table(
        "flows",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("src", sa.String(length=300), nullable=False),
        sa.Column("dst", sa.String(length=300), nullable=False),
        sa.Column("port", sa.Integer(), nullable=False),
        sa.Column("verdict", sa.String(length=16), nullable=False),
        sa.Column("rule_id", sa.Integer(), nullable=False),
        sa.Column("rule_name", sa.String(length=200), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.Column(
            "first_seen", cnnf.console.store.models.UtcDateTime(timezone=True), nullable=False
        ),
        sa.Column(
            "last_seen", cnnf.console.store.models.UtcDateTime(timezone=True), nullable=False
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_flows")),
        sa.UniqueConstraint(
            "kind", "src", "dst", "port", "verdict", "rule_id", name="uq_flows_key"
        ),
    )
    with op.batch_alter_table("flows", schema=None) as batch_op:
        batch_op.create_index("ix_flows_last_seen", ["last_seen"], unique=False)

    op.create_table(
        "network_objects",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("body", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_network_objects")),
        sa.UniqueConstraint("name", name=op.f("uq_network_objects_name")),
    )
    op.create_table(
        "settings",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("container_enabled", sa.Boolean(), nullable=False),
        sa.Column("host_enabled", sa.Boolean(), nullable=False),
        sa.Column("default_effect", sa.String(length=16), nullable=False),
        sa.Column("block_mode", sa.String(length=16), nullable=False),
        sa.Column("revision", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_settings")),
    )
    # The one settings row; every policy change bumps its revision.
    op.execute(
        sa.text(
            "INSERT INTO settings (id, container_enabled, host_enabled, default_effect,"
            " block_mode, revision) VALUES (1, false, false, 'allow', 'reset', 0)"
        )
    )
    op.create_table(
        "users",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("password_hash", sa.String(length=200), nullable=False),
        sa.Column("disabled", sa.Boolean(), nullable=False),
        sa.Column("created", cnnf.console.store.models.UtcDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_users")),
        sa.UniqueConstraint("name", name=op.f("uq_users_name")),
    )
    op.create_table(
        "rules",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("rule_id", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("src_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("dst_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("ports", sa.JSON(), nullable=False),
        sa.Column("effect", sa.String(length=16), nullable=False),
        sa.Column("disabled", sa.Boolean(), nullable=False),
        sa.Column("notes", sa.Text(), nullable=False),
        sa.Column("owner", sa.String(length=200), nullable=False),
        sa.Column("modified", cnnf.console.store.models.UtcDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["dst_id"],
            ["network_objects.id"],
            name=op.f("fk_rules_dst_id_network_objects"),
            ondelete="RESTRICT",
        ),
        sa.ForeignKeyConstraint(
            ["src_id"],
            ["network_objects.id"],
            name=op.f("fk_rules_src_id_network_objects"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rules")),
        sa.UniqueConstraint("kind", "rule_id", name="uq_rules_kind_rule_id"),
    )
    with op.batch_alter_table("rules", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_rules_dst_id"), ["dst_id"], unique=False)
        batch_op.create_index("ix_rules_kind_position", ["kind", "position"], unique=False)
        batch_op.create_index(batch_op.f("ix_rules_src_id"), ["src_id"], unique=False)

    op.create_table(
        "tokens",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("user_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("created", cnnf.console.store.models.UtcDateTime(timezone=True), nullable=False),
        sa.Column("expires", cnnf.console.store.models.UtcDateTime(timezone=True), nullable=True),
        sa.Column("last_used", cnnf.console.store.models.UtcDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_tokens_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tokens")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_tokens_token_hash")),
    )
    with op.batch_alter_table("tokens", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_tokens_user_id"), ["user_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("tokens", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_tokens_user_id"))

    op.drop_table("tokens")
    with op.batch_alter_table("rules", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_rules_src_id"))
        batch_op.drop_index("ix_rules_kind_position")
        batch_op.drop_index(batch_op.f("ix_rules_dst_id"))

    op.drop_table("rules")
    op.drop_table("users")
    op.drop_table("settings")
    op.drop_table("network_objects")
    with op.batch_alter_table("flows", schema=None) as batch_op:
        batch_op.drop_index("ix_flows_last_seen")

    op.drop_table("flows")
    with op.batch_alter_table("changes", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_changes_at"))

    op.drop_table("changes")
    with op.batch_alter_table("audits", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_audits_time"))
        batch_op.drop_index("ix_audits_src_image")
        batch_op.drop_index("ix_audits_rule_name")
        batch_op.drop_index("ix_audits_dst_image")

    op.drop_table("audits")
