"""Payment webhook processing on the real PostgreSQL and RabbitMQ: retries, archive, the tick.

TEST_ENVIRONMENT makes the retry schedule 0.12, 0.24, 0.48, 0.72, 0.72 s: the
shop's 1, 2, 4, 8, 16 minutes scaled down, with both the cap and the broker
hops (BROKER_MAX_HOLD_MINUTES = 0.6 s) in play. Dramatiq's worker looks at its
delayed messages about once a second, so a retry runs up to ~1 s after it is due
(never before); the delays themselves are checked exactly where they are decided.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Optional

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from periodiq import cron
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from actors.webhooks import enqueue_due_webhooks, process_webhook_event
from bench.harness import services
from pipeline.bootstrap import periodic_actors
from pipeline.core.runtime import Runtime
from storage import leases, webhooks
from storage.clock import utcnow
from storage.database import get_engine
from storage.models import Base, WebhookEvent
from tests.support.helpers import wait_until
from tests.support.webhook_support import (
    MONITORING_QUERY,
    SCHEDULE_MS,
    dead_letters_of,
    drain_tick,
    event_row,
    new_id,
    order,
    payment,
    post,
    store_event,
    store_lost,
    wait_for_event,
)


@dataclass
class Trace:
    """What the worker did with each event, by row id, seen from inside the storage calls."""

    #: (when, outcome) of each attempt start.
    attempts: dict[int, list[tuple[float, str]]] = field(default_factory=lambda: defaultdict(list))
    #: (when, delay asked for, next_retry_at - now as stored) of each scheduled retry.
    retries: dict[int, list[tuple[float, timedelta, timedelta]]] = field(default_factory=lambda: defaultdict(list))
    #: (delay ms, not_before option) of each message put into RabbitMQ with a delay.
    delayed: dict[int, list[tuple[int, Any]]] = field(default_factory=lambda: defaultdict(list))


@pytest.fixture
def trace(monkeypatch: pytest.MonkeyPatch, runtime: Runtime) -> Trace:
    """Record attempt starts, scheduled retries and delayed sends of every event while the test runs."""
    recorded = Trace()
    start_attempt, schedule_retry = leases.start_attempt, leases.schedule_retry
    enqueue = runtime.broker.enqueue

    def recording_enqueue(message: Any, *, delay: Optional[int] = None) -> Any:
        if message.actor_name == "process_webhook_event" and delay is not None:
            recorded.delayed[int(message.args[0])].append((delay, message.options.get("not_before")))
        return enqueue(message, delay=delay)

    def recording_start(table: Any, session: Session, row_id: int, **kwargs: Any) -> leases.Attempt[Any]:
        attempt = start_attempt(table, session, row_id, **kwargs)
        if table is webhooks.TABLE:
            recorded.attempts[row_id].append((time.monotonic(), attempt.outcome.value))
        return attempt

    def recording_retry(table: Any, session: Session, row_id: int, **kwargs: Any) -> bool:
        failed_at = time.monotonic()
        changed = schedule_retry(table, session, row_id, **kwargs)
        if table is not webhooks.TABLE:
            return changed
        row = session.get(WebhookEvent, row_id, populate_existing=True)
        assert row is not None and row.next_retry_at is not None and row.updated_at is not None
        recorded.retries[row_id].append((failed_at, kwargs["delay"], row.next_retry_at - row.updated_at))
        return changed

    monkeypatch.setattr(leases, "start_attempt", recording_start)
    monkeypatch.setattr(leases, "schedule_retry", recording_retry)
    monkeypatch.setattr(runtime.broker, "enqueue", recording_enqueue)
    return recorded


# --- retries ----------------------------------------------------------------------------


def test_an_order_that_never_appears_is_archived_after_1_plus_5_attempts_on_schedule(
    intake: str, sessions: sessionmaker[Session], trace: Trace
) -> None:
    body = payment(new_id("MN-never"))
    row_id = post(intake, body).json()["id"]

    row = wait_for_event(sessions, "generic", body["event_id"], lambda r: r.archived, what="the event archived")
    (dead,) = wait_until(lambda: dead_letters_of(sessions, row_id), what="the dead letter")

    attempts, retries = trace.attempts[row_id], trace.retries[row_id]
    assert [outcome for _, outcome in attempts] == ["go"] * 6, attempts
    assert [int(delay.total_seconds() * 1000) for _, delay, _ in retries] == SCHEDULE_MS
    assert all(stored == delay for _, delay, stored in retries)  # next_retry_at = failure + delay, exactly
    # RabbitMQ never holds a retry longer than BROKER_MAX_HOLD_MINUTES (0.6 s here): longer ones hop.
    hops = trace.delayed[row_id]
    assert all(delay <= 600 for delay, _ in hops), hops
    assert [delay for delay, not_before in hops if not_before is None] == SCHEDULE_MS[:3], hops
    assert len({not_before for _, not_before in hops if not_before is not None}) == 2, hops
    starts = [at for at, _ in attempts]
    waited = [start - failed for (failed, _, _), start in zip(retries, starts[1:], strict=True)]
    for gap, expected in zip(waited, SCHEDULE_MS, strict=True):  # never early; late by the worker's ~1 s poll at most
        assert expected / 1000 - 0.01 <= gap <= expected / 1000 + 1.3, (waited, SCHEDULE_MS)
    offsets = ", +".join(f"{at - starts[0]:.3f}" for at in starts)
    print(f"\nattempts at +{offsets} s; waited after each failure {[round(w, 3) for w in waited]} s")
    assert (row.status, row.retry_count, row.attempts, row.next_retry_at) == ("failed", 5, 6, None)
    assert "OrderNotFound" in (row.last_error or "") and body["order_id"] in (row.last_error or "")
    assert dead.queue == "webhooks.XQ" and dead.actor == "process_webhook_event" and dead.retries == 5
    assert dead.error == row.last_error


def test_an_order_committed_after_the_first_failure_succeeds_on_the_next_retry(
    intake: str, sessions: sessionmaker[Session], trace: Trace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The webhook races the checkout: the order commits just as the first failure is recorded."""
    order_id = new_id("MN-late")
    body = payment(order_id)
    recording_retry = leases.schedule_retry

    def checkout_commits_now(table: Any, session: Session, row_id: int, **kwargs: Any) -> bool:
        if table is webhooks.TABLE and row_id == stored.id and not trace.retries[row_id]:
            with sessions.begin() as checkout:
                checkout.execute(
                    text("INSERT INTO orders (id, total, currency) VALUES (:id, 250.00, 'ETB')"), {"id": order_id}
                )
        return recording_retry(table, session, row_id, **kwargs)

    monkeypatch.setattr(leases, "schedule_retry", checkout_commits_now)
    with sessions.begin() as session:  # stored as the intake does, so the trace knows the row before it runs
        stored = store_event(session, body)
    process_webhook_event.send(stored.id)

    row = wait_for_event(sessions, "generic", body["event_id"], lambda r: r.status == "processed", what="processed")
    assert (row.retry_count, row.attempts, row.archived) == (1, 2, False)
    assert "OrderNotFound" in (row.last_error or "")  # why it needed the retry
    assert [int(d.total_seconds() * 1000) for _, d, _ in trace.retries[stored.id]] == SCHEDULE_MS[:1]
    assert [outcome for _, outcome in trace.attempts[stored.id]] == ["go", "go"]
    assert order(sessions, order_id)["payment_status"] == "paid"
    assert post(intake, body).json() == {"received": True, "id": stored.id, "duplicate": True}


