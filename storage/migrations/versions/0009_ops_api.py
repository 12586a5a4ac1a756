"""What the ops API reads fast, and the operator's pause of sending.

Revision ID: 0009_ops_api
Revises: 0008_email_sent_alone
Create Date: 2026-11-29

Indexes for the ops API's lists on a million emails (``storage.emails``):

* ``ix_email_queue_recipient_lower``: ``lower(recipient)`` then ``id``, with
  ``text_pattern_ops`` on PostgreSQL so a case-insensitive prefix search
  (``lower(recipient) LIKE 'amara%'``) is an index range whatever the collation;
* ``ix_email_queue_status_id``: a status filter read newest first (``id DESC``)
  walks the index instead of the whole table;
* ``ix_email_queue_sent_at`` and ``ix_email_queue_failed_at`` (``updated_at`` of
  failed emails only): the per-minute activity of the last hour;
* ``ix_webhook_events_event_id``: a search by the provider's event id across providers.

``sending_pauses``: one row per scope (``all``, ``bulk``) an operator paused;
``until`` NULL: until resumed. Epoch seconds, like ``rate_limit_slots``, so the
slot statement stays portable to SQLite.

On a large production table, build the indexes beforehand with ``CREATE INDEX
CONCURRENTLY`` under these names: this migration then skips them (``IF NOT EXISTS``).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009_ops_api"
down_revision = "0008_email_sent_alone"
branch_labels = None
depends_on = None

FAILED = sa.text("status = 'failed'")


def upgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    pattern = " text_pattern_ops" if postgres else ""
    op.execute(
        f"CREATE INDEX IF NOT EXISTS ix_email_queue_recipient_lower ON email_queue (lower(recipient){pattern}, id)"
    )
    op.create_index("ix_email_queue_status_id", "email_queue", ["status", "id"], if_not_exists=True)
    op.create_index("ix_email_queue_sent_at", "email_queue", ["sent_at"], if_not_exists=True)
    op.create_index(
        "ix_email_queue_failed_at",
        "email_queue",
        ["updated_at"],
        postgresql_where=FAILED,
        sqlite_where=FAILED,
        if_not_exists=True,
    )
    op.create_index("ix_webhook_events_event_id", "webhook_events", ["event_id"], if_not_exists=True)
    op.create_table(
        "sending_pauses",
        sa.Column("scope", sa.Text(), primary_key=True),
        sa.Column("until", sa.Float()),
        sa.Column("reason", sa.Text()),
        sa.Column("paused_at", sa.Float(), nullable=False),
        sa.Column("paused_by", sa.Text(), nullable=False),
        sa.CheckConstraint("scope IN ('all', 'bulk')", name="ck_sending_pauses_scope_known"),
    )


def downgrade() -> None:
    op.drop_table("sending_pauses")
    for name, table in (
        ("ix_webhook_events_event_id", "webhook_events"),
        ("ix_email_queue_failed_at", "email_queue"),
        ("ix_email_queue_sent_at", "email_queue"),
        ("ix_email_queue_status_id", "email_queue"),
        ("ix_email_queue_recipient_lower", "email_queue"),
    ):
        op.drop_index(name, table_name=table)
