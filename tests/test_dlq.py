"""Dead letters: replay, inspection, purge and retention, on the run's RabbitMQ and PostgreSQL."""

from __future__ import annotations

import json
import threading
import uuid
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any, Optional

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from dramatiq import Message
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from actors.emails import enqueue_due_emails, send_email
from actors.maintenance import prune_dead_letters
from pipeline import dlq
from pipeline.core.errors import EnqueueFailed
from pipeline.core.runtime import Runtime
from pipeline.dlq import ReplayOutcome, ReplayStatus
from storage import alerts, dead_letters, emails, inventory, migrate, webhooks
from storage.clock import utcnow
from storage.database import get_engine, get_sessionmaker
from storage.models import Base, DeadLetter, EmailQueue
from tests import services
from tests.dlq_support import add_dead_letter, dlq_json
from tests.fake_resend import FakeResend
from tests.helpers import insert_email, unique_address, wait_until
from tests.processes import run_cli
from tests.webhook_support import new_id, payment

pytestmark = pytest.mark.usefixtures("runtime")


def letters_for(sessions: sessionmaker[Session], email_id: int) -> list[DeadLetter]:
    with sessions() as session:
        rows = session.query(DeadLetter).filter(DeadLetter.actor == "send_email").order_by(DeadLetter.id).all()
        return [row for row in rows if row.args == [email_id]]


def email(sessions: sessionmaker[Session], email_id: int) -> EmailQueue:
    with sessions() as session:
        row = emails.get(session, email_id)
        assert row is not None
        return row


def letter(sessions: sessionmaker[Session], dead_letter_id: int) -> Optional[DeadLetter]:
    with sessions() as session:
        return dead_letters.get(session, dead_letter_id)


def dead_email(sessions: sessionmaker[Session], fake_resend: FakeResend, tag: str) -> tuple[int, str, DeadLetter]:
    """An email the provider refused (422): failed, and its message in ``dead_letters``."""
    address = unique_address(tag)
    fake_resend.fail_recipient(address, status=422, name="validation_error", message="Invalid `to` field.")
    with sessions.begin() as session:
        email_id = insert_email(session, address)
    send_email.send(email_id)
    (dead,) = wait_until(lambda: letters_for(sessions, email_id), what=f"the dead letter of email {email_id}")
    return email_id, address, dead


def replay(runtime: Runtime, dead_letter_id: int, *, dry_run: bool = False) -> ReplayOutcome:
    return dlq.replay(runtime.broker, runtime.sessions, dead_letter_id, dry_run=dry_run)


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
        raise EnqueueFailed("RabbitMQ did not confirm the message")

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
        reservation = inventory.reserve(product, 2, session=session)
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


def test_an_archived_webhook_event_is_replayed_once_its_order_exists(
    runtime: Runtime, sessions: sessionmaker[Session], environment: dict[str, str], tmp_path: Path
) -> None:
    order_id = new_id("MN-late")
    body = payment(order_id)
    with sessions.begin() as session:
        row_id = webhooks.store(
            session,
            provider="generic",
            event_id=body["event_id"],
            event_type=body["type"],
            payload=body,
            order_id=order_id,
            lease=timedelta(minutes=5),
        ).id
        webhooks.archive(session, row_id, error=f"OrderNotFound: order {order_id} does not exist (yet)")
    dead = add_dead_letter(
        sessions, actor="process_webhook_event", args=[row_id], queue="webhooks.XQ", error="OrderNotFound: ..."
    )
    shown_before = dlq_json(environment, tmp_path, "show", str(dead))
    with sessions.begin() as session:
        session.execute(text("INSERT INTO orders (id, total, currency) VALUES (:id, 250.00, 'ETB')"), {"id": order_id})

    outcome = replay(runtime, dead)

    def event() -> Any:
        with sessions() as session:
            return webhooks.get(session, row_id)

    processed = wait_until(lambda: e if (e := event()).status == "processed" else None, what="the event processed")
    assert outcome.status is ReplayStatus.REPLAYED, outcome
    assert processed.archived is False and processed.attempts == 1 and processed.retry_count == 0
    with sessions() as session:
        assert session.scalar(text("SELECT payment_status FROM orders WHERE id = :id"), {"id": order_id}) == "paid"
    assert shown_before["item"]["kind"] == "webhook event" and shown_before["item"]["status"] == "failed, archived"
    assert replay(runtime, dead).status is ReplayStatus.ALREADY_REPLAYED


