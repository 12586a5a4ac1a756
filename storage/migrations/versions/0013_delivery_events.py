"""Delivery events, suppressions, and the bounce and complaint rates.

Revision ID: 0013_delivery_events
Revises: 0012_rate_limit_warm_up
Create Date: 2026-12-10

* ``email_events``: every Resend delivery event, once per ``svix_id``, with its raw payload;
* ``email_queue.delivery_status`` (and when it changed): what the events said, never moving back;
* ``email_suppressions``: addresses no email goes to (lower-cased: compared case-insensitively);
* ``email_queue.status`` may be ``suppressed``: never offered to a provider;
* ``ix_email_queue_provider_message_id``: an event finds its email; ``ix_email_queue_bad_deliveries``
  (bounced and complained only, so small): the rates' numerators, the sends being counted on
  ``ix_email_queue_sent_at``;
* ``delivery_rate_alerts``: when each rate last alerted (the throttle shared by every worker).

On a large ``email_queue`` the two indexes take a while to build and lock writes meanwhile;
build them first by hand with ``CREATE INDEX CONCURRENTLY`` under the same names and this
migration skips them (``IF NOT EXISTS``).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from alembic import op

from storage.models import BigId, JsonDocument

revision = "0013_delivery_events"
down_revision = "0012_rate_limit_warm_up"
branch_labels = None
depends_on = None

_STATUSES_BEFORE = "status IN ('pending', 'queued', 'sending', 'retrying', 'sent', 'failed')"
_STATUSES = "status IN ('pending', 'queued', 'sending', 'retrying', 'sent', 'failed', 'suppressed')"
_BAD_DELIVERY = "delivery_status IN ('bounced', 'complained')"
_DELIVERY = (
    "delivery_status IS NULL OR delivery_status IN "
    "('delivery_delayed', 'delivered', 'bounced', 'suppressed', 'complained')"
)


def _timestamp(name: str, *, nullable: bool = True, default_now: bool = False) -> sa.Column:
    default = sa.func.now() if default_now else None
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable, server_default=default)


def upgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    op.add_column("email_queue", sa.Column("delivery_status", sa.Text()))
    op.add_column("email_queue", _timestamp("delivery_updated_at"))
    with _email_queue_altered(postgres) as table:
        table.drop_constraint(op.f("ck_email_queue_status_known"), type_="check")
        table.create_check_constraint("status_known", _STATUSES)
        table.create_check_constraint("delivery_status_known", _DELIVERY)
    if postgres:
        op.execute(
            "CREATE INDEX IF NOT EXISTS ix_email_queue_provider_message_id ON email_queue (provider_message_id)"
            " WHERE provider_message_id IS NOT NULL"
        )
        op.execute(
            "CREATE INDEX IF NOT EXISTS ix_email_queue_bad_deliveries ON email_queue (sent_at, delivery_status)"
            f" WHERE {_BAD_DELIVERY}"
        )
    else:
        op.create_index(
            "ix_email_queue_provider_message_id",
            "email_queue",
            ["provider_message_id"],
            sqlite_where=sa.text("provider_message_id IS NOT NULL"),
        )
        op.create_index(
            "ix_email_queue_bad_deliveries",
            "email_queue",
            ["sent_at", "delivery_status"],
            sqlite_where=sa.text(_BAD_DELIVERY),
        )

    op.create_table(
        "email_events",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("svix_id", sa.Text(), nullable=False),
        sa.Column("type", sa.Text(), nullable=False),
        sa.Column("provider_message_id", sa.Text(), nullable=False),
        sa.Column("email_id", BigId),
        _timestamp("occurred_at"),
        sa.Column("payload", JsonDocument, nullable=False),
        _timestamp("received_at", nullable=False, default_now=True),
        sa.UniqueConstraint("svix_id", name="uq_email_events_svix_id"),
    )
    op.create_index("ix_email_events_email_id", "email_events", ["email_id", "id"])
    op.create_index("ix_email_events_provider_message_id", "email_events", ["provider_message_id"])
    op.create_index(
        "ix_email_events_unmatched",
        "email_events",
        ["id"],
        postgresql_where=sa.text("email_id IS NULL"),
        sqlite_where=sa.text("email_id IS NULL"),
    )
    op.create_table(
        "email_suppressions",
        sa.Column("address", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("email_id", BigId),
        sa.Column("event_id", BigId),
        sa.Column("created_by", sa.Text(), nullable=False),
        _timestamp("created_at", nullable=False, default_now=True),
        sa.PrimaryKeyConstraint("address", name="pk_email_suppressions"),
    )
    op.create_table(
        "delivery_rate_alerts",
        sa.Column("rate", sa.Text(), nullable=False),
        _timestamp("last_alert_at"),
        sa.PrimaryKeyConstraint("rate", name="pk_delivery_rate_alerts"),
    )


def downgrade() -> None:
    op.drop_table("delivery_rate_alerts")
    op.drop_table("email_suppressions")
    op.drop_table("email_events")
    op.drop_index("ix_email_queue_bad_deliveries", table_name="email_queue")
    op.drop_index("ix_email_queue_provider_message_id", table_name="email_queue")
    op.execute("UPDATE email_queue SET status = 'failed' WHERE status = 'suppressed'")
    postgres = op.get_bind().dialect.name == "postgresql"
    with _email_queue_altered(postgres) as table:
        table.drop_constraint(op.f("ck_email_queue_delivery_status_known"), type_="check")
        table.drop_constraint(op.f("ck_email_queue_status_known"), type_="check")
        table.create_check_constraint("status_known", _STATUSES_BEFORE)
    with _email_queue_altered(postgres) as table:
        table.drop_column("delivery_updated_at")
        table.drop_column("delivery_status")


@contextmanager
def _email_queue_altered(postgres: bool) -> Iterator[Any]:
    """``email_queue`` to alter: in place on PostgreSQL; on SQLite (``dev``) by Alembic's copy of the table.

    The copy leaves out the expression indexes SQLAlchemy cannot reflect (``ix_email_queue_due_since``,
    ``ix_email_queue_recipient_lower``), so they are read before and created again after.
    """
    if postgres:
        yield _InPlace()
        return
    bind = op.get_bind()
    indexes = bind.execute(
        sa.text(
            "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'email_queue' AND sql IS NOT NULL"
        )
    ).all()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Skipped unsupported reflection of expression-based index")
        with op.batch_alter_table("email_queue", recreate="always") as table:
            yield table
    present = {row[0] for row in bind.execute(sa.text("SELECT name FROM sqlite_master WHERE type = 'index'"))}
    for name, sql in indexes:
        if name not in present:
            op.execute(sql)


class _InPlace:
    """``batch_alter_table``'s methods used here, as plain ALTER TABLE statements on ``email_queue``."""

    def drop_constraint(self, name: str, type_: str) -> None:
        op.drop_constraint(name, "email_queue", type_=type_)

    def create_check_constraint(self, name: str, condition: str) -> None:
        op.create_check_constraint(name, "email_queue", condition)

    def drop_column(self, name: str) -> None:
        op.drop_column("email_queue", name)
