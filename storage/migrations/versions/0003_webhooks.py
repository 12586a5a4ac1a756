"""Orders (the part the workers touch) and payment webhook events.

Revision ID: 0003_webhooks
Revises: 0002_inventory
Create Date: 2026-12-02

Runs on PostgreSQL and on the SQLite of ``minalesh-workers dev``: only portable
types and defaults (``now()`` renders as ``CURRENT_TIMESTAMP`` there, ``false`` as 0).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from storage.models import BigId, JsonDocument

revision = "0003_webhooks"
down_revision = "0002_inventory"
branch_labels = None
depends_on = None


def _timestamp(name: str, *, nullable: bool = True, default_now: bool = False) -> sa.Column:
    return sa.Column(
        name,
        sa.DateTime(timezone=True),
        nullable=nullable,
        server_default=sa.func.now() if default_now else None,
    )


def upgrade() -> None:
    op.create_table(
        "orders",
        sa.Column("id", sa.Text(), primary_key=True),
        sa.Column("status", sa.Text(), nullable=False, server_default="pending"),
        sa.Column("payment_status", sa.Text(), nullable=False, server_default="pending"),
        sa.Column("total", sa.Numeric(12, 2), nullable=False),
        sa.Column("currency", sa.Text(), nullable=False, server_default="ETB"),
        sa.Column("customer_email", sa.Text()),
        _timestamp("paid_at"),
        _timestamp("created_at", nullable=False, default_now=True),
        _timestamp("updated_at"),
    )

    op.create_table(
        "webhook_events",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("provider", sa.Text(), nullable=False),
        sa.Column("event_id", sa.Text(), nullable=False),
        sa.Column("type", sa.Text(), nullable=False),
        sa.Column("order_id", sa.Text()),
        sa.Column("payload", JsonDocument, nullable=False),
        sa.Column("status", sa.Text(), nullable=False, server_default="pending"),
        sa.Column("retry_count", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        _timestamp("next_retry_at"),
        sa.Column("last_error", sa.Text()),
        sa.Column("archived", sa.Boolean(), nullable=False, server_default=sa.false()),
        _timestamp("locked_until"),
        _timestamp("attempt_started_at"),
        _timestamp("received_at", nullable=False, default_now=True),
        _timestamp("processed_at"),
        _timestamp("updated_at"),
        sa.UniqueConstraint("provider", "event_id", name="uq_webhook_events_provider_event_id"),
        sa.CheckConstraint("status IN ('pending', 'processed', 'failed')", name="status_known"),
    )
    op.create_index("ix_webhook_events_due", "webhook_events", ["archived", "status", "next_retry_at"])
    op.create_index("ix_webhook_events_lease", "webhook_events", ["archived", "locked_until"])
    op.create_index("ix_webhook_events_order_id", "webhook_events", ["order_id"])


def downgrade() -> None:
    op.drop_index("ix_webhook_events_order_id", table_name="webhook_events")
    op.drop_index("ix_webhook_events_lease", table_name="webhook_events")
    op.drop_index("ix_webhook_events_due", table_name="webhook_events")
    op.drop_table("webhook_events")
    op.drop_table("orders")
