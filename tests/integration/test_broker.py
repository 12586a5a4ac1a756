"""RabbitMQ behaviour the promise depends on: publisher confirms and long delays."""

from __future__ import annotations

import time
from collections.abc import Iterator

import dramatiq
import pytest
from dramatiq import Message
from sqlalchemy.orm import Session, sessionmaker

from actors.fan_out import enqueue_due_emails
from bench.harness import services
from pipeline.core.runtime import Runtime
from pipeline.middleware.long_delays import send_later
from storage import emails
from tests.support.helpers import insert_email, unique_address, wait_until


@pytest.fixture
def hop_recorder(runtime: Runtime) -> Iterator[tuple[dramatiq.Actor, list[tuple[str, float]]]]:  # type: ignore[type-arg]
    """A throw-away actor recording when, and as which message, it ran."""
    calls: list[tuple[str, float]] = []

    def record_hop(label: str) -> None:
        calls.append((label, time.time()))

    actor = dramatiq.actor(record_hop, queue_name="hops", broker=runtime.broker)
    runtime.broker.declare_queue("hops", ensure=True)
    yield actor, calls


def test_long_delay_fires_once_and_on_time_in_hops(
    runtime: Runtime, hop_recorder: tuple[dramatiq.Actor, list[tuple[str, float]]]  # type: ignore[type-arg]
) -> None:
    actor, calls = hop_recorder
    message: Message = actor.message("late")  # type: ignore[type-arg]
    sent_at = time.time()

    send_later(runtime.broker, message, delay_ms=2000, max_hold_ms=300)
    wait_until(lambda: calls, timeout=10, what="the delayed message")
    ran_at = calls[0][1]
    actor.send("marker")  # anything still queued would run before the marker is seen twice
    wait_until(lambda: any(label == "marker" for label, _ in calls), what="the marker")

    assert [label for label, _ in calls].count("late") == 1
    assert 2.0 <= ran_at - sent_at <= 3.0


def test_enqueue_refused_by_rabbitmq_raises_and_hands_the_claim_back(
    runtime: Runtime, test_services: services.RunServices, sessions: sessionmaker[Session]
) -> None:
    with sessions.begin() as session:
        email_id = insert_email(session, unique_address("refused-publish"))
    services.reject_publishes(test_services, "emails")
    try:
        with pytest.raises(Exception) as raised:
            enqueue_due_emails()
    finally:
        services.accept_publishes(test_services, "emails")

    assert "Nack" in type(raised.value).__name__ or "Nack" in repr(raised.value)
    with sessions() as session:
        row = emails.get(session, email_id)
        assert row is not None and row.status == "pending" and row.locked_until is None