# --- inspection ---------------------------------------------------------------------------------


def test_list_filters_and_aligns_and_json_has_the_contract_keys(
    sessions: sessionmaker[Session], environment: dict[str, str], tmp_path: Path
) -> None:
    queue = f"test-{uuid.uuid4().hex[:8]}.XQ"
    now = utcnow()
    old = add_dead_letter(sessions, actor="send_email", args=[10**9], queue=queue, dead_at=now - timedelta(hours=3))
    recent = add_dead_letter(
        sessions, actor="send_email", args=[10**9 + 1], queue=queue, dead_at=now - timedelta(minutes=30)
    )
    raw = add_dead_letter(sessions, actor=None, args=None, queue=queue, raw_body="garbage", error="DecodeError: x")

    everything = dlq_json(environment, tmp_path, "list", "--queue", queue)
    since = dlq_json(environment, tmp_path, "list", "--queue", queue, "--since", "1h")
    four_hours_ago = (now - timedelta(hours=4)).isoformat()
    since_iso = dlq_json(environment, tmp_path, "list", "--queue", queue, "--since", four_hours_ago)
    by_actor = dlq_json(environment, tmp_path, "list", "--queue", queue, "--actor", "send_email")
    limited = run_cli("dlq", "list", "--queue", queue, "--limit", "1", "--json", env=environment, cwd=tmp_path)
    table = run_cli("dlq", "list", "--queue", queue, env=environment, cwd=tmp_path)
    bad = run_cli("dlq", "list", "--since", "yesterday-ish", env=environment, cwd=tmp_path)

    assert [item["id"] for item in everything] == [raw, recent, old]  # newest first
    contract = {"id", "queue", "actor", "message_id", "error", "retries", "dead_at", "replayed_at"}
    assert all(contract <= set(item) for item in everything)
    assert everything[0]["raw"] is True and everything[0]["actor"] is None and everything[1]["args"] == [10**9 + 1]
    assert [item["id"] for item in since] == [raw, recent]
    assert [item["id"] for item in since_iso] == [raw, recent, old]
    assert [item["id"] for item in by_actor] == [recent, old]
    assert [item["id"] for item in json.loads(limited.stdout)] == [raw] and "1 of 3 shown" in limited.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split()[:3] == ["ID", "DEAD", "AT"] and len(lines) == 4, table.stdout
    assert len({line.index(queue) for line in lines[1:]}) == 1 and lines[0].index("QUEUE") == lines[1].index(queue)
    assert "(undecodable)" in lines[1] and "DecodeError: x" in lines[1]
    assert bad.returncode == 2 and "neither a duration" in bad.stderr


def test_show_gives_the_error_traceback_and_the_item_now(
    sessions: sessionmaker[Session], fake_resend: FakeResend, environment: dict[str, str], tmp_path: Path
) -> None:
    email_id, address, dead = dead_email(sessions, fake_resend, "shown")

    shown = run_cli("dlq", "show", str(dead.id), env=environment, cwd=tmp_path)
    by_message_id = dlq_json(environment, tmp_path, "show", dead.message_id)
    missing = run_cli("dlq", "show", "987654321", env=environment, cwd=tmp_path)

    assert shown.returncode == 0, shown.stderr
    assert f"call:        send_email({email_id})" in shown.stdout
    assert "error:       PermanentError: Resend 422 validation_error: Invalid `to` field." in shown.stdout
    assert f"item:        email {email_id} is failed" in shown.stdout and f"recipient: {address}" in shown.stdout
    assert "Traceback:" in shown.stdout and "PermanentError" in shown.stdout.split("Traceback:")[1]
    assert by_message_id["id"] == dead.id and by_message_id["item"]["status"] == "failed"
    assert by_message_id["traceback"] and by_message_id["replayed_at"] is None
    assert missing.returncode == 1 and "No dead letter 987654321" in missing.stderr


