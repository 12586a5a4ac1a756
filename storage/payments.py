"""Payment events: what a valid one is, and what applying one does to the shop's tables.

Both the intake (``pipeline.web.intake``, checking a body before storing it) and
the actor (``actors.webhooks``, applying a stored event) use this module, so the
schema and the amount rules are written once.

Applying an event is one transaction over four tables: the order's payment status,
its inventory reservations (committed on success, released on failure), the
customer's email, and the event itself, marked ``processed`` in that same
transaction, so applying it twice changes nothing the second time.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal, InvalidOperation
from typing import Any, Optional

from sqlalchemy.orm import Session

from storage import emails, inventory, orders, webhooks
from storage.errors import MinaleshError, PermanentError, TransientError
from storage.orders import OrderSnapshot, PaymentStatus
from storage.webhooks import EventData

logger = logging.getLogger(__name__)

#: The event types the intake accepts.
PAYMENT_SUCCEEDED = "payment.succeeded"
PAYMENT_FAILED = "payment.failed"
EVENT_TYPES = (PAYMENT_SUCCEEDED, PAYMENT_FAILED)
#: The fields every event must carry.
REQUIRED_FIELDS = ("event_id", "type", "order_id", "amount", "currency")
#: An event nested deeper than this is refused: providers send a few levels, and every reader of the
#: payload after this one (PostgreSQL's jsonb, the ops API, the dashboard) then has a bound too.
MAX_DEPTH = 32
#: Email templates (``pipeline/core/templates``) and their subjects, per event type.
EMAILS = {
    PAYMENT_SUCCEEDED: ("order_confirmation", "Order {{ order_id }} confirmed"),
    PAYMENT_FAILED: ("payment_failed", "Payment for order {{ order_id }} failed"),
}


class InvalidEvent(MinaleshError, ValueError):
    """The body is not a payment event; the message names what is wrong."""


class OrderNotFound(TransientError):
    """The event's order is not in ``orders`` (yet): retried, since checkout may still commit it."""


class PaymentMismatch(PermanentError):
    """The paid amount or currency is not the order's; a person has to look, retrying cannot help."""


class MalformedEvent(PermanentError):
    """The stored event lacks what applying it needs."""


# --- the schema -------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class IncomingEvent:
    """A verified body, checked field by field; ``payload`` is the whole JSON object, kept as is."""

    event_id: str
    type: str
    order_id: str
    payload: dict[str, Any]


def parse_event(body: bytes) -> IncomingEvent:
    """The event in ``body``, or ``InvalidEvent`` naming the first thing wrong with it."""
    try:
        payload = json.loads(body, parse_constant=_no_constants)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidEvent(f"body is not JSON: {exc}") from None
    except RecursionError:  # the parser's own bound, thousands of levels down
        raise InvalidEvent(f"body is nested more than {MAX_DEPTH} levels deep") from None
    if not isinstance(payload, dict):
        raise InvalidEvent("body must be a JSON object")
    if _depth(payload) > MAX_DEPTH:
        raise InvalidEvent(f"body is nested more than {MAX_DEPTH} levels deep")
    unstorable = _unstorable_text(payload)
    if unstorable is not None:
        raise InvalidEvent(
            f"{unstorable} holds \\u0000 or an unpaired surrogate (\\ud800-\\udfff), which cannot be stored"
        )
    missing = [name for name in REQUIRED_FIELDS if payload.get(name) in (None, "")]
    if missing:
        raise InvalidEvent(f"missing fields: {', '.join(missing)}")
    event_id = _identifier(payload, "event_id")
    order_id = _identifier(payload, "order_id")
    if payload["type"] not in EVENT_TYPES:
        raise InvalidEvent(f"type must be one of {', '.join(EVENT_TYPES)}")
    parse_amount(payload["amount"])
    if not isinstance(payload["currency"], str) or not payload["currency"].strip():
        raise InvalidEvent("currency must be a string such as 'ETB'")
    email = payload.get("customer_email")
    if email is not None and not isinstance(email, str):
        raise InvalidEvent("customer_email must be a string")
    return IncomingEvent(event_id=event_id, type=payload["type"], order_id=order_id, payload=payload)


