"""Which provider sent each email, which one an uncertain attempt may have reached, and outage counts.

Revision ID: 0015_email_provider
Revises: 0012_rate_limit_warm_up
Create Date: 2026-12-10

* ``email_queue.provider``: the provider that accepted the email (``resend``, ``smtp``,
  ``outbox``); shown by the dashboard and counted by ``/metrics``. NULL for emails not
  sent, or sent before this revision.
* ``email_queue.maybe_sent_by`` / ``maybe_sent_at``: an attempt went out to that
  provider and no clear answer came back (a timeout, a 5xx, a connection dropped after
  DATA). Failover never hands such an email to another provider (unless
  EMAIL_FAILOVER_ACCEPT_DUPLICATES), and ``dlq replay`` past the provider's idempotency
  window asks for ``--accept-duplicate-risk``.
* ``rate_limit_slots.failures`` / ``failing_since``: failures of the provider as a
  whole counted across the fleet; enough of them start an outage pause.

Other branches add 0013/0014; the chain is re-linked when they merge.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015_email_provider"
down_revision = "0014_email_queue_indexes"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ADD COLUMN (SQLite has it): a batch copy of email_queue would trip over its expression index.
    op.add_column("email_queue", sa.Column("provider", sa.Text(), nullable=True))
    op.add_column("email_queue", sa.Column("maybe_sent_by", sa.Text(), nullable=True))
    op.add_column("email_queue", sa.Column("maybe_sent_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("rate_limit_slots") as table:
        table.add_column(sa.Column("failures", sa.Integer(), server_default="0", nullable=False))
        table.add_column(sa.Column("failing_since", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("rate_limit_slots") as table:
        table.drop_column("failing_since")
        table.drop_column("failures")
    for column in ("maybe_sent_at", "maybe_sent_by", "provider"):
        op.drop_column("email_queue", column)
