"""Inventory reservations: stock held during checkout, never oversold.

How available stock is computed
-------------------------------
``products.stock`` is the number of units on hand and not yet sold; only a paid
order (``commit``) takes units out of it. An active reservation leaves it alone
and holds its quantity out of what others may reserve::

    available = products.stock
              - COALESCE(SUM(inventory_reservations.quantity), 0)
                  over the product's reservations WHERE status = 'active'

``available(session, product_id)`` runs exactly that. Active reservations past
``expires_at`` still count until the cleanup marks them ``expired``: a payment that
succeeds a moment late can then still commit its stock, and the cleanup's status
change is the one step that gives stock back.

Why this model: every way stock comes back (``release``, expiry) is a single
status change guarded by ``status = 'active'``; nothing is added back to a
counter, so nothing can be added back twice, whether two cleanups, a cleanup and
a ``commit``, or a host's own SQL race. ``commit`` flips the status and takes
the stock in the same transaction, so of any racers exactly one wins.

Why it never oversells
----------------------
``reserve`` runs two statements in one transaction: it locks the product row
(``SELECT ... FOR UPDATE``), then inserts the reservation only if ``available``
still covers it (``INSERT ... SELECT ... WHERE``). The lock serialises every
reserver of the product, and because the INSERT is a new statement it reads,
under READ COMMITTED (PostgreSQL's default, which callers passing a session must
keep), every reservation committed before the lock was granted. ``commit`` takes
stock with ``stock >= quantity`` in its WHERE clause, so the ``stock >= 0`` CHECK
is never the one to object. On SQLite the database-wide write lock plays the
product lock's part.

Reservations inserted by the host in SQL
----------------------------------------
Because reserving never touches ``products.stock``, a host may insert an
``active`` row in plain SQL: it counts against ``available`` once committed, the
cleanup expires it, and ``commit`` takes its stock like any other. An INSERT on
its own can race another reserver, though; to be oversell-proof the host runs
the same two statements as ``reserve``, in one transaction::

    BEGIN;
    SELECT id FROM products WHERE id = :product_id FOR UPDATE;
    INSERT INTO inventory_reservations (product_id, order_id, quantity, expires_at)
    SELECT p.id, :order_id, :quantity, NOW() + INTERVAL '15 minutes'
      FROM products p
     WHERE p.id = :product_id
       AND p.stock - (SELECT COALESCE(SUM(r.quantity), 0)
                        FROM inventory_reservations r
                       WHERE r.product_id = p.id AND r.status = 'active') >= :quantity
    RETURNING id;
    COMMIT;

No row returned means not enough stock. Monitoring keeps working as is:
``SELECT COUNT(*) FROM inventory_reservations WHERE status = 'active' AND expires_at < NOW()``.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Optional, TypeVar

from sqlalchemy import DateTime, Integer, Text, func, insert, literal, select, update
from sqlalchemy.orm import Session, sessionmaker

from storage.clock import minutes, utcnow
from storage.database import default_sessionmaker
from storage.errors import ItemNotFound, StorageError
from storage.models import InventoryReservation, Product, ReservationStatus

#: Minutes a reservation holds stock unless the caller or the environment says otherwise.
DEFAULT_RESERVATION_TIMEOUT_MINUTES = 15.0

#: The environment variable overriding that default (fractions of a minute allowed).
RESERVATION_TIMEOUT_ENV = "RESERVATION_TIMEOUT_MINUTES"

#: Reservations expired per transaction by ``expire_all_due``: short locks, bounded work.
DEFAULT_EXPIRY_BATCH_SIZE = 500

#: Batches one ``expire_all_due`` run takes at most; the next run picks up the rest.
DEFAULT_MAX_EXPIRY_BATCHES = 20

_ACTIVE = ReservationStatus.ACTIVE.value
_T = TypeVar("_T")


class InvalidReservation(StorageError, ValueError):
    """The reservation cannot be made as asked."""


class InsufficientStock(StorageError):
    """Not enough stock is available for the quantity asked for."""

    def __init__(self, product_id: int, requested: int, available: int) -> None:
        super().__init__(f"product {product_id}: {requested} requested but only {available} available")
        self.product_id = product_id
        self.requested = requested
        self.available = available


class ProductNotFound(ItemNotFound):
    """No product has that id."""


class ReservationNotFound(ItemNotFound):
    """No reservation has that id."""


@dataclass(frozen=True, kw_only=True)
class ExpiredReservation:
    """A reservation the cleanup expired, and the stock that became available again."""

    id: int
    product_id: int
    quantity: int


def reservation_timeout_minutes() -> float:
    """The default hold time: ``RESERVATION_TIMEOUT_MINUTES`` or 15 minutes.

    Read here because hosts call ``reserve`` without any settings object of ours.
    """
    raw = os.environ.get(RESERVATION_TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_RESERVATION_TIMEOUT_MINUTES
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{RESERVATION_TIMEOUT_ENV} must be a number of minutes, got {raw!r}") from None
    return _positive_minutes(value, RESERVATION_TIMEOUT_ENV)


def reserve(
    product_id: int,
    quantity: int,
    ttl_minutes: Optional[float] = None,
    *,
    order_id: Optional[str] = None,
    session: Optional[Session] = None,
) -> int:
    """Hold ``quantity`` units of ``product_id`` for ``ttl_minutes``; return the reservation id.

    Raises ``InsufficientStock`` when ``available`` does not cover it. Without a
    session it commits its own transaction on DATABASE_URL; with one, the product
    row stays locked until the caller's transaction ends, so commit promptly.
    """
    _positive_int(product_id, "product_id")
    _positive_int(quantity, "quantity")
    if ttl_minutes is None:
        ttl_minutes = reservation_timeout_minutes()
    expires_at = utcnow() + minutes(_positive_minutes(ttl_minutes, "ttl_minutes"))
    return _run(session, lambda s: _reserve(s, product_id, quantity, expires_at, order_id))


def _reserve(
    session: Session, product_id: int, quantity: int, expires_at: datetime, order_id: Optional[str]
) -> int:
    _lock_product(session, product_id)
    reservation_id = _insert_if_available(session, product_id, quantity, expires_at, order_id)
    if reservation_id is None:
        raise InsufficientStock(product_id, quantity, available(session, product_id))
    return reservation_id


def _lock_product(session: Session, product_id: int) -> None:
    """Take the product's row lock, which every reserver of it queues on."""
    statement = select(Product.id).where(Product.id == product_id).with_for_update()
    if session.scalar(statement) is None:
        raise ProductNotFound(f"product {product_id} does not exist")


