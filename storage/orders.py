"""Every statement the workers run on ``orders``, the shop's table.

The host owns the order: it inserts the row at checkout (``INSERT INTO orders (id,
total, currency) VALUES (...)``, ``customer_email`` when it has one) and may move
``status`` through its own values later. The workers only record the payment:
``payment_status`` goes ``pending`` → ``paid`` | ``failed``, and ``status`` follows
while the order has not gone further (``pending`` or ``failed``). A paid order
stays paid: a late ``payment.failed`` does not undo it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Optional

from sqlalchemy import Text, case, cast, select, update
from sqlalchemy.orm import Session

from storage.clock import utcnow
from storage.models import Order


class PaymentStatus(str, enum.Enum):
    """``orders.payment_status`` as the workers set it."""

    #: As inserted by the host: no provider has reported yet.
    PENDING = "pending"
    #: A ``payment.succeeded`` event was applied (``paid_at`` says when).
    PAID = "paid"
    #: A ``payment.failed`` event was applied; a later success still marks it paid.
    FAILED = "failed"


#: Order ``status`` values the workers may still change; any other belongs to the host.
_PRE_PAYMENT = ("pending", "failed")


@dataclass(frozen=True, kw_only=True)
class OrderSnapshot:
    """What processing a payment needs of an order, read under its row lock."""

    id: str
    status: str
    payment_status: str
    #: Exact, read as text: SQLite would otherwise hand back a float.
    total: Decimal
    currency: str
    customer_email: Optional[str]


def lock(session: Session, order_id: str) -> Optional[OrderSnapshot]:
    """The order, locked ``FOR UPDATE`` until the transaction ends; None if it does not exist.

    The lock serialises two events of one order (a success and a failure racing),
    so each sees what the other wrote.
    """
    statement = (
        select(
            Order.id,
            Order.status,
            Order.payment_status,
            cast(Order.total, Text),
            Order.currency,
            Order.customer_email,
        )
        .where(Order.id == order_id)
        .with_for_update()
    )
    row = session.execute(statement).one_or_none()
    if row is None:
        return None
    return OrderSnapshot(
        id=row[0],
        status=row[1],
        payment_status=row[2],
        total=_decimal(row[3]),
        currency=row[4],
        customer_email=row[5],
    )


def _decimal(text: Optional[str]) -> Decimal:
    try:
        return Decimal(text or "0")
    except InvalidOperation:
        return Decimal("NaN")


def mark_paid(session: Session, order_id: str) -> bool:
    """Record a successful payment; False if the order was paid already (nothing changes)."""
    now = utcnow()
    statement = (
        update(Order)
        .where(Order.id == order_id, Order.payment_status != PaymentStatus.PAID.value)
        .values(
            payment_status=PaymentStatus.PAID.value,
            status=case((Order.status.in_(_PRE_PAYMENT), PaymentStatus.PAID.value), else_=Order.status),
            paid_at=now,
            updated_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    return session.execute(statement).rowcount == 1


def mark_payment_failed(session: Session, order_id: str) -> bool:
    """Record a failed payment; False if the order is paid (a late failure changes nothing)."""
    statement = (
        update(Order)
        .where(Order.id == order_id, Order.payment_status != PaymentStatus.PAID.value)
        .values(
            payment_status=PaymentStatus.FAILED.value,
            status=case((Order.status.in_(_PRE_PAYMENT), PaymentStatus.FAILED.value), else_=Order.status),
            updated_at=utcnow(),
        )
        .execution_options(synchronize_session=False)
    )
    return session.execute(statement).rowcount == 1
