"""The tables the workers own or touch, as typed SQLAlchemy 2.0 models.

Every change here goes with an Alembic migration in ``storage/migrations``; the
models are what the code reads, the migrations are what the database gets.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, ClassVar, Optional

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Numeric,
    Table,
    Text,
    UniqueConstraint,
    false,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

#: Stable constraint names, so Alembic migrations can name what they alter.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

#: 64-bit ids on PostgreSQL; SQLite only auto-increments a plain INTEGER key.
BigId = BigInteger().with_variant(Integer(), "sqlite")

#: JSONB on PostgreSQL (indexable, what the shop's other tables use); JSON elsewhere.
JsonDocument = JSON().with_variant(JSONB(), "postgresql")

#: The same, where Python's None is SQL NULL (not JSON ``null``), so ``IS NULL`` finds it.
NullableJson = JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")


class UtcDateTime(TypeDecorator[datetime]):
    """``DateTime(timezone=True)`` that reads back aware UTC on SQLite too, which stores no zone.

    Without it the dev mode compared naive values read back with aware ones computed
    here (``TypeError: can't subtract offset-naive and offset-aware datetimes``).
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_result_value(self, value: Optional[datetime], dialect: Dialect) -> Optional[datetime]:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    #: Every model here is declared with ``__tablename__``, so mapped to a ``Table``
    #: (SQLAlchemy types it as any ``FromClause``, which ``insert()`` does not take).
    __table__: ClassVar[Table]


class EmailStatus(str, enum.Enum):
    """Where an email is in its life; ``sent`` and ``failed`` are final."""

    #: Written by the host; waits for its ``scheduled_at`` and the next fan-out.
    PENDING = "pending"
    #: Claimed by a fan-out: a send message is on its way to a worker.
    QUEUED = "queued"
    #: A worker is calling the provider right now.
    SENDING = "sending"
    #: The last attempt failed; the next one is due at ``next_attempt_at``.
    RETRYING = "retrying"
    #: The provider accepted it (``provider_message_id``, ``sent_at``).
    SENT = "sent"
    #: Given up: permanent error or retries exhausted; see ``dead_letters``.
    FAILED = "failed"
    #: Never offered to a provider: its recipient is on ``email_suppressions`` (the reason in ``last_error``).
    SUPPRESSED = "suppressed"


class DeliveryStatus(str, enum.Enum):
    """What the provider's delivery events said of a sent email (``email_queue.delivery_status``).

    Events arrive at least once and in any order; a status only ever moves up
    ``DELIVERY_RANK``, so an older ``delivered`` after a ``bounced`` changes nothing.
    NULL: no event yet, or an email sent by a provider without events (SMTP).
    """

    #: The receiving server has not accepted it yet; the provider keeps trying.
    DELIVERY_DELAYED = "delivery_delayed"
    #: The receiving server accepted it.
    DELIVERED = "delivered"
    #: The receiving server refused it for good (a permanent bounce).
    BOUNCED = "bounced"
    #: The provider did not send it: the address is on its own suppression list.
    SUPPRESSED = "suppressed"
    #: The recipient marked it as spam.
    COMPLAINED = "complained"


#: How far along each delivery status is; an event moves a status only to a higher rank.
DELIVERY_RANK = {
    DeliveryStatus.DELIVERY_DELAYED.value: 1,
    DeliveryStatus.DELIVERED.value: 2,
    DeliveryStatus.BOUNCED.value: 3,
    DeliveryStatus.SUPPRESSED.value: 3,
    DeliveryStatus.COMPLAINED.value: 4,
}


class EmailPriority(str, enum.Enum):
    """Which emails go first when the provider's limit is the bottleneck."""

    #: Receipts, password resets, payment emails: never wait behind bulk (the default).
    TRANSACTIONAL = "transactional"
    #: Newsletters and campaigns: sent with what the limit leaves.
    BULK = "bulk"


#: The delivery outcomes the rates count, which ``ix_email_queue_bad_deliveries`` indexes.
_BAD_DELIVERY = "delivery_status IN ('bounced', 'complained')"
#: The unsent emails, which ``ix_email_queue_due_since`` indexes by the time they have been due since.
_UNSENT_PREDICATE = "status IN ('pending', 'queued', 'sending', 'retrying')"
#: The rows a claim's first arm and the wake-up's next scheduled email read (``ix_email_queue_due``).
_PENDING_PREDICATE = "status = 'pending'"
#: The leased rows: in flight, or whose lease ran out (``ix_email_queue_lease``).
_LEASED_PREDICATE = "status IN ('queued', 'sending', 'retrying')"


class EmailQueue(Base):
    """One transactional email, written by the host, sent by the workers."""

    __tablename__ = "email_queue"
    __table_args__ = (
        CheckConstraint(
            "html IS NOT NULL OR text IS NOT NULL OR template IS NOT NULL",
            name="has_body",
        ),
        CheckConstraint(
            "status IN ('pending', 'queued', 'sending', 'retrying', 'sent', 'failed', 'suppressed')",
            name="status_known",
        ),
        CheckConstraint("priority IN ('transactional', 'bulk')", name="priority_known"),
        CheckConstraint(
            "delivery_status IS NULL OR delivery_status IN "
            "('delivery_delayed', 'delivered', 'bounced', 'suppressed', 'complained')",
            name="delivery_status_known",
        ),
        # Partial over the rows their queries read (migration 0014): fewer index entries per status change.
        Index(
            "ix_email_queue_due",
            "status",
            "scheduled_at",
            postgresql_where=text(_PENDING_PREDICATE),
            sqlite_where=text(_PENDING_PREDICATE),
        ),
        Index(
            "ix_email_queue_lease",
            "status",
            "locked_until",
            postgresql_where=text(_LEASED_PREDICATE),
            sqlite_where=text(_LEASED_PREDICATE),
        ),
        Index("ix_email_queue_claim", "status", "priority", "id"),
        Index(
            "ix_email_queue_due_since",
            text("coalesce(next_attempt_at, scheduled_at, created_at)"),
            postgresql_where=text(_UNSENT_PREDICATE),
            sqlite_where=text(_UNSENT_PREDICATE),
        ),
        # Migration 0009 also indexes ``lower(recipient)`` (text_pattern_ops), for the ops API's search.
        Index("ix_email_queue_status_id", "status", "id"),
        Index(
            "ix_email_queue_sent_at",
            "sent_at",
            "provider",  # the rates count the sends of providers with delivery events (migration 0016)
            postgresql_where=text("sent_at IS NOT NULL"),
            sqlite_where=text("sent_at IS NOT NULL"),
        ),
        # The bounce and complaint rates (``storage.delivery_events.rates``): sends are counted on
        # ``ix_email_queue_sent_at``, the few bad outcomes on this small partial index.
        Index(
            "ix_email_queue_bad_deliveries",
            "sent_at",
            "delivery_status",
            postgresql_where=text(_BAD_DELIVERY),
            sqlite_where=text(_BAD_DELIVERY),
        ),
        # A delivery event finds its email by the provider's id (migration 0013).
        Index(
            "ix_email_queue_provider_message_id",
            "provider_message_id",
            postgresql_where=text("provider_message_id IS NOT NULL"),
            sqlite_where=text("provider_message_id IS NOT NULL"),
        ),
        Index(
            "ix_email_queue_batch_id",
            "batch_id",
            postgresql_where=text("batch_id IS NOT NULL"),
            sqlite_where=text("batch_id IS NOT NULL"),
        ),
        Index(
            "ix_email_queue_failed_at",
            "updated_at",
            postgresql_where=text("status = 'failed'"),
            sqlite_where=text("status = 'failed'"),
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    recipient: Mapped[str] = mapped_column(Text)
    subject: Mapped[str] = mapped_column(Text)
    html: Mapped[Optional[str]] = mapped_column(Text)
    text: Mapped[Optional[str]] = mapped_column(Text)
    template: Mapped[Optional[str]] = mapped_column(Text)
    template_data: Mapped[Optional[dict[str, Any]]] = mapped_column(JsonDocument)
    scheduled_at: Mapped[Optional[datetime]] = mapped_column(UtcDateTime())
    status: Mapped[str] = mapped_column(Text, server_default=EmailStatus.PENDING.value)
    #: Retries made so far (attempts after the first), as the shop's dashboards expect.
    retry_count: Mapped[int] = mapped_column(Integer, server_default="0")
    #: Attempts started and not refunded (a 429 refunds its attempt); bounds the work
    #: even when a worker dies mid-send and RabbitMQ redelivers behind Dramatiq's back.
    attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    last_error: Mapped[Optional[str]] = mapped_column(Text)
    provider_message_id: Mapped[Optional[str]] = mapped_column(Text)
    #: The provider that sent it (``resend``, ``smtp``, ``outbox``); NULL: not sent, or sent before 0015.
    provider: Mapped[Optional[str]] = mapped_column(Text)
    #: The provider an attempt may have reached without a clear answer (a timeout, a 5xx, a connection
    #: dropped after DATA), and when: only that provider may be asked again (failover skips it).
    maybe_sent_by: Mapped[Optional[str]] = mapped_column(Text)
    maybe_sent_at: Mapped[Optional[datetime]] = mapped_column(UtcDateTime())
    sent_at: Mapped[Optional[datetime]] = mapped_column(UtcDateTime())
    #: When the next attempt may start (set while ``retrying``).
    next_attempt_at: Mapped[Optional[datetime]] = mapped_column(UtcDateTime())
    #: Until when a claim holds; past it, a fan-out claims the email again.
    locked_until: Mapped[Optional[datetime]] = mapped_column(UtcDateTime())
    #: ``transactional`` or ``bulk`` (see ``EmailPriority``); the host may set it in its INSERT.
    priority: Mapped[str] = mapped_column(Text, server_default=EmailPriority.TRANSACTIONAL.value)
    #: The message whose attempt holds the lease: that message coming back takes it over at once.
    lease_holder: Mapped[Optional[str]] = mapped_column(Text)
    #: The batch request carrying this email (``email_batches``), for good: it is only
    #: ever re-sent in that batch, under that batch's idempotency key.
    batch_id: Mapped[Optional[int]] = mapped_column(BigId)
    #: Offered to the provider on its own, under its own key: it never joins a batch.
    sent_alone: Mapped[bool] = mapped_column(Boolean, server_default=false())
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), server_default=func.now())
    updated_at: Mapped[Optional[datetime]] = mapped_column(UtcDateTime())
    #: What the provider's delivery events said (``DeliveryStatus``); NULL: nothing yet, or sent by SMTP.
    delivery_status: Mapped[Optional[str]] = mapped_column(Text)
    #: When ``delivery_status`` last changed.
    delivery_updated_at: Mapped[Optional[datetime]] = mapped_column(UtcDateTime())


class EmailEvent(Base):
    """One delivery event of the provider (a Resend webhook), stored once per ``svix_id`` with its payload.

    ``email_id`` is the email whose ``provider_message_id`` is the event's ``data.email_id``,
    or NULL when no email had that id when it arrived (kept and counted, not an error).
    """

    __tablename__ = "email_events"
    __table_args__ = (
        Index("ix_email_events_email_id", "email_id", "id"),
        Index("ix_email_events_provider_message_id", "provider_message_id"),
        Index(
            "ix_email_events_unmatched",
            "id",
            postgresql_where=text("email_id IS NULL"),
            sqlite_where=text("email_id IS NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    #: Svix's id of the message: a provider's retry of it is the same event.
    svix_id: Mapped[str] = mapped_column(Text, unique=True)
    #: ``email.delivered``, ``email.bounced``…
    type: Mapped[str] = mapped_column(Text)
    #: ``data.email_id``: the id the provider's send answered.
    provider_message_id: Mapped[str] = mapped_column(Text)
    email_id: Mapped[Optional[int]] = mapped_column(BigId)
    #: The event's own ``created_at``, as the provider wrote it (NULL if absent or unreadable).
    occurred_at: Mapped[Optional[datetime]] = mapped_column(UtcDateTime())
    payload: Mapped[dict[str, Any]] = mapped_column(JsonDocument)
    received_at: Mapped[datetime] = mapped_column(UtcDateTime(), server_default=func.now())


class EmailSuppression(Base):
    """An address no email is sent to: it bounced for good, complained, or an operator put it here.

    ``address`` is stored lower-cased, so addresses compare case-insensitively.
    """

    __tablename__ = "email_suppressions"

    address: Mapped[str] = mapped_column(Text, primary_key=True)
    #: ``bounced``, ``complained``, ``suppressed`` (the provider's own list) or an operator's words.
    reason: Mapped[str] = mapped_column(Text)
    #: The email and the event that caused it (NULL for an operator's).
    email_id: Mapped[Optional[int]] = mapped_column(BigId)
    event_id: Mapped[Optional[int]] = mapped_column(BigId)
    #: ``event``, ``cli`` or the ops API's role.
    created_by: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), server_default=func.now())


class DeliveryRateAlert(Base):
    """When each rate (``bounce``, ``complaint``) last alerted: at most one alert per ALERT_MIN_INTERVAL_MINUTES."""

    __tablename__ = "delivery_rate_alerts"

    rate: Mapped[str] = mapped_column(Text, primary_key=True)
    last_alert_at: Mapped[Optional[datetime]] = mapped_column(UtcDateTime())


class EmailBatch(Base):
    """One ``POST /emails/batch``: its members (``email_queue.batch_id``) and key never change."""

    __tablename__ = "email_batches"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    #: Same key, same emails: the provider delivers them once (24 hours at Resend).
    idempotency_key: Mapped[str] = mapped_column(Text, unique=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), server_default=func.now())


class DeadLetter(Base):
    """A message that exhausted its retries or could not be processed at all."""

    __tablename__ = "dead_letters"
    __table_args__ = (
        Index("ix_dead_letters_dead_at", "dead_at"),
        Index("ix_dead_letters_queue_actor", "queue", "actor"),
        Index(
            "ix_dead_letters_unalerted",
            "id",
            postgresql_where=text("alerted_at IS NULL"),
            sqlite_where=text("alerted_at IS NULL"),
        ),
        # The search's "error contains" (migration 0011; PostgreSQL only, with pg_trgm).
        Index("ix_dead_letters_error_trgm", "error", postgresql_using="gin", postgresql_ops={"error": "gin_trgm_ops"}),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    #: Dramatiq's message id; a message is archived once however often it is seen. A body kept
    #: raw has ``raw-`` and a hash of the body and its death instead (``pipeline.archiver.raw_id``).
    message_id: Mapped[str] = mapped_column(Text, unique=True)
    queue: Mapped[str] = mapped_column(Text)
    actor: Mapped[Optional[str]] = mapped_column(Text)
    args: Mapped[Optional[list[Any]]] = mapped_column(JsonDocument)
    kwargs: Mapped[Optional[dict[str, Any]]] = mapped_column(JsonDocument)
    options: Mapped[Optional[dict[str, Any]]] = mapped_column(JsonDocument)
    #: The body as received, for a poison message or one that could not be archived as a message.
    raw_body: Mapped[Optional[str]] = mapped_column(Text)
    error: Mapped[str] = mapped_column(Text)
    traceback: Mapped[Optional[str]] = mapped_column(Text)
    retries: Mapped[int] = mapped_column(Integer, server_default="0")
    dead_at: Mapped[datetime] = mapped_column(UtcDateTime(), server_default=func.now())
    archived_at: Mapped[datetime] = mapped_column(UtcDateTime(), server_default=func.now())
    replayed_at: Mapped[Optional[datetime]] = mapped_column(UtcDateTime())
    #: When an alert digest counted it (``pipeline.core.alerts``); NULL while no alert has.
    alerted_at: Mapped[Optional[datetime]] = mapped_column(UtcDateTime())


#: A dead letter's item id: its message's first argument, as text (an email's, a batch's, a webhook event's
#: id for the actors that take one): what the dead-letter search follows from an item to its dead letters.
DEAD_LETTER_ITEM_ID = DeadLetter.args[0].as_string()
Index("ix_dead_letters_item", DEAD_LETTER_ITEM_ID, DeadLetter.actor)


class FinalError(Base):
    """The error a message finally died of, recorded before it is nacked.

    RabbitMQ dead-letters the bytes it delivered, which carry the traceback of the
    attempt *before* the last; the archiver takes the final one from here.
    """

    __tablename__ = "final_errors"

    message_id: Mapped[str] = mapped_column(Text, primary_key=True)
    error: Mapped[str] = mapped_column(Text)
    traceback: Mapped[Optional[str]] = mapped_column(Text)
    retries: Mapped[int] = mapped_column(Integer, server_default="0")
    failed_at: Mapped[datetime] = mapped_column(UtcDateTime(), server_default=func.now())


class RateLimitSlot(Base):
    """The next free request slot at a provider, shared by every worker host.

    Seconds since the epoch as a float: the one-statement reservation in
    ``storage.rate_limits`` then needs no interval arithmetic, which SQLite lacks.
    """

    __tablename__ = "rate_limit_slots"

    name: Mapped[str] = mapped_column(Text, primary_key=True)
    next_slot: Mapped[float] = mapped_column(Float)
    #: Requests per second the provider last said it allows (``ratelimit-limit``); NULL: not told yet.
    provider_limit: Mapped[Optional[float]] = mapped_column(Float)
    #: Until then, only transactional sends may take a slot: one of them is waiting.
    priority_until: Mapped[Optional[float]] = mapped_column(Float)
    #: No request before this (a 429's ``retry-after``, a quota's reset); NULL: not paused.
    paused_until: Mapped[Optional[float]] = mapped_column(Float)
    #: Why: ``rate_limit_exceeded``, ``daily_quota_exceeded``, ``monthly_quota_exceeded``.
    pause_reason: Mapped[Optional[str]] = mapped_column(Text)
    #: When the current quota pause began (NULL: none); the alert is sent once per pause.
    paused_since: Mapped[Optional[float]] = mapped_column(Float)
    #: A process's first request is in flight: no other slot before its answer, or this at the latest.
    warming_until: Mapped[Optional[float]] = mapped_column(Float)
    #: Failures of the provider as a whole (5xx, timeouts, connections) since ``failing_since``,
    #: with no success between; enough of them start an outage pause (``pipeline.providers.pacing``).
    failures: Mapped[int] = mapped_column(Integer, server_default="0")
    failing_since: Mapped[Optional[float]] = mapped_column(Float)


class SendingPause(Base):
    """An operator's pause of sending (``minalesh-workers sending pause``, ``POST /api/ops/sending/pause``).

    ``scope`` ``all`` holds every send; ``bulk`` holds bulk emails while transactional
    ones go. The row's presence is the pause; ``until`` (epoch seconds) ends it by
    itself, NULL keeps it until a resume deletes the row.
    """

    __tablename__ = "sending_pauses"
    __table_args__ = (CheckConstraint("scope IN ('all', 'bulk')", name="scope_known"),)

    scope: Mapped[str] = mapped_column(Text, primary_key=True)
    until: Mapped[Optional[float]] = mapped_column(Float)
    reason: Mapped[Optional[str]] = mapped_column(Text)
    paused_at: Mapped[float] = mapped_column(Float)
    #: Who paused: ``cli`` or the ops API's role; never a token.
    paused_by: Mapped[str] = mapped_column(Text)


class Product(Base):
    """A product the shop sells, with its on-hand stock.

    ``stock`` counts the units physically on hand, sold or not yet; what a buyer
    can still reserve is ``stock`` minus the active reservations (see
    ``storage.inventory``), so restocking is a plain ``UPDATE`` of ``stock``.
    """

    __tablename__ = "products"
    __table_args__ = (CheckConstraint("stock >= 0", name="stock_not_negative"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    sku: Mapped[str] = mapped_column(Text, unique=True)
    name: Mapped[str] = mapped_column(Text)
    stock: Mapped[int] = mapped_column(Integer, server_default="0")
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), server_default=func.now())


class ReservationStatus(str, enum.Enum):
    """Where a reservation is in its life; every status but ``active`` is final."""

    #: Holds its quantity out of the available stock until ``expires_at``.
    ACTIVE = "active"
    #: The order was paid: the quantity left ``products.stock`` for good.
    COMMITTED = "committed"
    #: Given back before it expired (checkout abandoned, payment failed).
    RELEASED = "released"
    #: Given back by the cleanup because ``expires_at`` passed while still active.
    EXPIRED = "expired"


class InventoryReservation(Base):
    """Stock held for one checkout for a while, so two buyers cannot buy the last unit.

    Written by ``storage.inventory`` or by the host in plain SQL (the documented
    statement there); ``order_id`` has no foreign key because the orders table
    belongs to the host.
    """

    __tablename__ = "inventory_reservations"
    __table_args__ = (
        CheckConstraint("quantity > 0", name="quantity_positive"),
        CheckConstraint(
            "status IN ('active', 'committed', 'released', 'expired')",
            name="status_known",
        ),
        Index("ix_inventory_reservations_due", "status", "expires_at"),
        Index("ix_inventory_reservations_order_id", "order_id"),
        Index("ix_inventory_reservations_product_status", "product_id", "status"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    product_id: Mapped[int] = mapped_column(BigId, ForeignKey("products.id"))
    order_id: Mapped[Optional[str]] = mapped_column(Text)
    quantity: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(Text, server_default=ReservationStatus.ACTIVE.value)
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime())
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), server_default=func.now())
    updated_at: Mapped[Optional[datetime]] = mapped_column(UtcDateTime())
    #: When the quantity was given back, by ``release`` or by the cleanup.
    released_at: Mapped[Optional[datetime]] = mapped_column(UtcDateTime())
    committed_at: Mapped[Optional[datetime]] = mapped_column(UtcDateTime())


class Order(Base):
    """The part of the shop's order the workers touch; the host owns the rest.

    The host inserts a row at checkout with only what it knows::

        INSERT INTO orders (id, total, currency) VALUES ('MN-1001', 1250.00, 'ETB');

    (``customer_email`` too when it has it: payment emails go there unless the
    provider's event names an address.) The workers move ``payment_status`` from
    ``pending`` to ``paid`` or ``failed`` and ``status`` along with it while the
    order is still ``pending``/``failed``; any other ``status`` is the host's own.
    """

    __tablename__ = "orders"
    __table_args__ = (
        Index(
            "ix_orders_stock_short",
            "paid_at",
            postgresql_where=text("stock_shortfall IS NOT NULL"),
            sqlite_where=text("stock_shortfall IS NOT NULL"),
        ),
    )

    #: The shop's order id, as the payment providers echo it back.
    id: Mapped[str] = mapped_column(Text, primary_key=True)
    status: Mapped[str] = mapped_column(Text, server_default="pending")
    payment_status: Mapped[str] = mapped_column(Text, server_default="pending")
    total: Mapped[Decimal] = mapped_column(Numeric(12, 2))
    currency: Mapped[str] = mapped_column(Text, server_default="ETB")
    customer_email: Mapped[Optional[str]] = mapped_column(Text)
    paid_at: Mapped[Optional[datetime]] = mapped_column(UtcDateTime())
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), server_default=func.now())
    updated_at: Mapped[Optional[datetime]] = mapped_column(UtcDateTime())
    #: NULL unless the order was paid after its holds lapsed and the stock was gone: then the
    #: lapsed lines, none taken (``[{"product_id", "needed", "available"}, ...]``). For an operator
    #: to settle (restock, substitute, refund) and then set back to NULL (``storage.inventory``).
    stock_shortfall: Mapped[Optional[list[dict[str, int]]]] = mapped_column(NullableJson)