def _insert_if_available(
    session: Session, product_id: int, quantity: int, expires_at: datetime, order_id: Optional[str]
) -> Optional[int]:
    """The host's documented INSERT ... SELECT: a row only if ``available`` covers it."""
    source = select(
        Product.id,
        literal(order_id, Text()),
        literal(quantity, Integer()),
        literal(expires_at, DateTime(timezone=True)),
        literal(utcnow(), DateTime(timezone=True)),
    ).where(Product.id == product_id, _available_stock() >= quantity)
    statement = (
        insert(InventoryReservation)
        .from_select(["product_id", "order_id", "quantity", "expires_at", "updated_at"], source)
        .returning(InventoryReservation.id)
    )
    return session.scalar(statement)


def _available_stock() -> Any:
    """``products.stock`` minus the product's active reservations, correlated to ``Product``."""
    reserved = (
        select(func.coalesce(func.sum(InventoryReservation.quantity), 0))
        .where(InventoryReservation.product_id == Product.id, InventoryReservation.status == _ACTIVE)
        .scalar_subquery()
    )
    return Product.stock - reserved


def available(session: Session, product_id: int) -> int:
    """Units of ``product_id`` that can still be reserved (the formula in the module doc)."""
    value = session.scalar(select(_available_stock()).where(Product.id == product_id))
    if value is None:
        raise ProductNotFound(f"product {product_id} does not exist")
    return int(value)


