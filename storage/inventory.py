"""Inventory reservations: stock held during checkout, never oversold.

How available stock is computed
-------------------------------
``products.stock`` is the number of units on hand and not yet sold; only a paid
order (``commit``, ``settle_paid_order``) takes units out of it. An active
reservation leaves it alone and holds its quantity out of what others may reserve::

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

A payment that arrives after the hold
-------------------------------------
``payment.failed`` releases an order's reservations and the cleanup expires a
hold after 15 minutes, but a provider retries a success for 31 minutes and a
customer may pay on a second try. The money is then taken while nothing is
held. ``settle_paid_order`` (what a ``payment.succeeded`` does, in the
transaction that marks the order paid, under the order's row lock):

* commits the order's ``active`` reservations, as ``commit_order`` does;
* takes back the units of the order's ``released``/``expired`` reservations
  from ``available`` stock, and marks those reservations ``committed``
  (``committed_at`` set, ``released_at`` kept as their history: committed after
  released means taken back). No new status: ``committed`` already means "the
  units left ``products.stock`` for good", and every query on ``active`` (the
  monitoring one below, the cleanup's) keeps its meaning;
* all or nothing: if ``available`` does not cover every product of the lapsed
  reservations, none of them is taken (the held ones are still committed), and
  the caller flags the order (``orders.stock_shortfall``) with every lapsed line,
  what it needed and what was available. A paid order short of anything needs a
  person anyway (refund, substitute, wait for a restock); taking part of it would
  leave units an operator must add back by hand if they refund, and this model
  never adds stock back by counting.

Never oversold: every product involved is locked ``FOR UPDATE`` in id order
before any stock moves, as ``reserve`` locks it, so no reserver can slip in
between the check and the take; the UPDATE that takes the units also carries
``available >= quantity`` in its WHERE clause. Only the first success takes
anything back (``take_back=False`` for a repeated one), so a paid order's stock
is taken once.

Which lapsed reservations are the order's: all of its released or expired ones,
except where the host reserved again. A lapsed reservation is skipped when the
order holds or has committed the same product in another reservation, or
reserved that product again after the lapse (``created_at`` after its
``released_at``). The host's newer reservation then stands for the product, and
re-reserving after a failure never takes the units twice. (That comparison reads
the database clock against the worker's: keep hosts NTP-synchronised, as for the
leases.)

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
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Optional

from sqlalchemy import DateTime, Integer, Text, and_, func, insert, literal, or_, select, update
from sqlalchemy.orm import Session, aliased, sessionmaker

from storage.clock import minutes, utcnow
from storage.errors import ItemNotFound, StorageError
from storage.models import InventoryReservation, Product, ReservationStatus

#: Batches one ``expire_all_due`` run takes at most; the next run picks up the rest.
DEFAULT_MAX_EXPIRY_BATCHES = 20

_ACTIVE = ReservationStatus.ACTIVE.value
#: Final statuses that gave the units back: what a payment after the hold takes back.
_LAPSED = (ReservationStatus.RELEASED.value, ReservationStatus.EXPIRED.value)
#: Statuses that hold or have taken a product's units for their order.
_HELD_OR_TAKEN = (_ACTIVE, ReservationStatus.COMMITTED.value)


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


def reserve(
    session: Session,
    product_id: int,
    quantity: int,
    *,
    ttl_minutes: float,
    order_id: Optional[str] = None,
) -> int:
    """Hold ``quantity`` units of ``product_id`` for ``ttl_minutes``; return the reservation id.

    Raises ``InsufficientStock`` when ``available`` does not cover it. The product
    row stays locked until the caller's transaction ends, so commit promptly. Hosts
    call ``pipeline.api.reserve``, which holds for RESERVATION_TIMEOUT_MINUTES when
    it is told no hold and runs its own transaction when it is given no session.
    """
    _positive_int(product_id, "product_id")
    _positive_int(quantity, "quantity")
    expires_at = utcnow() + minutes(_positive_minutes(ttl_minutes, "ttl_minutes"))
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


def commit(session: Session, reservation_id: int) -> bool:
    """The order was paid: the reservation's units leave ``products.stock`` for good.

    False when it is no longer active (committed already, released or expired),
    so a redelivered payment event changes nothing. ``InsufficientStock`` here
    means stock was lowered below what is reserved, outside this module; the
    transaction must then be rolled back, as after any error.
    """
    _positive_int(reservation_id, "reservation_id")
    statement = _finish(ReservationStatus.COMMITTED, InventoryReservation.id == reservation_id)
    taken = session.execute(statement).all()
    if not taken:
        _require_reservation(session, reservation_id)
        return False
    _take_stock(session, taken)
    return True


def release(session: Session, reservation_id: int) -> bool:
    """Give the reservation's units back to ``available``; False if it was not active."""
    _positive_int(reservation_id, "reservation_id")
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