def test_stats_count_by_queue_and_actor(
    sessions: sessionmaker[Session], environment: dict[str, str], tmp_path: Path
) -> None:
    queue = f"test-{uuid.uuid4().hex[:8]}.XQ"
    now = utcnow()
    for hours in (5, 1):
        add_dead_letter(sessions, actor="send_email", args=[10**9], queue=queue, dead_at=now - timedelta(hours=hours))
    add_dead_letter(sessions, actor=None, args=None, queue=queue, raw_body="?", dead_at=now - timedelta(hours=2))

    figures = dlq_json(environment, tmp_path, "stats")
    human = run_cli("dlq", "stats", env=environment, cwd=tmp_path)

    mine = {(g["actor"], g["count"], g["unreplayed"]) for g in figures["groups"] if g["queue"] == queue}
    assert mine == {("send_email", 2, 2), (None, 1, 1)}
    assert figures["by_queue"][queue] == 3 and figures["total"] >= 3
    assert figures["oldest"] <= (now - timedelta(hours=5)).isoformat() <= figures["newest"]
    (send_group,) = [g for g in figures["groups"] if g["queue"] == queue and g["actor"] == "send_email"]
    assert send_group["oldest"] < send_group["newest"]
    assert human.returncode == 0 and human.stdout.startswith("Dead letters: ")
    assert any(line.split()[:4] == [queue, "send_email", "2", "2"] for line in human.stdout.splitlines())


# --- purge and retention ------------------------------------------------------------------------


def test_purge_by_id_and_by_age(sessions: sessionmaker[Session], environment: dict[str, str], tmp_path: Path) -> None:
    now = utcnow()
    old = [add_dead_letter(sessions, actor="send_email", args=[10**9], dead_at=now - timedelta(days=40)) for _ in "ab"]
    young = add_dead_letter(sessions, actor="send_email", args=[10**9], dead_at=now - timedelta(days=10))
    chosen = [add_dead_letter(sessions, actor="send_email", args=[10**9]) for _ in "ab"]

    with sessions() as session:  # other tests may have left old ones too
        statement = text("SELECT COUNT(*) FROM dead_letters WHERE dead_at < now() - interval '30 days'")
        older = int(session.scalar(statement) or 0)
    by_age = run_cli("dlq", "purge", "--older-than", "30d", env=environment, cwd=tmp_path)
    by_id = run_cli("dlq", "purge", *map(str, chosen), "987654321", env=environment, cwd=tmp_path)
    neither = run_cli("dlq", "purge", env=environment, cwd=tmp_path)
    both = run_cli("dlq", "purge", "1", "--older-than", "30d", env=environment, cwd=tmp_path)
    nonsense = run_cli("dlq", "purge", "--older-than", "a month", env=environment, cwd=tmp_path)

    assert older >= 2 and by_age.stdout.startswith(f"Purged {older} dead letters that died before "), by_age
    assert by_id.stdout.strip() == "Purged 2 dead letters (1 of the IDs did not exist)."
    assert [letter(sessions, i) for i in [*old, *chosen]] == [None] * 4 and letter(sessions, young) is not None
    assert neither.returncode == both.returncode == nonsense.returncode == 2
    assert "Give dead letter IDs, or --older-than DURATION" in neither.stderr
    assert "not a duration such as 30d" in nonsense.stderr


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

    prune_dead_letters.send()
    wait_until(lambda: letter(sessions, expired) is None, what="the prune tick")

    assert letter(sessions, kept) is not None
    with sessions() as session:
        assert session.scalar(text("SELECT COUNT(*) FROM final_errors WHERE message_id = :id"), {"id": stale_id}) == 0
    assert runtime.broker.get_actor("prune_dead_letters").options["periodic"] is not None


