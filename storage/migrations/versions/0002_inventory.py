"""Products and the inventory reservations that hold their stock during checkout.

Revision ID: 0002_inventory
Revises: 0001_email_queue
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from storage.models import BigId

revision = "0002_inventory"
down_revision = "0001_email_queue"
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
        "products",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("sku", sa.Text(), nullable=False, unique=True),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("stock", sa.Integer(), nullable=False, server_default="0"),
        _timestamp("created_at", nullable=False, default_now=True),
        sa.CheckConstraint("stock >= 0", name="stock_not_negative"),
    )

    op.create_table(
        "inventory_reservations",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("product_id", BigId, sa.ForeignKey("products.id"), nullable=False),
        sa.Column("order_id", sa.Text()),
        sa.Column("quantity", sa.Integer(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False, server_default="active"),
        _timestamp("expires_at", nullable=False),
        _timestamp("created_at", nullable=False, default_now=True),
        _timestamp("updated_at"),
        _timestamp("released_at"),
        _timestamp("committed_at"),
        sa.CheckConstraint("quantity > 0", name="quantity_positive"),
        sa.CheckConstraint("status IN ('active', 'committed', 'released', 'expired')", name="status_known"),
    )
    op.create_index("ix_inventory_reservations_due", "inventory_reservations", ["status", "expires_at"])
    op.create_index("ix_inventory_reservations_order_id", "inventory_reservations", ["order_id"])
    op.create_index(
        "ix_inventory_reservations_product_status", "inventory_reservations", ["product_id", "status"]
    )


def downgrade() -> None:
    op.drop_index("ix_inventory_reservations_product_status", table_name="inventory_reservations")
    op.drop_index("ix_inventory_reservations_order_id", table_name="inventory_reservations")
    op.drop_index("ix_inventory_reservations_due", table_name="inventory_reservations")
    op.drop_table("inventory_reservations")
    op.drop_table("products")
