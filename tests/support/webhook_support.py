"""Helpers of the webhook tests: a real intake server, orders as the host inserts them, signed posts."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, Optional

import requests
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from actors.webhooks import enqueue_due_webhooks
from bench.harness.serving import serving
from pipeline.core.runtime import Runtime
from pipeline.web.app import server_config
from pipeline.web.intake import signature_header
from storage import inventory, webhooks
from storage.models import DeadLetter, EmailQueue, WebhookEvent
from tests.support.helpers import wait_until

#: The secrets TEST_ENVIRONMENT configures: one shared, and Telebirr's own.
SHARED_SECRET = "whsec_test_shared"
TELEBIRR_SECRET = "whsec_test_telebirr"
#: The retry schedule TEST_ENVIRONMENT configures, in ms (1, 2, 4, 8, 16 minutes scaled, capped).
SCHEDULE_MS = [120, 240, 480, 720, 720]
#: The shop's monitoring query, which must keep working.
MONITORING_QUERY = (
    "SELECT status, COUNT(*), AVG(retry_count) FROM webhook_events WHERE archived = false GROUP BY status"
)


@contextmanager
def running_intake(runtime: Runtime) -> Iterator[str]:
    """The real intake app under uvicorn in a thread, on a free port of 127.0.0.1; yields its URL."""
    with serving(server_config(runtime, host="127.0.0.1", port=0)) as url:
        yield url


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def add_order(
    sessions: sessionmaker[Session], total: str = "250.00", currency: str = "ETB", email: Optional[str] = None
) -> str:
    """Insert an order the way the host does: a plain INSERT with only what it has."""
    order_id = new_id("MN")
    with sessions.begin() as session:
        session.execute(
            text("INSERT INTO orders (id, total, currency) VALUES (:id, :total, :currency)"),
            {"id": order_id, "total": total, "currency": currency},
        )
        if email:
            session.execute(text("UPDATE orders SET customer_email = :e WHERE id = :id"), {"e": email, "id": order_id})
    return order_id


def payment(order_id: str, kind: str = "payment.succeeded", amount: Any = "250.00", **extra: Any) -> dict[str, Any]:
    return {"event_id": new_id("evt"), "type": kind, "order_id": order_id, "amount": amount, "currency": "ETB", **extra}


def post(
    base: str,
    body: dict[str, Any] | bytes,
    *,
    provider: str = "generic",
    secret: str = SHARED_SECRET,
    timestamp: Optional[int] = None,
    headers: Optional[dict[str, str]] = None,
    sign: Optional[bytes] = None,
) -> requests.Response:
    """POST a body signed as a provider does; ``sign`` signs other bytes than those sent."""
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    signed = {
        "Content-Type": "application/json",
        "X-Webhook-Timestamp": stamp,
        "X-Webhook-Signature": signature_header([secret], stamp, raw if sign is None else sign),
    }
    signed.update(headers or {})
    return requests.post(f"{base}/api/payments/webhook/{provider}", data=raw, headers=signed, timeout=10)


def event_row(sessions: sessionmaker[Session], provider: str, event_id: str) -> Optional[WebhookEvent]:
    with sessions() as session:
        return webhooks.find(session, provider, event_id)


def wait_for_event(
    sessions: sessionmaker[Session], provider: str, event_id: str, check: Callable[[WebhookEvent], bool], what: str
) -> WebhookEvent:
    def ready() -> Optional[WebhookEvent]:
        row = event_row(sessions, provider, event_id)
        return row if row is not None and check(row) else None

    found = wait_until(ready, timeout=20, what=what)
    assert found is not None
    return found


def order(sessions: sessionmaker[Session], order_id: str) -> dict[str, Any]:
    with sessions() as session:
        row = session.execute(text("SELECT * FROM orders WHERE id = :id"), {"id": order_id}).mappings().one()
        return dict(row)


def emails_for(sessions: sessionmaker[Session], address: str) -> list[EmailQueue]:
    with sessions() as session:
        return list(session.query(EmailQueue).filter(EmailQueue.recipient == address).order_by(EmailQueue.id))


def reservation_statuses(sessions: sessionmaker[Session], order_id: str) -> list[str]:
    with sessions() as session:
        rows = session.execute(
            text("SELECT status FROM inventory_reservations WHERE order_id = :id ORDER BY id"), {"id": order_id}
        )
        return [status for (status,) in rows]


def reserve_for(sessions: sessionmaker[Session], order_id: str, quantity: int = 2) -> int:
    with sessions.begin() as session:
        product = inventory.create_product(session, sku=new_id("SKU"), name="Jebena", stock=10)
        inventory.reserve(session, product, quantity, ttl_minutes=15, order_id=order_id)
    return product


def stock(sessions: sessionmaker[Session], product_id: int) -> int:
    with sessions() as session:
        return int(session.execute(text("SELECT stock FROM products WHERE id = :id"), {"id": product_id}).scalar_one())


def count_events(sessions: sessionmaker[Session], event_id: str) -> int:
    with sessions() as session:
        statement = text("SELECT COUNT(*) FROM webhook_events WHERE event_id = :e")
        return int(session.execute(statement, {"e": event_id}).scalar_one())


def dead_letters_of(sessions: sessionmaker[Session], row_id: int) -> list[DeadLetter]:
    with sessions() as session:
        rows = session.query(DeadLetter).filter(DeadLetter.actor == "process_webhook_event").all()
        return [row for row in rows if row.args == [row_id]]


def drain_tick() -> None:
    """Re-enqueue whatever earlier tests left claimable, so counts below are this test's."""
    while enqueue_due_webhooks() > 0:
        pass


def store_event(
    session: Session, body: dict[str, Any], *, provider: str = "generic", lease: timedelta = timedelta(minutes=5)
) -> webhooks.Stored:
    """``body`` stored as the intake stores it, leased for ``lease`` (long: no tick takes it meanwhile)."""
    return webhooks.store(
        session,
        provider=provider,
        event_id=body["event_id"],
        event_type=body["type"],
        payload=body,
        order_id=body["order_id"],
        lease=lease,
    )


def store_lost(sessions: sessionmaker[Session], count: int) -> list[int]:
    """Events whose intake message never went out, their grace already over."""
    ids = []
    with sessions.begin() as session:
        for _ in range(count):
            body = payment(add_order(sessions))
            ids.append(
                store_event(session, body, lease=timedelta(0)).id
            )
    return ids
