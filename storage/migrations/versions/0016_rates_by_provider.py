"""The bounce and complaint rates count only the sends of providers that report delivery events.

Revision ID: 0016_rates_by_provider
Revises: 0015_email_provider
Create Date: 2026-12-03

Resend's bounce and complaint thresholds (4%, 0.08%) are over the sends Resend made,
and only Resend reports delivery events. Since SMTP (issue 18) sends too, counting
every send diluted the rates: a shop failing over half its emails to SMTP would see
Resend's bounce rate at half its value. ``storage.delivery_events.rates`` now counts
the sends of the providers it is given (and those sent before ``email_queue.provider``
was recorded, which Resend made), so ``ix_email_queue_sent_at`` carries ``provider``
after ``sent_at``: the count stays an index-only range scan, and every query that
reads the index by ``sent_at`` still can.

On a large production table, build the new index beforehand with ``CREATE INDEX
CONCURRENTLY`` under a temporary name, drop the old one and rename: this migration
then only finds it (it drops and creates by name).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0016_rates_by_provider"
down_revision = "0015_email_provider"
branch_labels = None
depends_on = None

NAME = "ix_email_queue_sent_at"
SENT_AT = sa.text("sent_at IS NOT NULL")


def upgrade() -> None:
    op.drop_index(NAME, table_name="email_queue", if_exists=True)
    op.create_index(NAME, "email_queue", ["sent_at", "provider"], postgresql_where=SENT_AT, sqlite_where=SENT_AT)


def downgrade() -> None:
    op.drop_index(NAME, table_name="email_queue")
    op.create_index(NAME, "email_queue", ["sent_at"], postgresql_where=SENT_AT, sqlite_where=SENT_AT)
