"""The payment webhook actors: one attempt per event message, and the re-enqueue tick.

``process_webhook_event`` takes the row id of a stored event (``webhook_events.id``,
not the provider's ``event_id``), counts the attempt in the row and applies the
event with ``storage.payments.apply_event``, where the payment rules live.

An event whose order is not in ``orders`` yet (the webhook raced the checkout)
raises ``OrderNotFound``, a transient error: the backoff middleware retries it on
the WEBHOOK_* schedule (1, 2, 4, 8, 16 minutes), the row says when, and after
the last retry the event is archived and its message lands in ``dead_letters``.

A success that paid an order whose stock was gone (``Applied.stock_short``; the
order is flagged in the same transaction) is logged at ERROR once the
transaction has committed, carrying an ``alert``: ``pipeline.bootstrap`` forwards
such records to the ALERT_* channels (``pipeline.core.alerts.AlertLogHandler``), which
this layer may not import.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from actors.emails import send_email
from pipeline.core import runtime
from pipeline.core.attempts import leased_attempt
from pipeline.core.declare import JobReport, actor, periodic
from pipeline.core.enqueue import send_each, send_or_release
from pipeline.core.item_hooks import LeasedItemHooks
from pipeline.core.outcomes import Outcome, report
from storage import emails, leases, payments, webhooks
from storage.clock import minutes
from storage.inventory import StockLine

logger = logging.getLogger(__name__)

#: The queue of the per-event messages.
WEBHOOK_QUEUE = "webhooks"


def _lease() -> timedelta:
    return minutes(runtime.current().settings.webhook_lease_minutes)


@actor(
    queue_name=WEBHOOK_QUEUE,
    retries=lambda settings: settings.webhook_retries,
    item_hooks=LeasedItemHooks(webhooks.TABLE, lease=_lease, describe=webhooks.describe),
)
def process_webhook_event(event_id: int) -> None:
    """Apply one stored event (``webhook_events.id``) to its order, at most once."""
    current = runtime.current()
    settings = current.settings
    with leased_attempt(
        webhooks.TABLE,
        event_id,
        lease=_lease(),
        max_attempts=settings.webhook_max_attempts,
        label=f"webhook event {event_id}",
    ) as event:
        if event is None:
            return  # processed, archived, not due or in flight
        with current.sessions.begin() as session:
            outcome = payments.apply_event(session, event, email_lease=minutes(settings.email_lease_minutes))
    if outcome.email_id is not None:
        send_or_release(send_email, emails.TABLE, outcome.email_id)
    if outcome.stock_short:
        _report_stock_short(event.order_id or "", outcome.stock_short)
    report(
        Outcome.PROCESSED if outcome.applied else Outcome.SKIPPED,
        provider=event.provider,
        type=event.type,
        order=event.order_id,
    )




def _report_stock_short(order_id: str, lines: tuple[StockLine, ...]) -> None:
    """The order is paid and flagged short of stock: tell the operator (the log, and the alert it carries)."""
    short = ", ".join(
        f"product {line.product_id}: {line.needed} needed, {line.available} available" for line in lines if line.short
    )
    logger.error(
        "Order %s is paid but its stock is gone (%s); none of its lapsed reservations was taken. "
        "It is flagged in orders.stock_shortfall: restock, substitute or refund, then set that to NULL.",
        order_id,
        short,
        extra={
            "alert": {
                "subject": f"[minalesh-workers] paid order {order_id} is short of stock",
                "key": f"minalesh-stock-short-{order_id}",
                "details": {"order_id": order_id, "stock_shortfall": [line.as_json() for line in lines]},
            }
        },
    )


@periodic(schedule="webhook_schedule", tick="webhooks", cron="retry-webhooks")
def retry_webhooks() -> JobReport:
    """Re-enqueue payment webhook events whose message was lost (at most WEBHOOK_BATCH_SIZE)."""
    enqueued = enqueue_due_webhooks()
    return JobReport(f"Enqueued {enqueued} webhook events.", processed=enqueued)


def enqueue_due_webhooks() -> int:
    """One run of the tick: claim, then send one message per event; return how many."""
    current = runtime.current()
    with current.sessions.begin() as session:
        claimed = leases.claim_due(webhooks.TABLE, session, limit=current.settings.webhook_batch_size, lease=_lease())
    send_each([(process_webhook_event, row_id) for row_id in claimed], webhooks.TABLE)
    return len(claimed)
