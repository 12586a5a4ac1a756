"""Dead letters: replay and retention, on the run's RabbitMQ and PostgreSQL (inspection and purge: acceptance)."""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from datetime import timedelta
from typing import Any, Optional

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from dramatiq import Message
from dramatiq.errors import ConnectionClosed
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from actors.fan_out import enqueue_due_emails
from actors.maintenance import prune_dead_letters
from bench.harness import services
from bench.harness.fake_resend import FakeResend
from pipeline.core.runtime import Runtime
from pipeline.ops.dlq import ReplayOutcome, ReplayStatus
from storage import dead_letters, inventory
from storage.clock import utcnow
from storage.database import get_engine
from storage.models import Base
from tests.support.dlq_support import add_dead_letter, dead_email, email, letter, letters_for, replay
from tests.support.helpers import wait_until
from tests.support.webhook_support import new_id

pytestmark = pytest.mark.usefixtures("runtime")


# --- replay -------------------------------------------------------------------------------------


def test_two_operators_replaying_at_once_send_the_email_once(
    runtime: Runtime, sessions: sessionmaker[Session], fake_resend: FakeResend
) -> None:
    email_id, address, dead = dead_email(sessions, fake_resend, "raced")
    assert email(sessions, email_id).status == "failed"
    fake_resend.clear_failures()  # the provider is healthy again

    start = threading.Barrier(6)
    outcomes: list[ReplayOutcome] = []

    def operator() -> None:
        start.wait()
        outcomes.append(replay(runtime, dead.id))

    threads = [threading.Thread(target=operator) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=20)
    wait_until(lambda: email(sessions, email_id).status == "sent", what="the replayed email sent")
    again = replay(runtime, dead.id)
    enqueue_due_emails()

    assert Counter(o.status for o in outcomes) == {ReplayStatus.REPLAYED: 1, ReplayStatus.ALREADY_REPLAYED: 5}
    assert again.status is ReplayStatus.ALREADY_REPLAYED and "nothing sent" in again.detail
    assert len(fake_resend.deliveries_to(address)) == 1
    row = email(sessions, email_id)
    assert (row.attempts, row.retry_count, row.last_error) == (1, 0, None)  # a fresh budget
    stamped = letter(sessions, dead.id)
    assert stamped is not None and stamped.replayed_at is not None
    (replayed,) = [o for o in outcomes if o.status is ReplayStatus.REPLAYED]
    assert replayed.replay_of == dead.message_id and replayed.message_id not in (None, dead.message_id)
    assert f"email {email_id} (queued) back in play" in replayed.detail


def test_an_email_that_succeeded_since_is_not_sent_again(
    runtime: Runtime, sessions: sessionmaker[Session], fake_resend: FakeResend
) -> None:
    email_id, address, dead = dead_email(sessions, fake_resend, "fixed-by-hand")
    fake_resend.clear_failures()
    with sessions.begin() as session:  # the host sent it some other way and said so
        session.execute(text("UPDATE email_queue SET status = 'sent' WHERE id = :id"), {"id": email_id})

    outcome = replay(runtime, dead.id)
    enqueue_due_emails()

    assert outcome.status is ReplayStatus.ITEM_NOT_FAILED
    assert outcome.detail == f"email {email_id} (sent) is not failed any more: nothing sent"
    assert fake_resend.attempts_for(address) == 1 and fake_resend.deliveries_to(address) == []
    stamped = letter(sessions, dead.id)
    assert stamped is not None and stamped.replayed_at is not None
    assert replay(runtime, dead.id).status is ReplayStatus.ALREADY_REPLAYED


def test_a_dead_letter_whose_item_is_gone_is_skipped_unstamped(
    runtime: Runtime, sessions: sessionmaker[Session]
) -> None:
    orphan = add_dead_letter(sessions, actor="send_email", args=[10**9 + 7])

    outcome = replay(runtime, orphan)

    assert (outcome.status, outcome.detail) == (
        ReplayStatus.NOT_REPLAYABLE,
        "its item no longer exists: nothing to replay",
    )
    assert (stored := letter(sessions, orphan)) is not None and stored.replayed_at is None


def test_a_replay_that_dies_again_is_a_dead_letter_of_its_own(
    runtime: Runtime, sessions: sessionmaker[Session], fake_resend: FakeResend
) -> None:
    email_id, address, first = dead_email(sessions, fake_resend, "still-refused")

    assert replay(runtime, first.id).status is ReplayStatus.REPLAYED  # the cause is not fixed yet
    _, second = wait_until(lambda: found if len(found := letters_for(sessions, email_id)) == 2 else None)

    assert second.message_id != first.message_id
    assert (second.options or {}).get("replay_of") == first.message_id
    assert "retries" not in (first.options or {}) or second.retries == 0
    assert email(sessions, email_id).status == "failed" and email(sessions, email_id).attempts == 1
    assert fake_resend.attempts_for(address) == 2
    fake_resend.clear_failures()
    assert replay(runtime, first.id).status is ReplayStatus.ALREADY_REPLAYED
    assert replay(runtime, second.id).status is ReplayStatus.REPLAYED
    wait_until(lambda: email(sessions, email_id).status == "sent", what="the second replay sent")
    assert len(fake_resend.deliveries_to(address)) == 1


def test_a_dry_run_reports_and_changes_nothing(
    runtime: Runtime, sessions: sessionmaker[Session], fake_resend: FakeResend
) -> None:
    email_id, address, dead = dead_email(sessions, fake_resend, "dry")
    fake_resend.clear_failures()

    outcome = replay(runtime, dead.id, dry_run=True)

    assert outcome.status is ReplayStatus.WOULD_REPLAY
    assert outcome.detail.startswith(f"would send send_email({email_id}) as message ")
    stored = letter(sessions, dead.id)
    assert stored is not None and stored.replayed_at is None
    assert email(sessions, email_id).status == "failed"
    assert replay(runtime, dead.id).status is ReplayStatus.REPLAYED  # and a real one still works
    wait_until(lambda: len(fake_resend.deliveries_to(address)) == 1, what="the real replay sent")


