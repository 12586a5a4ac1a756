"""Every statement the workers run on ``orders``, the shop's table.

The host owns the order: it inserts the row at checkout (``INSERT INTO orders (id,
total, currency) VALUES (...)``, ``customer_email`` when it has one) and may move
``status`` through its own values later. The workers only record the payment:
``payment_status`` goes ``pending`` → ``paid`` | ``failed``, and ``status`` follows
while the order has not gone further (``pending`` or ``failed``). A paid order
stays paid: a late ``payment.failed`` does not undo it.

``stock_shortfall`` flags a paid order whose stock was gone: its payment
succeeded after its holds lapsed and available stock no longer covered them
(``storage.inventory``, "A payment that arrives after the hold"). The payment is
recorded all the same (the money was taken); the flag holds the lapsed lines,
none taken, until an operator settles the order and sets it back to NULL::

    SELECT id, paid_at, stock_shortfall FROM orders WHERE stock_shortfall IS NOT NULL;
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Optional

from sqlalchemy import Text, case, cast, func, select, update
from sqlalchemy.orm import Session

from storage.clock import utcnow
from storage.models import Order
from storage.rowcount import rows_affected


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


def create(
    session: Session, *, order_id: str, total: Decimal, currency: str = "ETB", customer_email: Optional[str] = None
) -> None:
    """Insert an order as the host does at checkout (the ``dev`` demo; the host owns its orders)."""
    session.add(Order(id=order_id, total=total, currency=currency, customer_email=customer_email))
    session.flush()


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
    return rows_affected(session, statement) == 1


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
    return rows_affected(session, statement) == 1


def flag_stock_shortfall(session: Session, order_id: str, lines: Sequence[Mapping[str, int]]) -> bool:
    """Flag the paid order as short of stock, with the lapsed ``lines`` none of which was taken."""
    statement = (
        update(Order)
        .where(Order.id == order_id)
        .values(stock_shortfall=[dict(line) for line in lines], updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    return rows_affected(session, statement) == 1


#: Flagged orders ``stock_stats`` names, newest payment first.
STOCK_SHORT_SHOWN = 10


def stock_stats(session: Session) -> dict[str, Any]:
    """``stock_short``: paid orders flagged short of stock; ``stock_short_newest``: their ids, newest first."""
    flagged = Order.stock_shortfall.is_not(None)
    count = session.scalar(select(func.count()).select_from(Order).where(flagged))
    newest = session.scalars(
        select(Order.id).where(flagged).order_by(Order.paid_at.desc(), Order.id).limit(STOCK_SHORT_SHOWN)
    )
    return {"stock_short": int(count or 0), "stock_short_newest": list(newest)}
