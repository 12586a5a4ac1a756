"""Webhook storage without services: the same statements and stats on the dev mode's SQLite."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from sqlalchemy import select, text
from sqlalchemy.orm import Session, sessionmaker

from storage import leases, payments, webhooks
from storage.database import get_engine, get_sessionmaker
from storage.leases import AttemptOutcome
from storage.migrate import upgrade
from storage.models import EmailQueue
from tests.support.webhook_support import MONITORING_QUERY


def test_stats_on_known_rows_and_the_same_statements_on_sqlite(tmp_path: Path) -> None:
    """The dev mode's SQLite: migrate, store once, claim, archive, count."""
    url = f"sqlite:///{tmp_path / 'dev.sqlite3'}"
    upgrade(url)
    lite = get_sessionmaker(url)
    try:
        lease = timedelta(minutes=5)
        with lite.begin() as session:
            stored = [
                webhooks.store(
                    session,
                    provider="awash",
                    event_id=f"e{n}",
                    event_type="payment.failed",
                    payload={"n": n},
                    order_id=f"o{n}",
                    lease=timedelta(0) if n < 2 else lease,
                )
                for n in range(4)
            ]
            again = webhooks.store(
                session,
                provider="awash",
                event_id="e0",
                event_type="payment.failed",
                payload={},
                order_id="o0",
                lease=lease,
            )
        assert [s.created for s in stored] == [True] * 4 and again == webhooks.Stored(stored[0].id, False)
        with lite.begin() as session:
            assert leases.claim_due(webhooks.TABLE, session, limit=10, lease=lease) == [stored[0].id, stored[1].id]
            attempt = leases.start_attempt(webhooks.TABLE, session, stored[2].id, lease=lease, max_attempts=6)
            assert attempt.outcome is AttemptOutcome.GO
            leases.schedule_retry(
                webhooks.TABLE,
                session,
                stored[2].id,
                error="E: x",
                delay=timedelta(minutes=1),
                lease=lease,
                refund=False,
            )
            leases.start_attempt(webhooks.TABLE, session, stored[3].id, lease=lease, max_attempts=6)
            webhooks.mark_processed(session, stored[3].id)
            leases.give_up(webhooks.TABLE, session, stored[1].id, error="E: gone")
            session.execute(text("UPDATE webhook_events SET retry_count = 4 WHERE id = :id"), {"id": stored[1].id})
        with lite() as session:
            figures = webhooks.stats(session)
            monitored = sorted(tuple(r) for r in session.execute(text(MONITORING_QUERY)))
        with lite.begin() as session:
            session.execute(text("INSERT INTO orders (id, total, currency) VALUES ('MN-lite', 10.5, 'ETB')"))
    finally:
        get_engine(url).dispose()
    assert figures == {
        "by_status": {"pending": 1, "processed": 1, "failed": 2},
        "awaiting_retry": 1,
        "archived": 1,
        "average_retries": 1.0,
        "due_now": 1,
    }
    assert monitored == [("failed", 1, 0.0), ("pending", 1, 0.0), ("processed", 1, 0.0)]


def apply_stored(lite: sessionmaker[Session], event_id: str, kind: str, order_id: str = "MN-pay") -> payments.Applied:
    """Store an event of ``kind`` for the order and apply it, as the intake and the actor do."""
    lease = timedelta(minutes=5)
    body = {"event_id": event_id, "type": kind, "order_id": order_id, "amount": "10.50", "currency": "ETB"}
    with lite.begin() as session:
        stored = webhooks.store(
            session, provider="cbe", event_id=event_id, event_type=kind, payload=body, order_id=order_id, lease=lease
        )
    with lite.begin() as session:
        row = webhooks.get(session, stored.id)
        assert row is not None
        return payments.apply_event(session, webhooks.EventData.from_row(row), email_lease=lease)


def queued_templates(lite: sessionmaker[Session]) -> list[str]:
    with lite() as session:
        return list(session.scalars(select(EmailQueue.template).order_by(EmailQueue.id)))


def test_a_second_payment_failure_of_an_order_sends_no_second_email(lite: sessionmaker[Session]) -> None:
    """The customer heard that the payment failed; another failure (a retry, a second card) tells nothing new."""
    with lite.begin() as session:
        session.execute(
            text("INSERT INTO orders (id, total, currency, customer_email) VALUES ('MN-pay', 10.5, 'ETB', 'a@b.et')")
        )

    first = apply_stored(lite, "evt-failed-1", "payment.failed")
    second = apply_stored(lite, "evt-failed-2", "payment.failed")
    again = apply_stored(lite, "evt-failed-2", "payment.failed")  # the same event once more: stored once, applied once

    assert first.applied and first.email_id is not None
    assert second == payments.Applied(applied=True, email_id=None)
    assert again == payments.Applied(applied=False)
    assert queued_templates(lite) == ["payment_failed"]
    with lite() as session:
        statuses = session.execute(text("SELECT status, payment_status FROM orders WHERE id = 'MN-pay'")).one()
    assert tuple(statuses) == ("failed", "failed")

    paid = apply_stored(lite, "evt-paid", "payment.succeeded")  # a later success is news again
    assert paid.email_id is not None and queued_templates(lite) == ["payment_failed", "order_confirmation"]
