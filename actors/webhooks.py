"""The payment webhook actors: one attempt per event message, and the re-enqueue tick.

``process_webhook_event`` takes the row id of a stored event (``webhook_events.id``,
not the provider's ``event_id``). It counts the attempt in the row, then applies
the event in one transaction: the order's payment status, its inventory
reservations (committed on success, released on failure) and the customer's
email all change together or not at all, and the event is marked ``processed``
in that same transaction, so applying it twice changes nothing the second time.

An event whose order is not in ``orders`` yet (the webhook raced the checkout)
raises ``OrderNotFound``, a transient error: the backoff middleware retries it on
the WEBHOOK_* schedule (1, 2, 4, 8, 16 minutes), the row says when, and after
the last retry the event is archived and its message lands in ``dead_letters``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal, InvalidOperation
from typing import Optional

import dramatiq
from dramatiq import Message
from periodiq import cron
from sqlalchemy.orm import Session

from actors.emails import send_email
from pipeline.core import runtime
from pipeline.core.errors import PermanentError, TransientError
from pipeline.middleware.backoff import counted_attempt
from storage import emails, inventory, orders, webhooks
from storage.attempts import AttemptOutcome
from storage.clock import minutes
from storage.orders import OrderSnapshot
from storage.webhooks import EventData

logger = logging.getLogger(__name__)

#: The queue of the per-event messages.
WEBHOOK_QUEUE = "webhooks"
#: The queue of periodic ticks (shared with the email fan-out).
TICKS_QUEUE = "ticks"
#: The event types the intake accepts.
PAYMENT_SUCCEEDED = "payment.succeeded"
PAYMENT_FAILED = "payment.failed"
EVENT_TYPES = (PAYMENT_SUCCEEDED, PAYMENT_FAILED)
#: Email templates (``actors/templates``) and their subjects, per event type.
EMAILS = {
    PAYMENT_SUCCEEDED: ("order_confirmation", "Order {{ order_id }} confirmed"),
    PAYMENT_FAILED: ("payment_failed", "Payment for order {{ order_id }} failed"),
}


class OrderNotFound(TransientError):
    """The event's order is not in ``orders`` (yet): retried, since checkout may still commit it."""


class PaymentMismatch(PermanentError):
    """The paid amount or currency is not the order's; a person has to look, retrying cannot help."""


class MalformedEvent(PermanentError):
    """The stored event lacks what applying it needs."""


class WebhookHooks:
    """Keeps ``webhook_events`` in step with what the backoff middleware decides."""

    def retrying(self, session: Session, message: Message, *, error: str, delay: timedelta, refund: bool) -> None:
        lease = minutes(runtime.current().settings.webhook_lease_minutes)
        webhooks.schedule_retry(session, _row_id(message), error=error, delay=delay, lease=lease, refund=refund)

    def given_up(self, session: Session, message: Message, *, error: str) -> None:
        webhooks.archive(session, _row_id(message), error=error)

    def revive(self, session: Session, message: Message) -> bool:
        """Out of the archive, due now, leased: the retry tick sends it if the replay is lost."""
        lease = minutes(runtime.current().settings.webhook_lease_minutes)
        return webhooks.revive(session, _row_id(message), lease=lease)

    def describe(self, session: Session, message: Message) -> dict[str, object] | None:
        row = webhooks.get(session, _row_id(message))
        if row is None:
            return None
        return {
            "kind": "webhook event",
            "id": row.id,
            "status": f"{row.status}, archived" if row.archived else row.status,
            "provider": row.provider,
            "event_id": row.event_id,
            "type": row.type,
            "order_id": row.order_id,
            "attempts": row.attempts,
            "retry_count": row.retry_count,
            "last_error": row.last_error,
            "processed_at": row.processed_at,
            "updated_at": row.updated_at,
        }


def _row_id(message: Message) -> int:
    return int(message.args[0])


@dataclass(frozen=True)
class Applied:
    """What applying an event did."""

    #: False when another worker had processed it already.
    applied: bool
    #: The email it queued, to be sent once the transaction has committed.
    email_id: Optional[int] = None


@dramatiq.actor(
    queue_name=WEBHOOK_QUEUE,
    item_hooks=WebhookHooks(),
    max_retries=5,
    retry_delay=60_000,
    max_retry_delay=60 * 60_000,
)
def process_webhook_event(event_id: int) -> None:
    """Apply one stored event (``webhook_events.id``) to its order, at most once."""
    current = runtime.current()
    settings = current.settings
    with current.sessions.begin() as session:
        attempt = webhooks.start_attempt(
            session,
            event_id,
            lease=minutes(settings.webhook_lease_minutes),
            max_attempts=settings.webhook_max_attempts,
        )
    if attempt.outcome is AttemptOutcome.SKIP or attempt.item is None:
        logger.info("Webhook event %s needs no attempt now (processed, archived, not due or in flight).", event_id)
        return
    event = attempt.item
    label = f"webhook event {event_id}"
    with counted_attempt(attempt, label=label, max_attempts=settings.webhook_max_attempts):
        with current.sessions.begin() as session:
            outcome = apply_event(session, event, email_lease=minutes(settings.email_lease_minutes))
    if outcome.email_id is not None:
        _send_now(outcome.email_id)
    logger.info(
        "Webhook event %s (%s %s for order %s) %s.",
        event_id,
        event.provider,
        event.type,
        event.order_id,
        "processed" if outcome.applied else "was processed already",
    )


