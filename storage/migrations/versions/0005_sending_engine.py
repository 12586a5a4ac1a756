"""The sending engine: email priorities, lease holders, the provider's limits, insert wake-ups.

Revision ID: 0005_sending_engine
Revises: 0004_alert_state
Create Date: 2026-11-29

* ``email_queue.priority``: ``transactional`` (the default, so every existing INSERT
  keeps its meaning) or ``bulk``; claims take transactional emails first.
* ``lease_holder`` on ``email_queue`` and ``webhook_events``: the message id whose
  attempt holds the lease, so the same message coming back (a redelivery after its
  worker died, a retry after the database came back) takes its lease over at once.
* ``rate_limit_slots``: what the provider told us (its limit, a pause and why) and
  the precedence transactional sends claim over bulk ones.
* On PostgreSQL, a statement-level trigger ``NOTIFY minalesh_email_queue`` after every
  INSERT into ``email_queue``: the ticker's listener wakes and fans out at once.
  Notifications are merged per transaction, so a bulk INSERT wakes it once.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_sending_engine"
down_revision = "0004_alert_state"
branch_labels = None
depends_on = None

NOTIFY_FUNCTION = """
CREATE OR REPLACE FUNCTION minalesh_email_queue_notify() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('minalesh_email_queue', '');
    RETURN NULL;
END
$$ LANGUAGE plpgsql
"""
NOTIFY_TRIGGER = """
CREATE TRIGGER email_queue_notify AFTER INSERT ON email_queue
FOR EACH STATEMENT EXECUTE FUNCTION minalesh_email_queue_notify()
"""


def upgrade() -> None:
    with op.batch_alter_table("email_queue") as table:
        table.add_column(sa.Column("priority", sa.Text(), nullable=False, server_default="transactional"))
        table.add_column(sa.Column("lease_holder", sa.Text()))
        table.create_check_constraint("priority_known", "priority IN ('transactional', 'bulk')")
    op.create_index("ix_email_queue_claim", "email_queue", ["status", "priority", "id"])
    with op.batch_alter_table("webhook_events") as table:
        table.add_column(sa.Column("lease_holder", sa.Text()))
    with op.batch_alter_table("rate_limit_slots") as table:
        table.add_column(sa.Column("provider_limit", sa.Float()))
        table.add_column(sa.Column("priority_until", sa.Float()))
        table.add_column(sa.Column("paused_until", sa.Float()))
        table.add_column(sa.Column("pause_reason", sa.Text()))
        table.add_column(sa.Column("paused_since", sa.Float()))
    if op.get_bind().dialect.name == "postgresql":
        op.execute(NOTIFY_FUNCTION)
        op.execute(NOTIFY_TRIGGER)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS email_queue_notify ON email_queue")
        op.execute("DROP FUNCTION IF EXISTS minalesh_email_queue_notify()")
    with op.batch_alter_table("rate_limit_slots") as table:
        for column in ("paused_since", "pause_reason", "paused_until", "priority_until", "provider_limit"):
            table.drop_column(column)
    with op.batch_alter_table("webhook_events") as table:
        table.drop_column("lease_holder")
    op.drop_index("ix_email_queue_claim", table_name="email_queue")
    with op.batch_alter_table("email_queue") as table:
        table.drop_constraint("ck_email_queue_priority_known", type_="check")
        table.drop_column("lease_holder")
        table.drop_column("priority")
