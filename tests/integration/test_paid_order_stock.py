"""A paid order takes its stock even when its holds lapsed (issue 11, hole 4), on the real services.

``payment.failed`` releases an order's reservations and the cleanup expires holds
after 15 minutes, while a provider retries a success for 31 minutes: the success
then finds nothing active. These tests post signed events to the real intake and
let the session's in-process worker apply them, then check stock, reservations
and the order.
"""

from __future__ import annotations

import functools
import json
import logging
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session, sessionmaker

from pipeline.core.alerts import Alerter, forward_alert_logs
from pipeline.core.runtime import Runtime
from storage import inventory, payments, webhooks
from storage.database import normalize_url
from storage.inventory import InsufficientStock
from storage.payments import Applied
from storage.webhooks import EventData
from tests.support.alert_support import hook_server
from tests.support.helpers import unique_address, wait_until
from tests.support.inventory_support import run_together
from tests.support.webhook_support import (
    add_order,
    emails_for,
    order,
    payment,
    post,
    reservation_statuses,
    running_intake,
    stock,
    store_event,
    wait_for_event,
)

CLI = str(Path(sys.executable).with_name("minalesh-workers"))


@pytest.fixture(scope="module")
def intake(runtime: Runtime) -> Iterator[str]:
    with running_intake(runtime) as url:
        yield url


@pytest.fixture(scope="module")
def racing(environment: dict[str, str]) -> Iterator[sessionmaker[Session]]:
    """Room for every racing thread to hold its own connection at once."""
    engine = create_engine(normalize_url(environment["DATABASE_URL"]), pool_size=40, max_overflow=0)
    yield sessionmaker(engine, expire_on_commit=False)
    engine.dispose()


def new_product(sessions: sessionmaker[Session], units: int) -> int:
    with sessions.begin() as session:
        return inventory.create_product(session, sku=f"SKU-{uuid.uuid4().hex[:10]}", name="Mesob", stock=units)


def hold(
    sessions: sessionmaker[Session], order_id: str, product_id: int, quantity: int, ttl_minutes: float = 15
) -> int:
    with sessions.begin() as session:
        return inventory.reserve(session, product_id, quantity, ttl_minutes=ttl_minutes, order_id=order_id)


def available(sessions: sessionmaker[Session], product_id: int) -> int:
    with sessions() as session:
        return inventory.available(session, product_id)


def apply(intake: str, sessions: sessionmaker[Session], order_id: str, kind: str = "payment.succeeded") -> None:
    """Post a signed event for the order and wait until the worker has applied it."""
    body = payment(order_id, kind)
    assert post(intake, body).status_code == 200
    wait_for_event(sessions, "generic", body["event_id"], lambda r: r.status == "processed", what=f"{kind} applied")


# --- (a), (b): the stock is taken back -------------------------------------------------------------


def test_a_success_after_a_failure_takes_the_released_stock_once(intake: str, sessions: sessionmaker[Session]) -> None:
    address = unique_address("second-try")
    order_id = add_order(sessions, email=address)
    product = new_product(sessions, 10)
    hold(sessions, order_id, product, 3)

    apply(intake, sessions, order_id, "payment.failed")
    assert reservation_statuses(sessions, order_id) == ["released"]
    assert (stock(sessions, product), available(sessions, product)) == (10, 10)

    apply(intake, sessions, order_id)  # the customer pays on a second try

    paid = order(sessions, order_id)
    assert (paid["status"], paid["payment_status"]) == ("paid", "paid")
    assert reservation_statuses(sessions, order_id) == ["committed"]
    assert (stock(sessions, product), available(sessions, product)) == (7, 7)
    assert [e.template for e in emails_for(sessions, address)] == ["payment_failed", "order_confirmation"]