def parse_amount(value: Any) -> Decimal:
    """An event's ``amount`` as an exact decimal: a finite number, 0 or more."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise InvalidEvent("amount must be a number")
    try:
        amount = Decimal(str(value).strip())
    except InvalidOperation:
        raise InvalidEvent("amount must be a number") from None
    if not amount.is_finite() or amount < 0 or (isinstance(value, float) and not math.isfinite(value)):
        raise InvalidEvent("amount must be a finite number, 0 or more")
    return amount


def _unstorable_text(payload: dict[str, Any]) -> Optional[str]:
    """Where ``payload`` holds text PostgreSQL cannot store, or None.

    JSON may escape any code point, so the parser takes ``"\\u0000"`` and a lone
    ``"\\ud800"``; PostgreSQL's ``text`` has no NUL and its ``jsonb`` refuses the
    escape, and an unpaired surrogate is not UTF-8 at all. Such a body is refused
    here, as a 400 naming the field, rather than by the database as a 503 that
    every retry of the provider would meet again. A key is named as ``a key in
    PATH``, a value by its path (``extra.items[2]``).
    """
    pending: list[tuple[str, Any]] = [("", payload)]
    while pending:
        path, value = pending.pop()
        if isinstance(value, str):
            if not _storable(value):
                return path
        elif isinstance(value, dict):
            for key, item in value.items():
                if not _storable(key):
                    return f"a key in {path}" if path else "a key"
                pending.append((f"{path}.{key}" if path else key, item))
        elif isinstance(value, list):
            pending.extend((f"{path}[{index}]", item) for index, item in enumerate(value))
    return None


def _depth(value: Any) -> int:
    """How many objects and arrays deep ``value`` goes (walked without recursion)."""
    deepest, pending = 0, [(value, 1)]
    while pending:
        item, level = pending.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        deepest = max(deepest, level)
        pending.extend((child, level + 1) for child in children)
    return deepest


def _storable(text: str) -> bool:
    """No NUL, and valid UTF-8 (a str holding a surrogate code point does not encode)."""
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _no_constants(name: str) -> None:
    raise ValueError(f"{name} is not allowed")


def _identifier(payload: dict[str, Any], name: str) -> str:
    """A string id, or an integer one taken as its decimal text."""
    value = payload[name]
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise InvalidEvent(f"{name} must be a string")
    text = str(value).strip()
    if not text or len(text) > 200:
        raise InvalidEvent(f"{name} must be 1 to 200 characters")
    return text


# --- the rules ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Applied:
    """What applying an event did."""

    #: False when another worker had processed it already.
    applied: bool
    #: The email it queued, to be sent once the transaction has committed.
    email_id: Optional[int] = None
    #: A success paid the order but its stock was gone: the lapsed lines, none taken (the order is flagged).
    stock_short: tuple[inventory.StockLine, ...] = ()


def apply_event(session: Session, event: EventData, *, email_lease: timedelta) -> Applied:
    """Apply ``event`` inside the caller's transaction and mark it processed.

    ``payment.succeeded``: the order is paid, its active reservations committed, the
    stock of its released or expired ones taken back (``inventory.settle_paid_order``)
    and the confirmation email queued; if that stock is gone the payment is recorded
    all the same and the order flagged (``orders.stock_shortfall``, ``stock_short``).
    ``payment.failed``: the order's payment failed, its reservations released and
    the payment-failed email queued, unless the order had failed already
    (``_is_news``). A paid order stays paid (a late failure, a second success change
    nothing but the event).
    """
    if not webhooks.lock_unprocessed(session, event.id):
        return Applied(applied=False)
    if not event.order_id or event.type not in EVENT_TYPES:
        raise MalformedEvent(f"webhook event {event.id}: type {event.type!r}, order {event.order_id!r}")
    order = orders.lock(session, event.order_id)
    if order is None:
        raise OrderNotFound(f"order {event.order_id} does not exist (yet)")
    email_id: Optional[int] = None
    stock_short: tuple[inventory.StockLine, ...] = ()
    if event.type == PAYMENT_SUCCEEDED:
        _check_amount(event, order)
        changed = orders.mark_paid(session, order.id)
        settled = inventory.settle_paid_order(session, order.id, take_back=changed)
        if settled.short:
            stock_short = settled.not_taken
            orders.flag_stock_shortfall(session, order.id, [line.as_json() for line in stock_short])
        logger.info(
            "Order %s paid (%s); %d reservations committed, %d taken back%s.",
            order.id,
            changed,
            settled.committed,
            settled.taken_back,
            ", stock short: flagged" if settled.short else "",
        )
    else:
        changed = orders.mark_payment_failed(session, order.id)
        released = inventory.release_order(session, order.id) if changed else 0
        logger.info("Order %s payment failed (%s); %d reservations released.", order.id, changed, released)
    if changed and _is_news(event, order):
        email_id = _queue_email(session, event, order, lease=email_lease)
    webhooks.mark_processed(session, event.id)
    return Applied(applied=True, email_id=email_id, stock_short=stock_short)


def _is_news(event: EventData, order: OrderSnapshot) -> bool:
    """Whether the customer has not been told this already.

    A payment failure is told once per order: a second failed event (a retry with
    another card, a provider reporting it twice under two ids) finds the order
    ``failed`` already, in the snapshot read under its row lock, so two failures
    racing each other are told once too. A success after a failure is news.
    """
    return event.type != PAYMENT_FAILED or order.payment_status != PaymentStatus.FAILED.value


def _check_amount(event: EventData, order: OrderSnapshot) -> None:
    """A success must pay the order's total in the order's currency."""
    try:
        amount = parse_amount(event.payload.get("amount"))
    except InvalidEvent:
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
