"""A paid order takes its stock back after its holds lapsed: the rules on SQLite, the alert without services.

The races are the integration tier's (``tests/integration/test_paid_order_stock.py``);
here each rule of ``storage.inventory.settle_paid_order`` on rows written as a host
or the workers leave them, ``apply_event``'s success path, the migration, and the
log record that carries the alert.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from pathlib import Path
from typing import Any, Optional

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import inspect, select, text
from sqlalchemy.orm import Session, sessionmaker

from actors.webhooks import _report_stock_short
from pipeline.core.alerts import ALERT_LOGGER, Alerter, AlertLogHandler, forward_alert_logs
from storage import inventory, orders, payments, webhooks
from storage.clock import utcnow
from storage.database import get_engine
from storage.inventory import Settlement, StockLine, settle_paid_order
from storage.migrate import MIGRATIONS_DIR, upgrade
from storage.models import InventoryReservation, Product
from storage.webhooks import EventData

FUTURE = timedelta(minutes=15)


def product(lite: sessionmaker[Session], units: int) -> int:
    with lite.begin() as session:
        return inventory.create_product(session, sku=f"sku-{units}-{utcnow().timestamp()}", name="Sefed", stock=units)


def row(
    lite: sessionmaker[Session],
    product_id: int,
    quantity: int,
    status: str,
    *,
    order_id: Optional[str] = "MN-1",
    created: timedelta = timedelta(minutes=-30),
    released: Optional[timedelta] = None,
) -> int:
    """A reservation as the workers or the host left it; times relative to now."""
    now = utcnow()
    with lite.begin() as session:
        reservation = InventoryReservation(
            product_id=product_id,
            order_id=order_id,
            quantity=quantity,
            status=status,
            expires_at=now + FUTURE,
            created_at=now + created,
            released_at=None if released is None else now + released,
        )
        session.add(reservation)
        session.flush()
        return reservation.id


def settle(lite: sessionmaker[Session], order_id: str = "MN-1", take_back: bool = True) -> Settlement:
    with lite.begin() as session:
        return settle_paid_order(session, order_id, take_back=take_back)


def statuses(lite: sessionmaker[Session], *ids: int) -> list[str]:
    with lite() as session:
        found = dict(session.execute(select(InventoryReservation.id, InventoryReservation.status)).all())
    return [found[i] for i in ids]


def on_hand(lite: sessionmaker[Session], product_id: int) -> tuple[int, int]:
    """(stock, available) of the product."""
    with lite() as session:
        stock = session.scalar(select(Product.stock).where(Product.id == product_id))
        return int(stock or 0), inventory.available(session, product_id)


# --- settle_paid_order --------------------------------------------------------------------


def test_held_units_are_committed_and_lapsed_ones_taken_back_from_available(lite: sessionmaker[Session]) -> None:
    held, released, expired = product(lite, 5), product(lite, 3), product(lite, 1)
    a = row(lite, held, 2, "active")
    b = row(lite, released, 1, "released", released=timedelta(minutes=-10))
    c = row(lite, expired, 1, "expired", released=timedelta(minutes=-5))
    row(lite, released, 1, "active", order_id="walk-in")
    other_order = row(lite, expired, 1, "released", order_id="MN-2", released=timedelta(minutes=-5))

    assert settle(lite) == Settlement(committed=1, taken_back=2)

    assert statuses(lite, a, b, c, other_order) == ["committed", "committed", "committed", "released"]
    assert [on_hand(lite, p) for p in (held, released, expired)] == [(3, 3), (2, 1), (0, 0)]
    with lite() as session:
        taken = session.get(InventoryReservation, b)
        assert taken is not None and taken.committed_at is not None and taken.released_at is not None
    assert settle(lite) == Settlement()  # nothing left to take


def test_all_or_nothing_when_a_product_is_short(lite: sessionmaker[Session]) -> None:
    held, scarce, plenty = product(lite, 4), product(lite, 2), product(lite, 9)
    a = row(lite, held, 1, "active")
    b = row(lite, scarce, 2, "released", released=timedelta(minutes=-10))
    c = row(lite, plenty, 3, "expired", released=timedelta(minutes=-1))
    row(lite, scarce, 1, "active", order_id="walk-in")  # holds one of the two units

    settled = settle(lite)

    assert settled == Settlement(
        committed=1,
        not_taken=(
            StockLine(product_id=scarce, needed=2, available=1),
            StockLine(product_id=plenty, needed=3, available=9),
        ),
    )
    assert settled.short and [line.short for line in settled.not_taken] == [True, False]
    assert statuses(lite, a, b, c) == ["committed", "released", "expired"]
    assert [on_hand(lite, p) for p in (held, scarce, plenty)] == [(3, 3), (2, 1), (9, 9)]


def test_a_product_the_host_reserved_again_is_not_taken_twice(lite: sessionmaker[Session]) -> None:
    again, chain, lines, edited = (product(lite, 10) for _ in range(4))
    # released by payment.failed, then reserved again by the host for the second try: the new hold stands
    old = row(lite, again, 2, "released", released=timedelta(minutes=-20))
    new = row(lite, again, 2, "active", created=timedelta(minutes=-19))
    # one of two holds of a product released by the host (the buyer took one off), the other still held
    kept = row(lite, edited, 1, "active", created=timedelta(minutes=-30))
    dropped = row(lite, edited, 1, "released", created=timedelta(minutes=-30), released=timedelta(minutes=-25))
    # released, reserved again after the release, and that hold expired too: only the newest is the order's
    first = row(lite, chain, 3, "released", created=timedelta(minutes=-40), released=timedelta(minutes=-30))
    second = row(lite, chain, 3, "expired", created=timedelta(minutes=-29), released=timedelta(minutes=-14))
    # two holds of one product made in the same checkout, released together: both are the order's
    one = row(lite, lines, 1, "released", created=timedelta(minutes=-30), released=timedelta(minutes=-10))
    two = row(lite, lines, 2, "released", created=timedelta(minutes=-29), released=timedelta(minutes=-10))

    assert settle(lite) == Settlement(committed=2, taken_back=3)

    assert statuses(lite, old, new, kept, dropped) == ["released", "committed", "committed", "released"]
    assert statuses(lite, first, second, one, two) == ["released", "committed", "committed", "committed"]
    assert [on_hand(lite, p)[0] for p in (again, edited, chain, lines)] == [8, 9, 7, 7]


def test_a_repeated_success_only_commits_what_is_active(lite: sessionmaker[Session]) -> None:
    item = product(lite, 5)
    lapsed = row(lite, item, 2, "released", released=timedelta(minutes=-3))
    assert settle(lite, take_back=False) == Settlement()
    assert statuses(lite, lapsed) == ["released"] and on_hand(lite, item) == (5, 5)
    with lite.begin() as session:
        held = inventory.reserve(session, item, 1, ttl_minutes=15, order_id="MN-1")
    assert settle(lite, take_back=False) == Settlement(committed=1)
    assert statuses(lite, lapsed, held) == ["released", "committed"] and on_hand(lite, item) == (4, 4)


# --- apply_event's success path ---------------------------------------------------------------


def add_order(lite: sessionmaker[Session], order_id: str) -> None:
    with lite.begin() as session:
        session.execute(text("INSERT INTO orders (id, total, currency) VALUES (:id, 250.00, 'ETB')"), {"id": order_id})


def apply(lite: sessionmaker[Session], order_id: str, kind: str, event_id: str) -> payments.Applied:
    body = {"event_id": event_id, "type": kind, "order_id": order_id, "amount": "250.00", "currency": "ETB"}
    with lite.begin() as session:
        stored = webhooks.store(
            session,
            provider="generic",
            event_id=event_id,
            event_type=kind,
            payload=body,
            order_id=order_id,
            lease=timedelta(minutes=5),
        )
        found = webhooks.get(session, stored.id)
        assert found is not None
        event = EventData.from_row(found)
    with lite.begin() as session:
        return payments.apply_event(session, event, email_lease=timedelta(minutes=1))


def test_apply_event_takes_the_stock_back_or_flags_the_order(lite: sessionmaker[Session]) -> None:
    item = product(lite, 3)
    for order_id in ("MN-late", "MN-short"):
        add_order(lite, order_id)
        with lite.begin() as session:
            inventory.reserve(session, item, 2 if order_id == "MN-late" else 1, ttl_minutes=15, order_id=order_id)
        apply(lite, order_id, "payment.failed", f"{order_id}-failed")

    late = apply(lite, "MN-late", "payment.succeeded", "late-paid")
    assert late.applied and late.stock_short == () and on_hand(lite, item) == (1, 1)
    with lite.begin() as session:
        inventory.reserve(session, item, 1, ttl_minutes=15, order_id="walk-in")  # the last unit, held by someone else
    short = apply(lite, "MN-short", "payment.succeeded", "short-paid")
    again = apply(lite, "MN-short", "payment.succeeded", "short-paid-again")

    assert short.stock_short == (StockLine(product_id=item, needed=1, available=0),)
    assert again.applied and again.stock_short == ()
    assert on_hand(lite, item) == (1, 0)
    with lite() as session:
        paid = session.execute(text("SELECT payment_status, stock_shortfall FROM orders ORDER BY id")).all()
        figures = orders.stock_stats(session)
    assert [status for status, _ in paid] == ["paid", "paid"]
    assert [flag for _, flag in paid] == [None, f'[{{"product_id": {item}, "needed": 1, "available": 0}}]']
    assert figures == {"stock_short": 1, "stock_short_newest": ["MN-short"]}
    with lite.begin() as session:  # the operator settled it
        session.execute(text("UPDATE orders SET stock_shortfall = NULL WHERE id = 'MN-short'"))
    with lite() as session:
        assert orders.stock_stats(session) == {"stock_short": 0, "stock_short_newest": []}


# --- the migration ----------------------------------------------------------------------------


def test_the_migration_adds_the_flag_to_existing_orders_and_goes_back(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'migrate.sqlite3'}"
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["url"] = url
    try:
        upgrade(url, "0005_sending_engine")
        with get_engine(url).begin() as connection:
            connection.execute(text("INSERT INTO orders (id, total) VALUES ('MN-old', 10)"))
        upgrade(url)
        with get_engine(url).connect() as connection:
            assert connection.execute(text("SELECT stock_shortfall FROM orders")).scalar_one() is None
            indexes = {index["name"] for index in inspect(connection).get_indexes("orders")}
        assert "ix_orders_stock_short" in indexes
        command.downgrade(config, "0005_sending_engine")
        with get_engine(url).connect() as connection:
            columns = {column["name"] for column in inspect(connection).get_columns("orders")}
        assert "stock_shortfall" not in columns and "paid_at" in columns
    finally:
        get_engine(url).dispose()


# --- the alert the actor's log line carries ---------------------------------------------------


class RecordingAlerter(Alerter):
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    def notify(self, *, subject: str, text: str, payload: dict[str, Any], key: str) -> dict[str, bool]:
        self.sent.append({"subject": subject, "text": text, "payload": payload, "key": key})
        return {"webhook": True}


@pytest.fixture
def alerter() -> Any:
    recording = RecordingAlerter()
    forward_alert_logs(recording)
    yield recording
    forward_alert_logs(None)


def test_a_short_paid_order_is_logged_at_error_and_alerted_once(
    alerter: RecordingAlerter, caplog: pytest.LogCaptureFixture
) -> None:
    lines = (StockLine(product_id=7, needed=2, available=0), StockLine(product_id=9, needed=1, available=4))
    with caplog.at_level(logging.ERROR, logger=ALERT_LOGGER):
        _report_stock_short("MN-9", lines)
        logging.getLogger("actors.webhooks").error("No alert in this one.")

    (record, plain) = caplog.records
    assert record.levelno == logging.ERROR and "Order MN-9 is paid but its stock is gone" in record.getMessage()
    assert "product 7: 2 needed, 0 available" in record.getMessage() and "product 9" not in record.getMessage()
    (sent,) = alerter.sent
    assert sent["subject"] == "[minalesh-workers] paid order MN-9 is short of stock"
    assert sent["key"] == "minalesh-stock-short-MN-9"
    assert sent["text"] == f"[minalesh-workers] {record.getMessage()}" == sent["payload"]["text"]
    assert sent["payload"]["order_id"] == "MN-9"
    assert sent["payload"]["stock_shortfall"] == [line.as_json() for line in lines]
    assert plain.getMessage() == "No alert in this one."


def test_alert_log_forwarding_is_installed_once_and_removed() -> None:
    target = logging.getLogger(ALERT_LOGGER)
    forward_alert_logs(RecordingAlerter())
    forward_alert_logs(RecordingAlerter())
    assert sum(isinstance(handler, AlertLogHandler) for handler in target.handlers) == 1
    forward_alert_logs(None)
    assert not any(isinstance(handler, AlertLogHandler) for handler in target.handlers)