def test_prune_deletes_in_batches(sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dlq, "DELETE_BATCH_SIZE", 3)
    now = utcnow()
    ids = [add_dead_letter(sessions, actor="x", args=[], dead_at=now - timedelta(days=400)) for _ in range(7)]
    calls: list[int] = []
    delete_dead_before = dead_letters.delete_dead_before

    def counting(session: Session, cutoff: Any, *, limit: int) -> int:
        calls.append(deleted := delete_dead_before(session, cutoff, limit=limit))
        return deleted

    monkeypatch.setattr(dead_letters, "delete_dead_before", counting)
    assert dlq.prune(sessions, retention_days=365) == 7
    assert calls == [3, 3, 1] and all(letter(sessions, i) is None for i in ids)


# --- schema -------------------------------------------------------------------------------------


def test_migrations_match_the_models(test_services: services.RunServices) -> None:
    def ours(item: Any, name: Optional[str], type_: str, reflected: bool, compare_to: Any) -> bool:
        table = item if type_ == "table" else getattr(item, "table", None)
        return table is None or table.name in {"dead_letters", "alert_state"}

    with get_engine(test_services.database_url).connect() as connection:
        context = MigrationContext.configure(connection, opts={"include_object": ours, "compare_type": True})
        assert compare_metadata(context, Base.metadata) == []


def test_the_dead_letter_statements_run_on_the_dev_modes_sqlite(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'dev.sqlite3'}"
    migrate.upgrade(url)
    lite = get_sessionmaker(url)
    try:
        now = utcnow()
        ids = [add_dead_letter(lite, actor="send_email", args=[n], dead_at=now - timedelta(days=n)) for n in (1, 2, 9)]
        raw = add_dead_letter(lite, actor=None, args=None, raw_body="\x00bad", queue="ticks.XQ")
        with lite.begin() as session:
            email_id = emails.enqueue(session, recipient="a@example.com", subject="s", text="t")
            emails.mark_failed(session, email_id, error="E")
            assert emails.revive(session, email_id, lease=timedelta(minutes=1)) is True
            assert emails.revive(session, email_id, lease=timedelta(minutes=1)) is False
            state = alerts.lock_state(session, now=now)
            assert state.last_alert_at is None
            taken = dead_letters.take_unalerted(session, at=now)
            alerts.record_alert(session, at=now)
        with lite() as session:
            found = dead_letters.search(session, queue="emails.XQ", since=now - timedelta(days=3), limit=10)
            figures = dead_letters.summary(session)
            stored_raw = dead_letters.get(session, raw)
        with lite.begin() as session:
            assert dead_letters.delete_dead_before(session, now - timedelta(days=5), limit=10) == 1
    finally:
        get_engine(url).dispose()
    assert [letter.id for letter in taken] == [*ids, raw]
    assert [letter.id for letter in found] == ids[:2]
    assert figures["by_queue"] == {"emails.XQ": 3, "ticks.XQ": 1} and figures["unreplayed"] == 4
    assert stored_raw is not None and stored_raw.raw_body == "\ufffdbad"


def test_durations_and_times() -> None:
    now = utcnow()
    assert dlq.parse_duration("30d") == timedelta(days=30)
    assert dlq.parse_duration("1.5h") == timedelta(minutes=90)
    assert dlq.parse_since("15m", now=now) == now - timedelta(minutes=15)
    assert dlq.parse_since("2026-01-02T03:04:05").isoformat() == "2026-01-02T03:04:05+00:00"
    for wrong in ("30", "d", "-1d", "3w"):
        with pytest.raises(ValueError):
            dlq.parse_duration(wrong)
