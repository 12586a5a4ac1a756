"""Each periodic job's last run, and the indexes of the metrics' gauges.

Revision ID: 0010_periodic_runs
Revises: 0009_ops_api
Create Date: 2026-11-29

``periodic_runs``: one row per periodic job (its actor's name) with its last success
and last failure, written by the job's actor (``pipeline.core.declare``), read by the
``/metrics`` gauges and ``stats``. ``ix_dead_letters_queue_actor`` lets a scrape count
dead letters by queue and actor from the index alone, however many there are;
``ix_email_queue_due_since`` (partial: unsent emails only, so it stays small) gives the
oldest due email from its first entry, however long the backlog.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010_periodic_runs"
down_revision = "0009_ops_api"
branch_labels = None
depends_on = None

UNSENT = "status IN ('pending', 'queued', 'sending', 'retrying')"


def upgrade() -> None:
    op.create_table(
        "periodic_runs",
        sa.Column("job", sa.Text(), nullable=False),
        sa.Column("last_success_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_failure_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("job", name="pk_periodic_runs"),
    )
    op.create_index("ix_dead_letters_queue_actor", "dead_letters", ["queue", "actor"])
    op.create_index(
        "ix_email_queue_due_since",
        "email_queue",
        [sa.text("coalesce(next_attempt_at, scheduled_at, created_at)")],
        postgresql_where=sa.text(UNSENT),
        sqlite_where=sa.text(UNSENT),
    )


def downgrade() -> None:
    op.drop_index("ix_email_queue_due_since", table_name="email_queue")
    op.drop_index("ix_dead_letters_queue_actor", table_name="dead_letters")
    op.drop_table("periodic_runs")
