"""Email queue, dead letters, final errors and provider rate-limit slots.

Revision ID: 0001_email_queue
Revises:
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from storage.models import BigId, JsonDocument

revision = "0001_email_queue"
down_revision = None
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
        "email_queue",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("recipient", sa.Text(), nullable=False),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("html", sa.Text()),
        sa.Column("text", sa.Text()),
        sa.Column("template", sa.Text()),
        sa.Column("template_data", JsonDocument),
        _timestamp("scheduled_at"),
        sa.Column("status", sa.Text(), nullable=False, server_default="pending"),
        sa.Column("retry_count", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("last_error", sa.Text()),
        sa.Column("provider_message_id", sa.Text()),
        _timestamp("sent_at"),
        _timestamp("next_attempt_at"),
        _timestamp("locked_until"),
        _timestamp("created_at", nullable=False, default_now=True),
        _timestamp("updated_at"),
        sa.CheckConstraint(
            "html IS NOT NULL OR text IS NOT NULL OR template IS NOT NULL", name="has_body"
        ),
        sa.CheckConstraint(
            "status IN ('pending', 'queued', 'sending', 'retrying', 'sent', 'failed')",
            name="status_known",
        ),
    )
    op.create_index("ix_email_queue_due", "email_queue", ["status", "scheduled_at"])
    op.create_index("ix_email_queue_lease", "email_queue", ["status", "locked_until"])

    op.create_table(
        "dead_letters",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("message_id", sa.Text(), nullable=False, unique=True),
        sa.Column("queue", sa.Text(), nullable=False),
        sa.Column("actor", sa.Text()),
        sa.Column("args", JsonDocument),
        sa.Column("kwargs", JsonDocument),
        sa.Column("options", JsonDocument),
        sa.Column("raw_body", sa.Text()),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("traceback", sa.Text()),
        sa.Column("retries", sa.Integer(), nullable=False, server_default="0"),
        _timestamp("dead_at", nullable=False, default_now=True),
        _timestamp("archived_at", nullable=False, default_now=True),
        _timestamp("replayed_at"),
    )
    op.create_index("ix_dead_letters_dead_at", "dead_letters", ["dead_at"])

    op.create_table(
        "final_errors",
        sa.Column("message_id", sa.Text(), primary_key=True),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("traceback", sa.Text()),
        sa.Column("retries", sa.Integer(), nullable=False, server_default="0"),
        _timestamp("failed_at", nullable=False, default_now=True),
    )

    op.create_table(
        "rate_limit_slots",
        sa.Column("name", sa.Text(), primary_key=True),
        sa.Column("next_slot", sa.Float(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("rate_limit_slots")
    op.drop_table("final_errors")
    op.drop_index("ix_dead_letters_dead_at", table_name="dead_letters")
    op.drop_table("dead_letters")
    op.drop_index("ix_email_queue_lease", table_name="email_queue")
    op.drop_index("ix_email_queue_due", table_name="email_queue")
    op.drop_table("email_queue")