@dataclass(frozen=True, kw_only=True)
class StockLine:
    """One product a paid order needs again after its hold lapsed, and what was available of it."""

    product_id: int
    #: Units of the order's lapsed reservations of this product.
    needed: int
    #: ``available`` of the product when the payment was applied.
    available: int

    @property
    def short(self) -> bool:
        return self.available < self.needed

    def as_json(self) -> dict[str, int]:
        return {"product_id": self.product_id, "needed": self.needed, "available": self.available}


@dataclass(frozen=True, kw_only=True)
class Settlement:
    """What paying an order did to its stock (``settle_paid_order``)."""

    #: Active reservations committed: their units were held for the order.
    committed: int = 0
    #: Lapsed reservations committed again: their units taken from what was available.
    taken_back: int = 0
    #: Set when some product was short: every lapsed line, none of them taken. Empty otherwise.
    not_taken: tuple[StockLine, ...] = ()

    @property
    def short(self) -> bool:
        return bool(self.not_taken)


def settle_paid_order(session: Session, order_id: str, *, take_back: bool = True) -> Settlement:
    """The order was paid: commit its active reservations and take back the stock of lapsed ones.

    See "A payment that arrives after the hold" in the module doc. ``take_back``
    is False for a repeated success: it then commits what is active, as
    ``commit_order`` does, and takes nothing back. Runs in the caller's
    transaction, which should hold the order's row lock (``storage.orders.lock``).
    """
    held = session.execute(_finish(ReservationStatus.COMMITTED, InventoryReservation.order_id == order_id)).all()
    lapsed = _lapsed_reservations(session, order_id) if take_back else []
    for product_id in sorted({row.product_id for row in [*held, *lapsed]}):
        _lock_product(session, product_id)  # all of them, in id order, before any stock moves
    _take_stock(session, held)
    if not lapsed:
        return Settlement(committed=len(held))
    needed: Counter[int] = Counter()
    for row in lapsed:
        needed[row.product_id] += row.quantity
    lines = tuple(
        StockLine(product_id=product_id, needed=quantity, available=available(session, product_id))
        for product_id, quantity in sorted(needed.items())
    )
    if any(line.short for line in lines):
        return Settlement(committed=len(held), not_taken=lines)
    taken = session.execute(_take_back([row.id for row in lapsed])).all()
    _take_stock(session, taken, unheld=True)
    return Settlement(committed=len(held), taken_back=len(taken))


def _lapsed_reservations(session: Session, order_id: str) -> list[Any]:
    """The order's released or expired reservations that nothing replaced (module doc), oldest first.

    A lapsed reservation is left alone when the order holds or has committed the
    same product in another reservation, or reserved it again after the lapse:
    the host's newer reservation stands for it.
    """
    mine, other = InventoryReservation, aliased(InventoryReservation)
    replaced = (
        select(other.id)
        .where(
            other.order_id == mine.order_id,
            other.product_id == mine.product_id,
            other.id != mine.id,
            or_(
                other.status.in_(_HELD_OR_TAKEN),
                and_(other.id > mine.id, other.created_at > mine.released_at),
            ),
        )
        .exists()
    )
    statement = (
        select(mine.id, mine.product_id, mine.quantity)
        .where(mine.order_id == order_id, mine.status.in_(_LAPSED), ~replaced)
        .order_by(mine.id)
    )
    return list(session.execute(statement).all())


