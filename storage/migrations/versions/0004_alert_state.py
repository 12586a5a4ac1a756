"""Dead-letter alerts: the shared throttle row, and which dead letters an alert has counted.

Revision ID: 0004_alert_state
Revises: 0003_webhooks
Create Date: 2026-12-03

``dead_letters.alerted_at`` starts as ``archived_at`` for the rows already there, so
the first digest after the upgrade reports what dies from then on, not the history.
Portable to the SQLite of ``minalesh-workers dev`` (partial indexes exist there too).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_alert_state"
down_revision = "0003_webhooks"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "alert_state",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("last_alert_at", sa.DateTime(timezone=True)),
        sa.Column("counted_since", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.CheckConstraint("id = 1", name="single_row"),
    )
    op.execute("INSERT INTO alert_state (id) VALUES (1)")
    op.add_column("dead_letters", sa.Column("alerted_at", sa.DateTime(timezone=True)))
    op.execute("UPDATE dead_letters SET alerted_at = archived_at")
    op.create_index(
        "ix_dead_letters_unalerted",
        "dead_letters",
        ["id"],
        postgresql_where=sa.text("alerted_at IS NULL"),
        sqlite_where=sa.text("alerted_at IS NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_dead_letters_unalerted", table_name="dead_letters")
    with op.batch_alter_table("dead_letters") as batch:
        batch.drop_column("alerted_at")
    op.drop_table("alert_state")
