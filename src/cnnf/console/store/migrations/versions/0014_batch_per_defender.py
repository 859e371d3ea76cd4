"""Report batch ids are kept per Defender: the key of ``report_batches`` is
(batch_id, defender_id), not batch_id alone. Two Defenders sending one id (a
state directory copied to a second node) each get their batch stored, where the
second was taken for a duplicate of the first and its records dropped.

Revision ID: 0014
Revises: 0013
Create Date: 2026-11-30
"""

from __future__ import annotations

from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("report_batches", schema=None) as batch_op:
        batch_op.drop_constraint("pk_report_batches", type_="primary")
        batch_op.create_primary_key("pk_report_batches", ["batch_id", "defender_id"])


def downgrade() -> None:
    # An id several Defenders used cannot keep its rows under the old key: forget
    # them (these rows only tell redeliveries apart, for a short while).
    op.execute("DELETE FROM report_batches WHERE batch_id IN (SELECT batch_id FROM "
               "report_batches GROUP BY batch_id HAVING COUNT(*) > 1)")
    with op.batch_alter_table("report_batches", schema=None) as batch_op:
        batch_op.drop_constraint("pk_report_batches", type_="primary")
        batch_op.create_primary_key("pk_report_batches", ["batch_id"])