def test_while_retrying_the_row_says_failed_with_its_next_time(
    sessions: sessionmaker[Session], runtime: Runtime
) -> None:
    body = payment(new_id("MN-missing"))
    with sessions.begin() as session:
        stored = store_event(session, body)
    # This message's own schedule (options resolve message → actor → default): 1 minute.
    process_webhook_event.send_with_options(args=(stored.id,), retry_delay=60_000, max_retry_delay=60_000)

    row = wait_for_event(sessions, "generic", body["event_id"], lambda r: r.status == "failed", what="first failure")
    assert (row.retry_count, row.attempts, row.archived) == (0, 1, False)
    assert row.next_retry_at is not None and row.updated_at is not None
    assert row.next_retry_at - row.updated_at == timedelta(minutes=1)
    with sessions() as session:
        monitored = {status: (count, avg) for status, count, avg in session.execute(text(MONITORING_QUERY))}
    assert monitored["failed"][0] >= 1
    process_webhook_event.fn(stored.id)  # a stray early message must not jump the schedule
    assert event_row(sessions, "generic", body["event_id"]).attempts == 1  # type: ignore[union-attr]
    with sessions.begin() as session:  # leave nothing behind for the tick tests
        leases.give_up(webhooks.TABLE, session, stored.id, error="test cleanup")


