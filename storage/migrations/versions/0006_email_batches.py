"""Batch sends: a batch's membership and idempotency key, fixed before its first request.

Revision ID: 0006_email_batches
Revises: 0005_sending_engine
Create Date: 2026-11-29

``email_batches`` holds one row per batch (its idempotency key, unique) and
``email_queue.batch_id`` its members: a retry after a timeout or a 5xx resends
exactly the same emails under the same key, which the provider answers once.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006_email_batches"
down_revision = "0005_sending_engine"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "email_batches",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("idempotency_key", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.UniqueConstraint("idempotency_key", name="uq_email_batches_idempotency_key"),
    )
    with op.batch_alter_table("email_queue") as table:
        table.add_column(sa.Column("batch_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite")))
    op.create_index("ix_email_queue_batch_id", "email_queue", ["batch_id"])


def downgrade() -> None:
    op.drop_index("ix_email_queue_batch_id", table_name="email_queue")
    with op.batch_alter_table("email_queue") as table:
        table.drop_column("batch_id")
    op.drop_table("email_batches")