def test_a_success_after_the_hold_expired_and_was_cleaned_up_takes_the_stock(
    intake: str, sessions: sessionmaker[Session]
) -> None:
    order_id = add_order(sessions)
    product = new_product(sessions, 5)
    reservation_id = hold(sessions, order_id, product, 2, ttl_minutes=0.0005)  # 30 ms
    time.sleep(0.1)
    expired = inventory.expire_all_due(sessions, batch_size=500)  # the cleanup, as the tick runs it
    assert reservation_id in {e.id for e in expired}
    assert reservation_statuses(sessions, order_id) == ["expired"]

    apply(intake, sessions, order_id)  # the provider's retry arrives after the hold

    assert order(sessions, order_id)["payment_status"] == "paid"
    assert reservation_statuses(sessions, order_id) == ["committed"]
    assert (stock(sessions, product), available(sessions, product)) == (3, 3)
    with sessions() as session:
        row = session.execute(
            text("SELECT committed_at, released_at FROM inventory_reservations WHERE id = :id"),
            {"id": reservation_id},
        ).one()
    assert row.committed_at is not None and row.released_at is not None and row.committed_at > row.released_at


# --- (c): the stock was sold meanwhile ---------------------------------------------------------------


def test_stock_sold_meanwhile_pays_the_order_flags_it_alerts_and_never_oversells(
    intake: str, sessions: sessionmaker[Session], environment: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    gone, plenty = new_product(sessions, 2), new_product(sessions, 5)
    late = add_order(sessions)
    hold(sessions, late, gone, 2)
    hold(sessions, late, plenty, 1)
    apply(intake, sessions, late, "payment.failed")
    buyer = add_order(sessions)
    hold(sessions, buyer, gone, 2)
    apply(intake, sessions, buyer)  # the last two units are sold to someone else
    assert stock(sessions, gone) == 0

    with hook_server() as hook, caplog.at_level(logging.ERROR, logger="actors"):
        forward_alert_logs(Alerter(sessions, min_interval=timedelta(minutes=10), webhook_url=hook.url))
        try:
            apply(intake, sessions, late)  # the customer pays on a second try
            (alert,) = wait_until(lambda: hook.posts, what="the stock alert")
        finally:
            forward_alert_logs(None)

    paid = order(sessions, late)
    assert (paid["status"], paid["payment_status"]) == ("paid", "paid")  # the money was taken: recorded
    lines = [
        {"product_id": gone, "needed": 2, "available": 0},
        {"product_id": plenty, "needed": 1, "available": 5},  # all or nothing: covered, yet not taken
    ]
    assert paid["stock_shortfall"] == lines
    assert reservation_statuses(sessions, late) == ["released", "released"]
    assert (stock(sessions, gone), available(sessions, gone)) == (0, 0)
    assert (stock(sessions, plenty), available(sessions, plenty)) == (5, 5)
    assert alert.body["order_id"] == late and alert.body["stock_shortfall"] == lines
    assert f"Order {late} is paid but its stock is gone" in alert.body["text"]
    errors = [r for r in caplog.records if r.levelno == logging.ERROR and late in r.getMessage()]
    assert len(errors) == 1 and f"product {gone}: 2 needed, 0 available" in errors[0].getMessage()

    shown = subprocess.run([CLI, "stats", "--json"], env=environment, capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    figures = json.loads(shown.stdout)["orders"]
    assert figures["stock_short"] >= 1 and late in figures["stock_short_newest"]


# --- (d): reservers racing a late success ------------------------------------------------------------


def stored_success(sessions: sessionmaker[Session], order_id: str) -> EventData:
    """A success stored as the intake does, leased so that no worker takes it: the test applies it."""
    body = payment(order_id)
    with sessions.begin() as session:
        stored = store_event(session, body)
        row = webhooks.get(session, stored.id)
        assert row is not None
        return EventData.from_row(row)


def test_reservers_racing_a_late_success_never_oversell(
    sessions: sessionmaker[Session], racing: sessionmaker[Session]
) -> None:
    """Each round: 4 units of a released order paid late, 30 walk-in reservers of 1 unit, 10 in stock."""
    seen = []
    for step in (0.0, 0.0005, 0.001, 0.0015, 0.002, 0.003):
        product = new_product(sessions, 10)
        late = add_order(sessions)
        hold(sessions, late, product, 4)
        with sessions.begin() as session:
            inventory.release_order(session, late)  # what payment.failed did
        event = stored_success(sessions, late)

        def pay(go: Callable[[], object], event: EventData = event) -> Applied:
            with racing() as session:
                session.connection().exec_driver_sql("SELECT 1")  # connected before the start
                go()
                applied = payments.apply_event(session, event, email_lease=timedelta(minutes=1))
                session.commit()
                return applied

        def reserve_one(
            go: Callable[[], object], n: int, product: int = product, step: float = step
        ) -> int | InsufficientStock:
            with racing() as session:
                session.connection().exec_driver_sql("SELECT 1")
                go()
                time.sleep(n * step)  # a stream of walk-ins, which the success meets at another point each round
                try:
                    reservation_id = inventory.reserve(session, product, 1, ttl_minutes=15)
                except InsufficientStock as exc:
                    session.rollback()
                    return exc
                session.commit()
                return reservation_id

        applied, *walk_ins = run_together([pay, *[functools.partial(reserve_one, n=n) for n in range(30)]])
        assert isinstance(applied, Applied), applied
        won = [r for r in walk_ins if isinstance(r, int)]
        assert len(won) + sum(isinstance(r, InsufficientStock) for r in walk_ins) == 30, walk_ins
        paid = order(sessions, late)
        assert paid["payment_status"] == "paid"
        taken = reservation_statuses(sessions, late) == ["committed"]
        if taken:
            assert paid["stock_shortfall"] is None and applied.stock_short == ()
        else:
            assert reservation_statuses(sessions, late) == ["released"]
            ((line,),) = [paid["stock_shortfall"]]
            assert line["needed"] == 4 and line["available"] < 4 and applied.stock_short
        assert len(won) == 10 - 4 * taken  # every unit held or sold exactly once
        assert (stock(sessions, product), available(sessions, product)) == (10 - 4 * taken, 0)
        seen.append("taken" if taken else f"short after {10 - paid['stock_shortfall'][0]['available']} walk-ins")
    print(f"\nthe late success, round by round: {seen}")


# --- (e): a repeated success -------------------------------------------------------------------------


def test_a_repeated_success_changes_nothing(intake: str, sessions: sessionmaker[Session]) -> None:
    address = unique_address("paid-twice")
    taken = add_order(sessions, email=address)
    product = new_product(sessions, 10)
    hold(sessions, taken, product, 3)
    apply(intake, sessions, taken, "payment.failed")
    first = payment(taken)
    assert post(intake, first).status_code == 200
    wait_for_event(sessions, "generic", first["event_id"], lambda r: r.status == "processed", what="paid")
    assert stock(sessions, product) == 7

    assert post(intake, first).json()["duplicate"] is True  # the same event again
    apply(intake, sessions, taken)  # the same payment under a new event id
    assert (stock(sessions, product), available(sessions, product)) == (7, 7)
    assert reservation_statuses(sessions, taken) == ["committed"]
    assert [e.template for e in emails_for(sessions, address)] == ["payment_failed", "order_confirmation"]

    # A flagged order stays the operator's: a repeated success takes nothing, even after a restock.
    short = add_order(sessions)
    scarce = new_product(sessions, 2)
    hold(sessions, short, scarce, 2)
    apply(intake, sessions, short, "payment.failed")
    with sessions.begin() as session:
        inventory.reserve(session, scarce, 2, ttl_minutes=15)  # a walk-in holds the two units
    apply(intake, sessions, short)
    flagged = order(sessions, short)["stock_shortfall"]
    assert flagged == [{"product_id": scarce, "needed": 2, "available": 0}]
    with sessions.begin() as session:
        session.execute(text("UPDATE products SET stock = stock + 5 WHERE id = :id"), {"id": scarce})
    apply(intake, sessions, short)
    assert (stock(sessions, scarce), available(sessions, scarce)) == (7, 5)
    assert reservation_statuses(sessions, short) == ["released"]
    assert order(sessions, short)["stock_shortfall"] == flagged