# --- the tick ---------------------------------------------------------------------------


def test_the_tick_re_enqueues_lost_events_at_most_batch_size_a_run(
    sessions: sessionmaker[Session], runtime: Runtime
) -> None:
    assert runtime.settings.webhook_batch_size == 10
    (tick,) = [actor for actor in periodic_actors(runtime.broker) if actor.actor_name == "retry_webhooks"]
    assert tick.queue_name == "ticks" and tick.options["periodic"].astuple() == cron("*/10 * * * *").astuple()
    drain_tick()
    ids = store_lost(sessions, 12)

    assert [enqueue_due_webhooks(), enqueue_due_webhooks(), enqueue_due_webhooks()] == [10, 2, 0]

    def processed() -> bool:
        with sessions() as session:
            rows = [webhooks.get(session, row_id) for row_id in ids]
            return all(r is not None and r.status == "processed" and r.attempts == 1 for r in rows)

    wait_until(processed, what="all 12 events processed once")


def test_the_tick_takes_only_events_nobody_handles_and_two_tickers_never_share(
    sessions: sessionmaker[Session], runtime: Runtime
) -> None:
    drain_tick()
    lost = store_lost(sessions, 6)
    waiting, done = store_lost(sessions, 2)
    now = utcnow()
    with sessions.begin() as session:
        session.execute(  # a retry message waits in RabbitMQ: its lease runs past next_retry_at
            text("UPDATE webhook_events SET status = 'failed', next_retry_at = :t, locked_until = :l WHERE id = :id"),
            {"t": now - timedelta(seconds=1), "l": now + timedelta(minutes=5), "id": waiting},
        )
        session.execute(text("UPDATE webhook_events SET status = 'processed' WHERE id = :id"), {"id": done})
        session.execute(  # failed, due, and its retry message was lost
            text("UPDATE webhook_events SET status = 'failed', next_retry_at = :t WHERE id = :id"),
            {"t": now - timedelta(seconds=1), "id": lost[0]},
        )

    lease = timedelta(minutes=5)
    first, second = sessions(), sessions()
    try:
        with first.begin(), second.begin():
            mine = leases.claim_due(webhooks.TABLE, first, limit=4, lease=lease)
            theirs = leases.claim_due(webhooks.TABLE, second, limit=10, lease=lease)  # while the first holds its rows
    finally:
        first.close()
        second.close()
    with sessions.begin() as session:
        again = leases.claim_due(webhooks.TABLE, session, limit=10, lease=lease)

    assert len(mine) == 4 and len(theirs) == 2 and not set(mine) & set(theirs)
    assert sorted(mine + theirs) == sorted(lost) and again == []
    with sessions.begin() as session:  # leave nothing behind
        for row_id in lost + [waiting]:
            leases.give_up(webhooks.TABLE, session, row_id, error="test cleanup")


# --- schema -----------------------------------------------------------------------------


def test_migrations_match_the_models(test_services: services.RunServices) -> None:
    def ours(item: Any, name: Optional[str], type_: str, reflected: bool, compare_to: Any) -> bool:
        table = item if type_ == "table" else getattr(item, "table", None)
        return table is None or table.name in {"orders", "webhook_events"}

    with get_engine(test_services.database_url).connect() as connection:
        context = MigrationContext.configure(connection, opts={"include_object": ours, "compare_type": True})
        assert compare_metadata(context, Base.metadata) == []