def test_a_replay_rabbitmq_refuses_is_sent_by_the_fan_out(
    runtime: Runtime, sessions: sessionmaker[Session], fake_resend: FakeResend, monkeypatch: pytest.MonkeyPatch
) -> None:
    email_id, address, dead = dead_email(sessions, fake_resend, "refused-enqueue")
    fake_resend.clear_failures()
    tick = add_dead_letter(sessions, actor="cleanup_reservations", args=[], queue="ticks.XQ")

    def refuse(message: Message, *, delay: Optional[int] = None) -> Message:  # type: ignore[type-arg]
        raise ConnectionClosed(RuntimeError("RabbitMQ did not confirm the message"))

    monkeypatch.setattr(runtime.broker, "enqueue", refuse)
    outcome, tick_outcome = replay(runtime, dead.id), replay(runtime, tick)
    monkeypatch.undo()

    assert outcome.status is tick_outcome.status is ReplayStatus.ENQUEUE_FAILED
    assert "periodic re-enqueue will send it" in outcome.detail
    row = email(sessions, email_id)
    assert row.status == "queued" and row.locked_until is not None and row.locked_until > utcnow()
    assert (stamped := letter(sessions, dead.id)) is not None and stamped.replayed_at is not None
    assert (unstamped := letter(sessions, tick)) is not None and unstamped.replayed_at is None
    with sessions.begin() as session:  # the lease runs out
        session.execute(text("UPDATE email_queue SET locked_until = now() WHERE id = :id"), {"id": email_id})
    enqueue_due_emails()
    wait_until(lambda: email(sessions, email_id).status == "sent", what="the fan-out sending the revived email")
    assert len(fake_resend.deliveries_to(address)) == 1


def test_a_tick_is_replayed_as_sent_without_its_spent_options(
    runtime: Runtime, sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    with sessions.begin() as session:
        product = inventory.create_product(session, sku=new_id("SKU"), name="Mesob", stock=5)
        reservation = inventory.reserve(session, product, 2, ttl_minutes=15)
        session.execute(
            text("UPDATE inventory_reservations SET expires_at = now() - interval '1 minute' WHERE id = :id"),
            {"id": reservation},
        )
    spent = {"scheduled_at": "2020-01-01T00:00:00+00:00", "retries": 0, "traceback": "Traceback ...", "eta": 1}
    tick = add_dead_letter(sessions, actor="cleanup_reservations", args=[], queue="ticks.XQ", options=spent)
    sent: list[Message] = []  # type: ignore[type-arg]
    enqueue = runtime.broker.enqueue

    def recording(message: Message, *, delay: Optional[int] = None) -> Message:  # type: ignore[type-arg]
        sent.append(message)
        return enqueue(message, delay=delay)

    monkeypatch.setattr(runtime.broker, "enqueue", recording)
    outcome = replay(runtime, tick)

    def reservation_status() -> str:
        with sessions() as session:
            statement = text("SELECT status FROM inventory_reservations WHERE id = :id")
            return str(session.scalar(statement, {"id": reservation}))

    wait_until(lambda: reservation_status() == "expired", what="the replayed cleanup to run")
    assert outcome.status is ReplayStatus.REPLAYED
    (message,) = [m for m in sent if m.actor_name == "cleanup_reservations"]
    stored = letter(sessions, tick)
    assert stored is not None
    assert message.queue_name == "ticks" and message.options == {"replay_of": stored.message_id}


# --- retention ----------------------------------------------------------------------------------


def test_the_prune_tick_deletes_what_is_older_than_the_retention(
    runtime: Runtime, sessions: sessionmaker[Session]
) -> None:
    assert runtime.settings.dead_letter_retention_days == 180
    now = utcnow()
    expired = add_dead_letter(sessions, actor="send_email", args=[10**9], dead_at=now - timedelta(days=181))
    kept = add_dead_letter(sessions, actor="send_email", args=[10**9], dead_at=now - timedelta(days=179))
    stale_id = f"stale-{uuid.uuid4()}"
    with sessions.begin() as session:
        dead_letters.record_final_error(session, message_id=stale_id, error="E", traceback=None, retries=0)
        session.execute(
            text("UPDATE final_errors SET failed_at = now() - interval '200 days' WHERE message_id = :id"),
            {"id": stale_id},
        )

    def stale_errors() -> int:
        with sessions() as session:
            query = text("SELECT COUNT(*) FROM final_errors WHERE message_id = :id")
            return int(session.scalar(query, {"id": stale_id}))

    prune_dead_letters.send()
    # The prune commits the dead letters, then the final errors, in two transactions: wait for both.
    wait_until(lambda: letter(sessions, expired) is None and stale_errors() == 0, what="the prune tick")

    assert letter(sessions, kept) is not None
    assert runtime.broker.get_actor("prune_dead_letters").options["periodic"] is not None


# --- schema -------------------------------------------------------------------------------------


def test_migrations_match_the_models(test_services: services.RunServices) -> None:
    def ours(item: Any, name: Optional[str], type_: str, reflected: bool, compare_to: Any) -> bool:
        table = item if type_ == "table" else getattr(item, "table", None)
        return table is None or table.name in {"dead_letters", "alert_state"}

    with get_engine(test_services.database_url).connect() as connection:
        context = MigrationContext.configure(connection, opts={"include_object": ours, "compare_type": True})
        assert compare_metadata(context, Base.metadata) == []
