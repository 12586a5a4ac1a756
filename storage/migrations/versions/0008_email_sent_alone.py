"""An email offered to the provider on its own keeps its own idempotency key.

Revision ID: 0008_email_sent_alone
Revises: 0007_stock_shortfall
Create Date: 2026-11-29

``email_queue.sent_alone``: its message went (or may have gone) to the provider
under the email's own key, so it must never join a batch, whose key is another:
the provider would deliver it twice. Likewise a batch member (``batch_id``) is only
ever re-sent in its own batch. Existing rows start false: a row claimed again
later is judged by what it carries then.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008_email_sent_alone"
down_revision = "0007_stock_shortfall"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("email_queue") as table:
        table.add_column(sa.Column("sent_alone", sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("email_queue") as table:
        table.drop_column("sent_alone")