def commit(reservation_id: int, *, session: Optional[Session] = None) -> bool:
    """The order was paid: the reservation's units leave ``products.stock`` for good.

    False when it is no longer active (committed already, released or expired),
    so a redelivered payment event changes nothing. ``InsufficientStock`` here
    means stock was lowered below what is reserved, outside this module; the
    transaction must then be rolled back, as after any error.
    """
    _positive_int(reservation_id, "reservation_id")
    return _run(session, lambda s: _commit_one(s, reservation_id))


def _commit_one(session: Session, reservation_id: int) -> bool:
    statement = _finish(ReservationStatus.COMMITTED, InventoryReservation.id == reservation_id)
    taken = session.execute(statement).all()
    if not taken:
        _require_reservation(session, reservation_id)
        return False
    _take_stock(session, taken)
    return True


def release(reservation_id: int, *, session: Optional[Session] = None) -> bool:
    """Give the reservation's units back to ``available``; False if it was not active."""
    _positive_int(reservation_id, "reservation_id")
    return _run(session, lambda s: _release_one(s, reservation_id))


def _release_one(session: Session, reservation_id: int) -> bool:
    statement = _finish(ReservationStatus.RELEASED, InventoryReservation.id == reservation_id)
    if session.execute(statement).first() is None:
        _require_reservation(session, reservation_id)
        return False
    return True


def commit_order(session: Session, order_id: str) -> int:
    """Commit every active reservation of ``order_id`` (``payment.succeeded``); return how many."""
    statement = _finish(ReservationStatus.COMMITTED, InventoryReservation.order_id == order_id)
    taken = session.execute(statement).all()
    _take_stock(session, taken)
    return len(taken)


def release_order(session: Session, order_id: str) -> int:
    """Release every active reservation of ``order_id`` (``payment.failed``); return how many."""
    statement = _finish(ReservationStatus.RELEASED, InventoryReservation.order_id == order_id)
    return len(session.execute(statement).all())


def _finish(status: ReservationStatus, which: Any) -> Any:
    """UPDATE active reservations matching ``which`` to a final ``status``.

    The ``status = 'active'`` guard is what lets exactly one of racing finishers
    win; it returns what the winner must act on.
    """
    now = utcnow()
    stamp = "committed_at" if status is ReservationStatus.COMMITTED else "released_at"
    return (
        update(InventoryReservation)
        .where(which, InventoryReservation.status == _ACTIVE)
        .values({"status": status.value, stamp: now, "updated_at": now})
        .returning(InventoryReservation.product_id, InventoryReservation.quantity)
        .execution_options(synchronize_session=False)
    )


def _take_stock(session: Session, taken: Iterable[Any]) -> None:
    """Take committed units out of ``products.stock``, products in id order (no deadlocks).

    Only a write outside this module (stock lowered below what is reserved) can
    make a product short here; that raises instead of tripping the CHECK.
    """
    per_product: Counter[int] = Counter()
    for product_id, quantity in taken:
        per_product[product_id] += quantity
    for product_id in sorted(per_product):
        quantity = per_product[product_id]
        statement = (
            update(Product)
            .where(Product.id == product_id, Product.stock >= quantity)
            .values(stock=Product.stock - quantity)
            .returning(Product.id)
            .execution_options(synchronize_session=False)
        )
        if session.scalar(statement) is None:
            on_hand = session.scalar(select(Product.stock).where(Product.id == product_id))
            raise InsufficientStock(product_id, quantity, on_hand or 0)


def _require_reservation(session: Session, reservation_id: int) -> None:
    statement = select(InventoryReservation.id).where(InventoryReservation.id == reservation_id)
    if session.scalar(statement) is None:
        raise ReservationNotFound(f"reservation {reservation_id} does not exist")