class WebhookStatus(str, enum.Enum):
    """Where a payment webhook event is; ``archived`` says whether ``failed`` is final."""

    #: Stored by the intake; its first attempt is queued (or lost, and re-enqueued by the ticker).
    PENDING = "pending"
    #: Applied to its order; final.
    PROCESSED = "processed"
    #: The last attempt failed: retried at ``next_retry_at`` while ``archived`` is false,
    #: given up (and in ``dead_letters``) once it is true.
    FAILED = "failed"


class WebhookEvent(Base):
    """One call of a payment provider, stored once per (provider, event_id) and applied once.

    Monitoring reads it as the shop always did::

        SELECT status, COUNT(*), AVG(retry_count) FROM webhook_events
         WHERE archived = false GROUP BY status
    """

    __tablename__ = "webhook_events"
    __table_args__ = (
        UniqueConstraint("provider", "event_id", name="uq_webhook_events_provider_event_id"),
        CheckConstraint("status IN ('pending', 'processed', 'failed')", name="status_known"),
        Index("ix_webhook_events_due", "archived", "status", "next_retry_at"),
        Index("ix_webhook_events_lease", "archived", "locked_until"),
        Index("ix_webhook_events_order_id", "order_id"),
        Index("ix_webhook_events_event_id", "event_id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    provider: Mapped[str] = mapped_column(Text)
    #: The provider's id of the event; a provider sending it again changes nothing.
    event_id: Mapped[str] = mapped_column(Text)
    type: Mapped[str] = mapped_column(Text)
    #: From the payload, for looking events up by order; no foreign key, the event may come first.
    order_id: Mapped[Optional[str]] = mapped_column(Text)
    payload: Mapped[dict[str, Any]] = mapped_column(JsonDocument)
    status: Mapped[str] = mapped_column(Text, server_default=WebhookStatus.PENDING.value)
    #: Retries made (attempts after the first): 0 while only the first attempt has failed.
    retry_count: Mapped[int] = mapped_column(Integer, server_default="0")
    #: Attempts started, counted before the work, so attempts of workers that died count too.
    attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    next_retry_at: Mapped[Optional[datetime]] = mapped_column(UtcDateTime())
    last_error: Mapped[Optional[str]] = mapped_column(Text)
    archived: Mapped[bool] = mapped_column(Boolean, server_default=false())
    #: Until when whoever holds the event (message, worker, waiting retry) is trusted with it.
    locked_until: Mapped[Optional[datetime]] = mapped_column(UtcDateTime())
    #: Set while an attempt runs; a set value with an expired lease means the worker died.
    attempt_started_at: Mapped[Optional[datetime]] = mapped_column(UtcDateTime())
    #: The message whose attempt holds the lease: that message coming back takes it over at once.
    lease_holder: Mapped[Optional[str]] = mapped_column(Text)
    received_at: Mapped[datetime] = mapped_column(UtcDateTime(), server_default=func.now())
    processed_at: Mapped[Optional[datetime]] = mapped_column(UtcDateTime())
    updated_at: Mapped[Optional[datetime]] = mapped_column(UtcDateTime())


class AlertState(Base):
    """The one row of the dead-letter alert throttle, shared by every archiver.

    ``last_alert_at`` is when the last digest went out (or was attempted: a digest
    that could not be delivered still counts, so a broken alert channel cannot
    loop); ``counted_since`` is where the next digest's window starts.
    """

    __tablename__ = "alert_state"
    __table_args__ = (CheckConstraint("id = 1", name="single_row"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    last_alert_at: Mapped[Optional[datetime]] = mapped_column(UtcDateTime())
    counted_since: Mapped[datetime] = mapped_column(UtcDateTime(), server_default=func.now())


class PeriodicRun(Base):
    """When each periodic job last succeeded and last failed, written by its actor's run.

    One row per job (the actor's name), upserted; the metrics and ``stats`` read it, so
    a job that stopped running (no ticker, no worker on ``ticks``, failing every time)
    shows as a last success that grows old.
    """

    __tablename__ = "periodic_runs"

    job: Mapped[str] = mapped_column(Text, primary_key=True)
    last_success_at: Mapped[Optional[datetime]] = mapped_column(UtcDateTime())
    last_failure_at: Mapped[Optional[datetime]] = mapped_column(UtcDateTime())
    #: The last failure's error (``Type: message``), kept after a later success for the operator.
    last_error: Mapped[Optional[str]] = mapped_column(Text)