def apply_event(session: Session, event: EventData, *, email_lease: timedelta) -> Applied:
    """Apply ``event`` inside the caller's transaction and mark it processed.

    ``payment.succeeded``: the order is paid, its active reservations committed and
    the confirmation email queued. ``payment.failed``: the order's payment failed,
    its reservations released and the payment-failed email queued. A paid order
    stays paid (a late failure, a second success change nothing but the event).
    """
    if not webhooks.lock_unprocessed(session, event.id):
        return Applied(applied=False)
    if not event.order_id or event.type not in EVENT_TYPES:
        raise MalformedEvent(f"webhook event {event.id}: type {event.type!r}, order {event.order_id!r}")
    order = orders.lock(session, event.order_id)
    if order is None:
        raise OrderNotFound(f"order {event.order_id} does not exist (yet)")
    email_id: Optional[int] = None
    if event.type == PAYMENT_SUCCEEDED:
        _check_amount(event, order)
        changed = orders.mark_paid(session, order.id)
        committed = inventory.commit_order(session, order.id)
        logger.info("Order %s paid (%s); %d reservations committed.", order.id, changed, committed)
    else:
        changed = orders.mark_payment_failed(session, order.id)
        released = inventory.release_order(session, order.id) if changed else 0
        logger.info("Order %s payment failed (%s); %d reservations released.", order.id, changed, released)
    if changed:
        email_id = _queue_email(session, event, order, lease=email_lease)
    webhooks.mark_processed(session, event.id)
    return Applied(applied=True, email_id=email_id)


def _check_amount(event: EventData, order: OrderSnapshot) -> None:
    """A success must pay the order's total in the order's currency."""
    try:
        amount = Decimal(str(event.payload.get("amount")))
    except InvalidOperation:
        raise MalformedEvent(f"webhook event {event.id}: amount {event.payload.get('amount')!r}") from None
    currency = str(event.payload.get("currency", "")).upper()
    if amount != order.total or currency != order.currency.upper():
        raise PaymentMismatch(
            f"order {order.id}: paid {amount} {currency}, order total is {order.total} {order.currency}"
        )


def _queue_email(session: Session, event: EventData, order: OrderSnapshot, *, lease: timedelta) -> Optional[int]:
    """The customer's email about this payment, or None (logged) when no address is known.

    The address is the event's ``customer_email`` if it has one, else the order's.
    The row starts claimed (``queued`` under ``lease``): the worker sends its
    message after commit, and the email fan-out takes it over should that fail.
    """
    recipient = _address(event.payload.get("customer_email")) or _address(order.customer_email)
    if recipient is None:
        logger.warning("Order %s has no customer email: no %s email queued.", order.id, event.type)
        return None
    template, subject = EMAILS[event.type]
    data: dict[str, object] = {
        "order_id": order.id,
        "total": f"{order.total:,.2f}",
        "currency": order.currency,
    }
    for optional in ("customer_name", "reason"):
        if isinstance(event.payload.get(optional), str):
            data[optional] = event.payload[optional]
    return emails.enqueue(
        session, recipient=recipient, subject=subject, template=template, template_data=data, claim_for=lease
    )


def _address(value: object) -> Optional[str]:
    return value.strip() if isinstance(value, str) and "@" in value else None


def _send_now(email_id: int) -> None:
    """Send the email's message; if RabbitMQ refuses, its claim lapses and the fan-out sends it."""
    try:
        send_email.send(email_id)
    except Exception:
        logger.exception("Could not enqueue email %s now; the email fan-out will send it.", email_id)


@dramatiq.actor(queue_name=TICKS_QUEUE, periodic=cron("*/10 * * * *"), max_retries=0)
def retry_webhooks() -> None:
    """Re-enqueue events whose message was lost (at most WEBHOOK_BATCH_SIZE a run)."""
    logger.info("Webhook tick re-enqueued %d events.", enqueue_due_webhooks())


def enqueue_due_webhooks() -> int:
    """One run of the tick, callable from the CLI: claim, then send one message per event."""
    current = runtime.current()
    with current.sessions.begin() as session:
        claimed = webhooks.claim_due_for_retry(
            session,
            limit=current.settings.webhook_batch_size,
            lease=minutes(current.settings.webhook_lease_minutes),
        )
    for position, row_id in enumerate(claimed):
        try:
            process_webhook_event.send(row_id)
        except Exception:
            with current.sessions.begin() as session:
                webhooks.release_claims(session, claimed[position:])
            raise
    return len(claimed)