def _take_back(ids: list[int]) -> Any:
    """UPDATE the lapsed reservations ``ids`` to ``committed``; ``released_at`` stays as their history."""
    now = utcnow()
    return (
        update(InventoryReservation)
        .where(InventoryReservation.id.in_(ids), InventoryReservation.status.in_(_LAPSED))
        .values(status=ReservationStatus.COMMITTED.value, committed_at=now, updated_at=now)
        .returning(InventoryReservation.product_id, InventoryReservation.quantity)
        .execution_options(synchronize_session=False)
    )


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


def _take_stock(session: Session, taken: Iterable[Any], *, unheld: bool = False) -> None:
    """Take committed units out of ``products.stock``, products in id order (no deadlocks).

    Held units (``unheld=False``) need only be on hand: their reservation kept
    them out of ``available``. Units taken back for a lapsed hold (``unheld=True``)
    must be *available*, or they would be another buyer's. Either guard sits in
    the UPDATE itself; a product it refuses raises instead of tripping the CHECK
    (the caller's checks make that unreachable but for writes outside this module).
    """
    per_product: Counter[int] = Counter()
    for product_id, quantity in taken:
        per_product[product_id] += quantity
    covering = _available_stock() if unheld else Product.stock
    for product_id in sorted(per_product):
        quantity = per_product[product_id]
        statement = (
            update(Product)
            .where(Product.id == product_id, covering >= quantity)
            .values(stock=Product.stock - quantity)
            .returning(Product.id)
            .execution_options(synchronize_session=False)
        )
        if session.scalar(statement) is None:
            left = session.scalar(select(covering).where(Product.id == product_id))
            raise InsufficientStock(product_id, quantity, int(left or 0))


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
    expired = (ExpiredReservation(id=row.id, product_id=row.product_id, quantity=row.quantity) for row in rows)
    return sorted(expired, key=lambda reservation: reservation.id)


def expire_all_due(
    sessions: sessionmaker[Session],
    *,
    batch_size: int,
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


def _positive_int(value: Any, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise InvalidReservation(f"{name} must be a positive integer, got {value!r}")


def _positive_minutes(value: Any, name: str) -> float:
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not number or not math.isfinite(value) or value <= 0:
        raise InvalidReservation(f"{name} must be a positive number of minutes, got {value!r}")
    return float(value)


#: The states the ops API lists reservations by: what the statuses mean at a given moment.
RESERVATION_STATES = ("active", "expired", "released", "committed")


def state_of(reservation: InventoryReservation, now: datetime) -> str:
    """``active``; ``expired``: active but past ``expires_at`` (the cleanup's backlog); ``released``:
    given back (by ``release`` or by the cleanup, status ``released`` or ``expired``); ``committed``."""
    if reservation.status == _ACTIVE:
        return "active" if reservation.expires_at > now else "expired"
    if reservation.status == ReservationStatus.COMMITTED.value:
        return "committed"
    return "released"


def reservations_page(
    session: Session, *, state: Optional[str], now: datetime, before_id: Optional[int] = None, limit: int = 50
) -> list[InventoryReservation]:
    """Reservations newest first, below ``before_id`` (keyset paging), in ``state`` (see ``state_of``)."""
    statement = select(InventoryReservation)
    active = InventoryReservation.status == _ACTIVE
    if state == "active":
        statement = statement.where(active, InventoryReservation.expires_at > now)
    elif state == "expired":
        statement = statement.where(active, InventoryReservation.expires_at <= now)
    elif state == "released":
        given_back = (ReservationStatus.RELEASED.value, ReservationStatus.EXPIRED.value)
        statement = statement.where(InventoryReservation.status.in_(given_back))
    elif state == "committed":
        statement = statement.where(InventoryReservation.status == ReservationStatus.COMMITTED.value)
    if before_id is not None:
        statement = statement.where(InventoryReservation.id < before_id)
    return list(session.scalars(statement.order_by(InventoryReservation.id.desc()).limit(limit)))
