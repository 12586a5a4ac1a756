"""Inventory reservations against a real PostgreSQL, with real threads where it matters.

Why: ``storage.inventory`` promises things only a real database can show — no
interleaving of reservers oversells, and stock comes back exactly once however a
cleanup races another cleanup or a commit. The racing tests start real threads,
each with its own connection, together on a barrier; every test asserts the rows,
counts and stock it ends with.

The module makes its own database (``mw_inv_<hex>``), migrated with Alembic, and
drops it at the end; each test starts from empty tables.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import Any, Optional

import psycopg2
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, create_engine, func, select, text, update
from sqlalchemy.orm import Session, sessionmaker

from pipeline import api
from storage import inventory
from storage.clock import utcnow
from storage.database import get_engine, get_sessionmaker, normalize_url
from storage.inventory import (
    ExpiredReservation,
    InsufficientStock,
    ProductNotFound,
    ReservationNotFound,
    available,
    commit,
    commit_order,
    create_product,
    expire_all_due,
    expire_due,
    release,
    release_order,
    reservation_stats,
    reserve,
)
from storage.migrate import upgrade
from storage.models import Base, InventoryReservation, Product
from tests.support.inventory_support import PAST, reservation, run_together

PG_HOST = "127.0.0.1"
PG_PORT = 5432
MONITORING_QUERY = (
    "SELECT COUNT(*) FROM inventory_reservations WHERE status = 'active' AND expires_at < NOW()"
)


# --- fixtures -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def database_url() -> Iterator[str]:
    """A fresh, migrated database for this module, dropped at the end."""
    try:
        admin = psycopg2.connect(host=PG_HOST, port=PG_PORT, user="postgres", dbname="postgres")
    except psycopg2.OperationalError as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"PostgreSQL is not reachable at {PG_HOST}:{PG_PORT}: {exc}")
    admin.autocommit = True
    name = f"mw_inv_{uuid.uuid4().hex[:12]}"
    url = f"postgresql://postgres@{PG_HOST}:{PG_PORT}/{name}"
    try:
        with admin.cursor() as cursor:
            cursor.execute(f'CREATE DATABASE "{name}"')
        upgrade(url)
        yield url
    finally:
        get_engine(url).dispose()
        with admin.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.fixture(scope="module")
def engine(database_url: str) -> Iterator[Engine]:
    """Room for every racing thread to hold its own connection at once."""
    engine = create_engine(normalize_url(database_url), pool_size=60, max_overflow=0)
    yield engine
    engine.dispose()


@pytest.fixture
def sessions(engine: Engine) -> sessionmaker[Session]:
    """Empty tables for each test, and sessions on them."""
    with engine.begin() as connection:
        connection.execute(text("TRUNCATE inventory_reservations, products RESTART IDENTITY"))
    return sessionmaker(engine, expire_on_commit=False)


# --- helpers --------------------------------------------------------------------------


def new_product(sessions: sessionmaker[Session], stock: int) -> int:
    with sessions.begin() as session:
        return create_product(session, sku=f"SKU-{uuid.uuid4().hex[:8]}", name="Injera pan", stock=stock)


def stock_of(sessions: sessionmaker[Session], product_id: int) -> int:
    with sessions() as session:
        return session.scalars(select(Product.stock).where(Product.id == product_id)).one()


def available_of(sessions: sessionmaker[Session], product_id: int) -> int:
    with sessions() as session:
        return available(session, product_id)


def add_reservation(
    sessions: sessionmaker[Session],
    product_id: int,
    quantity: int,
    *,
    expires_in: timedelta,
    status: str = "active",
    order_id: Optional[str] = None,
    released_at: Optional[datetime] = None,
) -> int:
    """A reservation row written directly, in any state, as a host could have left it."""
    with sessions.begin() as session:
        row = InventoryReservation(
            product_id=product_id,
            quantity=quantity,
            status=status,
            order_id=order_id,
            expires_at=utcnow() + expires_in,
            released_at=released_at,
        )
        session.add(row)
        session.flush()
        return row.id


def documented_host_sql() -> list[str]:
    """The statements the module docstring tells hosts to run, between BEGIN and COMMIT."""
    doc = inventory.__doc__ or ""
    block = doc.split("BEGIN;", 1)[1].split("COMMIT;", 1)[0]
    return [statement.strip() for statement in block.split(";") if statement.strip()]


def host_reserve(
    sessions: sessionmaker[Session], product_id: int, quantity: int, order_id: str
) -> Optional[int]:
    with sessions.begin() as session:
        params = {"product_id": product_id, "quantity": quantity, "order_id": order_id}
        lock, insert = documented_host_sql()
        session.execute(text(lock), params)
        return session.execute(text(insert), params).scalar()


# --- reserve, commit, release ---------------------------------------------------------


def test_reserve_holds_stock_and_commit_takes_it(sessions: sessionmaker[Session]) -> None:
    product = new_product(sessions, stock=5)
    with sessions.begin() as session:
        reservation_id = reserve(session, product, 2, ttl_minutes=15, order_id="order-1")
    row = reservation(sessions, reservation_id)
    assert (row.status, row.quantity, row.order_id) == ("active", 2, "order-1")
    assert abs(row.expires_at - (utcnow() + timedelta(minutes=15))) < timedelta(seconds=5)
    assert (stock_of(sessions, product), available_of(sessions, product)) == (5, 3)

    with sessions.begin() as session:
        assert commit(session, reservation_id) is True
    row = reservation(sessions, reservation_id)
    assert row.status == "committed" and row.committed_at is not None and row.released_at is None
    assert (stock_of(sessions, product), available_of(sessions, product)) == (3, 3)


def test_release_gives_the_stock_back(sessions: sessionmaker[Session]) -> None:
    product = new_product(sessions, stock=5)
    with sessions.begin() as session:
        reservation_id = reserve(session, product, 4, ttl_minutes=15)
    assert available_of(sessions, product) == 1
    with sessions.begin() as session:
        assert release(session, reservation_id) is True
    row = reservation(sessions, reservation_id)
    assert row.status == "released" and row.released_at is not None and row.committed_at is None
    assert (stock_of(sessions, product), available_of(sessions, product)) == (5, 5)


def test_commit_and_release_are_idempotent(sessions: sessionmaker[Session]) -> None:
    product = new_product(sessions, stock=10)
    with sessions.begin() as session:
        committed = reserve(session, product, 3, ttl_minutes=15)
        released = reserve(session, product, 2, ttl_minutes=15)
    with sessions.begin() as session:
        assert commit(session, committed) is True
        assert commit(session, committed) is False
        assert release(session, committed) is False
        assert release(session, released) is True
        assert release(session, released) is False
        assert commit(session, released) is False
    assert reservation(sessions, committed).status == "committed"
    assert reservation(sessions, released).status == "released"
    assert (stock_of(sessions, product), available_of(sessions, product)) == (7, 7)


def test_unknown_ids_raise(sessions: sessionmaker[Session]) -> None:
    with sessions() as session:
        with pytest.raises(ReservationNotFound, match="reservation 424242"):
            commit(session, 424242)
        with pytest.raises(ReservationNotFound, match="reservation 424242"):
            release(session, 424242)
        with pytest.raises(ProductNotFound, match="product 434343"):
            reserve(session, 434343, 1, ttl_minutes=15)


def test_insufficient_stock_names_product_and_quantities(sessions: sessionmaker[Session]) -> None:
    product = new_product(sessions, stock=3)
    with sessions.begin() as session:
        reserve(session, product, 2, ttl_minutes=15)
    with sessions() as session, pytest.raises(InsufficientStock) as caught:
        reserve(session, product, 2, ttl_minutes=15)
    assert str(caught.value) == f"product {product}: 2 requested but only 1 available"
    assert (caught.value.product_id, caught.value.requested, caught.value.available) == (product, 2, 1)
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(InventoryReservation)) == 1


@pytest.mark.parametrize(
    ("product_id", "quantity", "ttl", "named"),
    [
        (1, 0, None, "quantity"),
        (1, -2, None, "quantity"),
        (1, 1.5, None, "quantity"),
        (1, True, None, "quantity"),
        (1, "2", None, "quantity"),
        (0, 1, None, "product_id"),
        (1, 1, 0, "ttl_minutes"),
        (1, 1, -5, "ttl_minutes"),
        (1, 1, float("nan"), "ttl_minutes"),
        (1, 1, float("inf"), "ttl_minutes"),
    ],
)
def test_bad_arguments_are_rejected(
    sessions: sessionmaker[Session], product_id: Any, quantity: Any, ttl: Any, named: str
) -> None:
    new_product(sessions, stock=10)
    with sessions() as session, pytest.raises(ValueError, match=named):
        reserve(session, product_id, quantity, ttl_minutes=ttl)
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(InventoryReservation)) == 0


def test_the_host_api_holds_for_the_environments_ttl_unless_given(
    sessions: sessionmaker[Session], database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    product = new_product(sessions, stock=10)
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("RESERVATION_TIMEOUT_MINUTES", "0.5")
    with sessions.begin() as session:
        from_env = api.reserve(product, 1, session=session)
        explicit = api.reserve(product, 1, 60, session=session)
    monkeypatch.delenv("RESERVATION_TIMEOUT_MINUTES")
    shipped = api.reserve(product, 1)
    now = utcnow()
    assert abs(reservation(sessions, from_env).expires_at - (now + timedelta(seconds=30))) < timedelta(
        seconds=5
    )
    assert abs(reservation(sessions, explicit).expires_at - (now + timedelta(hours=1))) < timedelta(seconds=5)
    assert abs(reservation(sessions, shipped).expires_at - (now + timedelta(minutes=15))) < timedelta(seconds=5)


def test_without_a_session_the_api_uses_database_url(
    sessions: sessionmaker[Session], database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    product = new_product(sessions, stock=6)
    monkeypatch.setenv("DATABASE_URL", database_url)
    kept = api.reserve(product, 2, order_id="order-env")
    dropped = api.reserve(product, 3)
    assert reservation(sessions, kept).order_id == "order-env"
    assert available_of(sessions, product) == 1
    assert api.commit(kept) is True and api.release(dropped) is True
    assert (stock_of(sessions, product), available_of(sessions, product)) == (4, 4)
    with pytest.raises(InsufficientStock):
        api.reserve(product, 5)
    assert get_sessionmaker(database_url).kw["bind"] is get_engine(database_url)


def test_commit_refuses_when_stock_was_lowered_below_what_is_reserved(
    sessions: sessionmaker[Session],
) -> None:
    product = new_product(sessions, stock=5)
    with sessions.begin() as session:
        reservation_id = reserve(session, product, 4, ttl_minutes=15)
        session.execute(update(Product).where(Product.id == product).values(stock=2))
    # the exception leaves sessions.begin() and rolls the whole commit back
    with pytest.raises(InsufficientStock, match="4 requested but only 2"), sessions.begin() as session:
        commit(session, reservation_id)
    assert reservation(sessions, reservation_id).status == "active"
    assert stock_of(sessions, product) == 2


# --- reservations written by the host in SQL ------------------------------------------


def test_host_reserving_by_the_documented_sql(sessions: sessionmaker[Session]) -> None:
    product = new_product(sessions, stock=3)
    host_id = host_reserve(sessions, product, 2, "host-order")
    assert host_id is not None
    row = reservation(sessions, host_id)
    assert (row.status, row.quantity, row.order_id) == ("active", 2, "host-order")
    assert abs(row.expires_at - (utcnow() + timedelta(minutes=15))) < timedelta(seconds=5)
    assert available_of(sessions, product) == 1

    assert host_reserve(sessions, product, 2, "host-order-2") is None
    with sessions.begin() as session:
        reserve(session, product, 1, ttl_minutes=15)
    assert available_of(sessions, product) == 0

    with sessions.begin() as session:
        assert commit_order(session, "host-order") == 1
    assert (stock_of(sessions, product), available_of(sessions, product)) == (1, 0)


def test_plain_insert_by_the_host_counts_and_expires(sessions: sessionmaker[Session], engine: Engine) -> None:
    product = new_product(sessions, stock=5)
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO inventory_reservations (product_id, quantity, expires_at)"
                " VALUES (:product_id, 2, NOW() - INTERVAL '1 minute')"
            ),
            {"product_id": product},
        )
        assert connection.execute(text(MONITORING_QUERY)).scalar() == 1
    assert available_of(sessions, product) == 3

    expired = expire_all_due(sessions, batch_size=500)
    assert [(e.product_id, e.quantity) for e in expired] == [(product, 2)]
    with engine.connect() as connection:
        assert connection.execute(text(MONITORING_QUERY)).scalar() == 0
    assert (stock_of(sessions, product), available_of(sessions, product)) == (5, 5)


# --- cleanup --------------------------------------------------------------------------

FUTURE = timedelta(minutes=5)


def test_expire_due_releases_exactly_the_expired_ones(sessions: sessionmaker[Session]) -> None:
    first, second = new_product(sessions, stock=10), new_product(sessions, stock=8)
    due = {
        add_reservation(sessions, first, 2, expires_in=PAST),
        add_reservation(sessions, first, 3, expires_in=PAST),
        add_reservation(sessions, second, 1, expires_in=PAST),
    }
    still_held = add_reservation(sessions, first, 1, expires_in=FUTURE)
    committed = add_reservation(sessions, second, 2, expires_in=PAST, status="committed")
    released = add_reservation(sessions, first, 4, expires_in=PAST, status="released")
    assert (available_of(sessions, first), available_of(sessions, second)) == (4, 7)

    with sessions.begin() as session:
        expired = expire_due(session, batch_size=100)
    assert {e.id for e in expired} == due
    assert sorted((e.product_id, e.quantity) for e in expired) == [(first, 2), (first, 3), (second, 1)]
    assert (available_of(sessions, first), available_of(sessions, second)) == (9, 8)
    assert (stock_of(sessions, first), stock_of(sessions, second)) == (10, 8)
    assert all(reservation(sessions, i).status == "expired" for i in due)
    assert all(reservation(sessions, i).released_at is not None for i in due)
    assert reservation(sessions, still_held).status == "active"
    assert reservation(sessions, committed).status == "committed"
    assert reservation(sessions, released).released_at is None
    with sessions.begin() as session:
        assert expire_due(session, batch_size=100) == []


def test_cleanup_runs_in_bounded_batches(sessions: sessionmaker[Session]) -> None:
    product = new_product(sessions, stock=20)
    ids = [add_reservation(sessions, product, 1, expires_in=timedelta(minutes=-10 + i)) for i in range(7)]
    with sessions.begin() as session:
        first = expire_due(session, batch_size=3)
    assert [e.id for e in first] == ids[:3]
    assert [e.id for e in expire_all_due(sessions, batch_size=3, max_batches=1)] == ids[3:6]
    assert [e.id for e in expire_all_due(sessions, batch_size=3)] == ids[6:]
    assert available_of(sessions, product) == 20


def test_two_concurrent_cleanups_give_stock_back_once(sessions: sessionmaker[Session]) -> None:
    products = [new_product(sessions, stock=200) for _ in range(2)]
    quantities = {
        add_reservation(sessions, products[i % 2], 1 + i % 3, expires_in=PAST): (products[i % 2], 1 + i % 3)
        for i in range(60)
    }

    def cleanup(go: Callable[[], object]) -> list[ExpiredReservation]:
        go()
        return expire_all_due(sessions, batch_size=5, max_batches=100)

    left, right = run_together([cleanup, cleanup])
    assert isinstance(left, list) and isinstance(right, list)
    assert {e.id for e in left}.isdisjoint(e.id for e in right)
    assert {e.id: (e.product_id, e.quantity) for e in left + right} == quantities
    for product in products:
        assert (stock_of(sessions, product), available_of(sessions, product)) == (200, 200)


def test_cleanup_skips_a_reservation_a_commit_is_finishing(sessions: sessionmaker[Session]) -> None:
    product = new_product(sessions, stock=5)
    reservation_id = add_reservation(sessions, product, 3, expires_in=PAST)
    with sessions() as paying, sessions() as cleaning:
        assert commit(paying, reservation_id) is True  # row locked, not committed yet
        cleaning.execute(text("SET LOCAL lock_timeout = '2s'"))
        assert expire_due(cleaning, batch_size=10) == []
        cleaning.commit()
        paying.commit()
    with sessions.begin() as session:
        assert expire_due(session, batch_size=10) == []
    row = reservation(sessions, reservation_id)
    assert row.status == "committed" and row.released_at is None
    assert (stock_of(sessions, product), available_of(sessions, product)) == (2, 2)


def test_commit_after_expiry_takes_nothing(sessions: sessionmaker[Session]) -> None:
    product = new_product(sessions, stock=5)
    reservation_id = add_reservation(sessions, product, 3, expires_in=PAST, order_id="late")
    assert [e.id for e in expire_all_due(sessions, batch_size=500)] == [reservation_id]
    with sessions.begin() as session:
        assert commit(session, reservation_id) is False
        assert commit_order(session, "late") == 0
    assert (stock_of(sessions, product), available_of(sessions, product)) == (5, 5)


def test_cleanup_racing_commits_never_gives_back_committed_stock(sessions: sessionmaker[Session]) -> None:
    product = new_product(sessions, stock=40)
    ids = [add_reservation(sessions, product, 1, expires_in=PAST) for _ in range(40)]

    def pay(go: Callable[[], object]) -> set[int]:
        go()
        won = set()
        for reservation_id in reversed(ids):  # meet the cleanup, which starts from the oldest
            with sessions.begin() as session:
                if commit(session, reservation_id):
                    won.add(reservation_id)
        return won

    def cleanup(go: Callable[[], object]) -> set[int]:
        go()
        return {e.id for e in expire_all_due(sessions, batch_size=3, max_batches=100)}

    committed, expired = run_together([pay, cleanup])
    assert isinstance(committed, set) and isinstance(expired, set)
    assert committed.isdisjoint(expired) and committed | expired == set(ids)
    with sessions() as session:
        statuses = dict(session.execute(select(InventoryReservation.id, InventoryReservation.status)).all())
        released_committed = session.scalar(
            select(func.count()).where(
                InventoryReservation.status == "committed", InventoryReservation.released_at.is_not(None)
            )
        )
    assert {i for i, status in statuses.items() if status == "committed"} == committed
    assert {i for i, status in statuses.items() if status == "expired"} == expired
    assert released_committed == 0
    assert stock_of(sessions, product) == 40 - len(committed) == available_of(sessions, product)


def test_fifty_reservers_of_ten_units_never_oversell(sessions: sessionmaker[Session]) -> None:
    product = new_product(sessions, stock=10)

    def reserve_one(go: Callable[[], object]) -> int | InsufficientStock:
        with sessions() as session:
            session.connection().exec_driver_sql("SELECT 1")  # connected before the start
            go()
            try:
                reservation_id = reserve(session, product, 1, ttl_minutes=15)
            except InsufficientStock as exc:
                session.rollback()
                return exc
            session.commit()
            return reservation_id

    results = run_together([reserve_one] * 50)
    won = [r for r in results if isinstance(r, int)]
    refused = [r for r in results if isinstance(r, InsufficientStock)]
    assert (len(won), len(refused)) == (10, 40)
    assert all(exc.available == 0 and exc.requested == 1 for exc in refused)
    with sessions() as session:
        statement = select(InventoryReservation.id).where(InventoryReservation.status == "active")
        active = session.scalars(statement).all()
    assert sorted(active) == sorted(won)
    assert (stock_of(sessions, product), available_of(sessions, product)) == (10, 0)

    with sessions.begin() as session:
        assert all(commit(session, reservation_id) for reservation_id in won)
    assert (stock_of(sessions, product), available_of(sessions, product)) == (0, 0)


# --- payment events and monitoring ----------------------------------------------------


def test_commit_order_and_release_order(sessions: sessionmaker[Session]) -> None:
    first, second = new_product(sessions, stock=10), new_product(sessions, stock=5)
    with sessions.begin() as session:
        reserve(session, first, 2, ttl_minutes=15, order_id="paid")
        reserve(session, second, 1, ttl_minutes=15, order_id="paid")
        gone = reserve(session, first, 1, ttl_minutes=15, order_id="paid")
        reserve(session, first, 3, ttl_minutes=15, order_id="failed")
        release(session, gone)
    assert (available_of(sessions, first), available_of(sessions, second)) == (5, 4)

    with sessions.begin() as session:
        assert commit_order(session, "paid") == 2
        assert commit_order(session, "paid") == 0
        assert release_order(session, "failed") == 1
        assert release_order(session, "failed") == 0
        assert commit_order(session, "failed") == 0
        assert commit_order(session, "no-such-order") == 0
    assert (stock_of(sessions, first), available_of(sessions, first)) == (8, 8)
    assert (stock_of(sessions, second), available_of(sessions, second)) == (4, 4)
    assert reservation(sessions, gone).status == "released"


def test_reservation_stats(sessions: sessionmaker[Session]) -> None:
    product = new_product(sessions, stock=100)
    for _ in range(2):
        add_reservation(sessions, product, 1, expires_in=FUTURE)
    add_reservation(sessions, product, 1, expires_in=PAST)
    add_reservation(sessions, product, 1, expires_in=timedelta(seconds=-1))
    add_reservation(sessions, product, 1, expires_in=PAST, status="committed")
    add_reservation(
        sessions, product, 1, expires_in=PAST, status="released", released_at=utcnow() - timedelta(hours=2)
    )
    with sessions.begin() as session:
        release(session, reserve(session, product, 1, ttl_minutes=15))
        assert reservation_stats(session) == {"active": 4, "expired_not_released": 2, "released_last_hour": 1}
    with sessions.begin() as session:
        expire_due(session, batch_size=1)
    with sessions() as session:
        assert reservation_stats(session) == {"active": 3, "expired_not_released": 1, "released_last_hour": 2}


# --- schema ---------------------------------------------------------------------------


def test_models_match_the_migration(engine: Engine) -> None:
    """Alembic autogenerate finds nothing to change in the two inventory tables."""
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"include_object": _inventory_only})
        assert compare_metadata(context, Base.metadata) == []


def _inventory_only(item: Any, name: Optional[str], type_: str, reflected: bool, compare_to: Any) -> bool:
    table = item if type_ == "table" else getattr(item, "table", None)
    return table is None or table.name in {"products", "inventory_reservations"}
