"""A process's first request to the provider goes alone.

Revision ID: 0012_rate_limit_warm_up
Revises: 0011_dead_letter_search
Create Date: 2026-12-03

``rate_limit_slots.warming_until``: while a process's first request is in flight,
no other slot is handed out until its answer (or, if that process dies, until
this time). A cold process's first request reaches the provider late (its first
connection, its threads rendering their first batches on a busy machine); the
fleet then spaces the next requests from that request's answer instead of its
slot, so the late one cannot share the provider's one-second window with two
others. NULL: no first request in flight.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012_rate_limit_warm_up"
down_revision = "0011_dead_letter_search"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("rate_limit_slots") as table:
        table.add_column(sa.Column("warming_until", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("rate_limit_slots") as table:
        table.drop_column("warming_until")
