"""A paid order whose stock was gone is flagged for the operator.

Revision ID: 0007_stock_shortfall
Revises: 0006_email_batches
Create Date: 2026-11-29

* ``orders.stock_shortfall``: NULL, or the lapsed reservation lines of a paid order
  that available stock could not cover when its payment succeeded after the hold
  (``storage.inventory``, "A payment that arrives after the hold"). Existing rows
  stay NULL: nothing was known to be short before.
* ``ix_orders_stock_short``: a partial index over the flagged orders only, so
  ``minalesh-workers stats`` counts them without scanning every order.

Portable like the others: ``batch_alter_table`` for SQLite, a partial index on both.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from storage.models import JsonDocument

revision = "0007_stock_shortfall"
down_revision = "0006_email_batches"
branch_labels = None
depends_on = None

FLAGGED = sa.text("stock_shortfall IS NOT NULL")


def upgrade() -> None:
    with op.batch_alter_table("orders") as table:
        table.add_column(sa.Column("stock_shortfall", JsonDocument))
    op.create_index("ix_orders_stock_short", "orders", ["paid_at"], postgresql_where=FLAGGED, sqlite_where=FLAGGED)


def downgrade() -> None:
    op.drop_index("ix_orders_stock_short", table_name="orders")
    with op.batch_alter_table("orders") as table:
        table.drop_column("stock_shortfall")