def expire_due(session: Session, *, batch_size: int) -> list[ExpiredReservation]:
    """Expire up to ``batch_size`` active reservations past ``expires_at``; return them.

    Two statements, not ``UPDATE ... WHERE id IN (SELECT ... LIMIT ... SKIP LOCKED)``:
    PostgreSQL may rescan such a subquery and then update more than the limit.
    ``FOR UPDATE SKIP LOCKED`` gives concurrent cleanups disjoint batches and passes
    over a reservation a ``commit`` is finishing; the ``status = 'active'`` guard
    settles whoever comes second.
    """
    _positive_int(batch_size, "batch_size")
    now = utcnow()
    due = InventoryReservation.status == _ACTIVE, InventoryReservation.expires_at < now
    claim = (
        select(InventoryReservation.id)
        .where(*due)
        .order_by(InventoryReservation.expires_at, InventoryReservation.id)
        .limit(batch_size)
        .with_for_update(skip_locked=True)
    )
    ids = list(session.scalars(claim))
    if not ids:
        return []
    statement = (
        update(InventoryReservation)
        .where(InventoryReservation.id.in_(ids), *due)
        .values(status=ReservationStatus.EXPIRED.value, released_at=now, updated_at=now)
        .returning(InventoryReservation.id, InventoryReservation.product_id, InventoryReservation.quantity)
        .execution_options(synchronize_session=False)
    )
    rows = session.execute(statement).all()
    expired = (
        ExpiredReservation(id=row.id, product_id=row.product_id, quantity=row.quantity) for row in rows
    )
    return sorted(expired, key=lambda reservation: reservation.id)


def expire_all_due(
    sessions: sessionmaker[Session],
    *,
    batch_size: int = DEFAULT_EXPIRY_BATCH_SIZE,
    max_batches: int = DEFAULT_MAX_EXPIRY_BATCHES,
) -> list[ExpiredReservation]:
    """Expire due reservations batch by batch, each batch its own transaction.

    Stops at the first short batch or after ``max_batches``, so one run's work
    and lock time stay bounded however large the backlog.
    """
    _positive_int(max_batches, "max_batches")
    expired: list[ExpiredReservation] = []
    for _ in range(max_batches):
        with sessions.begin() as session:
            batch = expire_due(session, batch_size=batch_size)
        expired.extend(batch)
        if len(batch) < batch_size:
            break
    return expired


def reservation_stats(session: Session) -> dict[str, int]:
    """Counts for monitoring.

    ``active``: status active (including those past ``expires_at``);
    ``expired_not_released``: active and past ``expires_at``, the cleanup's backlog;
    ``released_last_hour``: released or expired during the last 60 minutes.
    """
    now = utcnow()
    active = InventoryReservation.status == _ACTIVE
    row = session.execute(
        select(
            func.count().filter(active).label("active"),
            func.count().filter(active, InventoryReservation.expires_at < now).label("expired_not_released"),
            func.count()
            .filter(InventoryReservation.released_at >= now - timedelta(hours=1))
            .label("released_last_hour"),
        )
    ).one()
    return {key: int(value) for key, value in row._mapping.items()}


def create_product(session: Session, *, sku: str, name: str, stock: int) -> int:
    """Insert a product and return its id (tests, demos; the host owns the catalogue)."""
    if not sku or not name:
        raise InvalidReservation("a product needs a sku and a name")
    if isinstance(stock, bool) or not isinstance(stock, int) or stock < 0:
        raise InvalidReservation(f"stock must be a non-negative integer, got {stock!r}")
    product = Product(sku=sku, name=name, stock=stock)
    session.add(product)
    session.flush()
    return product.id


def _run(session: Optional[Session], work: Callable[[Session], _T]) -> _T:
    """Run ``work`` in the caller's transaction, or in its own committed on success."""
    if session is not None:
        return work(session)
    with default_sessionmaker().begin() as own:
        return work(own)


def _positive_int(value: Any, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise InvalidReservation(f"{name} must be a positive integer, got {value!r}")


def _positive_minutes(value: Any, name: str) -> float:
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not number or not math.isfinite(value) or value <= 0:
        raise InvalidReservation(f"{name} must be a positive number of minutes, got {value!r}")
    return float(value)
