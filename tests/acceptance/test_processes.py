"""Acceptance: the real commands, as an operator runs them, on their own database and vhost."""

from __future__ import annotations

import re
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pika
import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from bench.harness import services
from bench.harness.fake_resend import FakeResend
from bench.harness.processes import CLI, run_cli, running, stop
from storage.database import get_engine, get_sessionmaker
from tests.support.helpers import insert_email, wait_until

pytestmark = pytest.mark.slow

GOOD = 200
REJECTED = 5
#: One recipient the provider answers 500 every time: its 4 attempts stay under the outage pause's
#: 5 failures with no success between, once the good emails are sent. Several such recipients with
#: nothing else succeeding is what a provider that is down looks like, and they wait for it (#18).
FAILING = 1


@pytest.fixture(scope="module")
def own_services() -> Iterator[services.RunServices]:
    """Apart from the in-process worker of the other tests, which would steal messages."""
    created = services.create()
    yield created
    get_engine(created.database_url).dispose()
    services.destroy(created)


@pytest.fixture
def env(environment: dict[str, str], own_services: services.RunServices) -> dict[str, str]:
    return {
        **environment,
        "DATABASE_URL": own_services.database_url,
        "BROKER_URL": own_services.broker_url,
        "EMAIL_LEASE_MINUTES": "0.05",
        "LOG_LEVEL": "INFO",
    }


@pytest.fixture
def sessions(env: dict[str, str], tmp_path: Path) -> sessionmaker[Session]:
    for _ in range(2):  # from a directory that is not the checkout, and twice: idempotent
        upgraded = run_cli("db", "upgrade", env=env, cwd=tmp_path)
        assert upgraded.returncode == 0, upgraded.stderr
        assert "Database at revision" in upgraded.stdout
    return get_sessionmaker(env["DATABASE_URL"])


def status_counts(sessions: sessionmaker[Session]) -> dict[str, int]:
    with sessions() as session:
        return dict(session.execute(text("SELECT status, COUNT(*) FROM email_queue GROUP BY status")).all())


def test_done_when_200_good_emails_and_failing_ones(
    env: dict[str, str], sessions: sessionmaker[Session], fake_resend: FakeResend, tmp_path: Path
) -> None:
    """One email per request (EMAIL_PER_REQUEST=1): the failing recipients' 500s are scripted per
    recipient, which only single sends can show; a provider error answering a batch fails the whole
    request (tests/integration/test_batches.py covers batches)."""
    _good_and_failing(env, sessions, fake_resend, tmp_path)


def _good_and_failing(
    env: dict[str, str], sessions: sessionmaker[Session], fake_resend: FakeResend, tmp_path: Path
) -> None:
    env = {**env, "EMAIL_PER_REQUEST": "1"}
    run = f"{time.time_ns()}"
    good = [f"good{i}-{run}@example.com" for i in range(GOOD)]
    rejected = [f"rejected{i}-{run}@example.com" for i in range(REJECTED)]
    failing = [f"failing{i}-{run}@example.com" for i in range(FAILING)]
    for address in rejected:
        fake_resend.fail_recipient(address, status=422, name="validation_error", message="Invalid `to` field.")
    for address in failing:
        fake_resend.fail_recipient(address, status=500, name="application_error", message="down, answer {attempt}")
    with sessions.begin() as session:
        for address in good + rejected + failing:
            insert_email(session, address)

    with (
        running("worker", "-p", "1", "-t", "8", env=env, cwd=tmp_path, log=tmp_path / "worker.log"),
        running("archiver", env=env, cwd=tmp_path, log=tmp_path / "archiver.log"),
    ):
        started = time.monotonic()
        tick = run_cli("tick", "emails", env=env, cwd=tmp_path)
        assert tick.stdout.strip() == f"Enqueued {GOOD + REJECTED + FAILING} emails.", tick.stderr
        wait_until(lambda: status_counts(sessions).get("sent") == GOOD, timeout=60, what="200 sent")
        sent_after = time.monotonic() - started
        wait_until(
            lambda: status_counts(sessions) == {"sent": GOOD, "failed": REJECTED + FAILING},
            timeout=60,
            what="all final",
        )
        with sessions() as session:
            wait_until(
                lambda: session.scalar(text("SELECT COUNT(*) FROM dead_letters")) == REJECTED + FAILING,
                timeout=30,
                what="10 dead letters",
            )
            dead = {
                args[0]: error for args, error in session.execute(text("SELECT args, error FROM dead_letters")).all()
            }
            recipients = dict(session.execute(text("SELECT id, recipient FROM email_queue")).all())
        finished_after = time.monotonic() - started

    attempts = Counter(address for request in fake_resend.requests for address in request.to)
    assert all(len(fake_resend.deliveries_to(address)) == 1 for address in good)
    assert all(attempts[address] == 1 for address in rejected)
    assert all(attempts[address] == 4 for address in failing)
    dead_by_recipient = {recipients[email_id]: error for email_id, error in dead.items()}
    assert all("Resend 422" in dead_by_recipient[address] for address in rejected)
    assert all(dead_by_recipient[address].endswith("down, answer 4") for address in failing)
    total = GOOD + REJECTED + FAILING
    print(f"\n[figures] {GOOD} sent in {sent_after:.2f}s; all {total} final in {finished_after:.2f}s")


def test_worker_killed_mid_send_still_sends_once_without_waiting_out_its_lease(
    env: dict[str, str], sessions: sessionmaker[Session], fake_resend: FakeResend, tmp_path: Path
) -> None:
    """RabbitMQ redelivers the dead worker's message, which takes its own lease back at once.

    Before leases knew their message, the email sat in ``sending`` for the whole
    lease (15 minutes by default) and then waited for a fan-out.
    """
    env = {**env, "EMAIL_LEASE_MINUTES": "15"}
    address = f"killed-{time.time_ns()}@example.com"
    with sessions.begin() as session:
        email_id = insert_email(session, address)
    fake_resend.delay_seconds = 1.5
    try:
        with running("worker", "-p", "1", "-t", "2", env=env, cwd=tmp_path, log=tmp_path / "w1.log") as worker:
            run_cli("tick", "emails", env=env, cwd=tmp_path)
            wait_until(lambda: fake_resend.attempts_for(address) == 1, what="the send in flight")
            stop(worker, kill=True)
    finally:
        fake_resend.delay_seconds = 0
    assert status_counts_of(sessions, email_id) == "sending"
    with running("worker", "-p", "1", "-t", "2", env=env, cwd=tmp_path, log=tmp_path / "w2.log"):
        wait_until(lambda: status_counts_of(sessions, email_id) == "sent", timeout=20, what="the email sent, no tick")

    assert len(fake_resend.deliveries_to(address)) == 1
    # Later requests carried the same key: answered by replay (or, while the first was still
    # in flight at the provider, by a 409 concurrent_idempotent_requests that waits and retries).
    keys = {request.headers.get("idempotency-key") for request in fake_resend.requests if address in request.to}
    assert fake_resend.attempts_for(address) >= 2 and len(keys) == 1 and None not in keys


def status_counts_of(sessions: sessionmaker[Session], email_id: int) -> str:
    with sessions() as session:
        return str(session.scalar(text("SELECT status FROM email_queue WHERE id = :id"), {"id": email_id}))


def test_invalid_setting_stops_the_worker_with_a_clear_message(env: dict[str, str], tmp_path: Path) -> None:
    result = run_cli("worker", env={**env, "EMAIL_MAX_RETRIES": "lots"}, cwd=tmp_path)
    assert result.returncode != 0
    assert "EMAIL_MAX_RETRIES='lots' is invalid" in result.stderr


def queued_messages(env: dict[str, str], queue: str) -> int:
    """Messages waiting in ``queue``; 0 before Dramatiq declared it (it does so on first send)."""
    connection = pika.BlockingConnection(pika.URLParameters(env["BROKER_URL"]))
    try:
        return connection.channel().queue_declare(queue, passive=True).method.message_count
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code == 404:
            return 0
        raise
    finally:
        connection.close()


def test_two_ticks_at_once_enqueue_each_email_once(
    env: dict[str, str], sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    """No worker runs, so every message the two ticks sent is still in the queue to count."""
    with sessions.begin() as session:
        session.execute(text("UPDATE email_queue SET status = 'sent'"))
        for index in range(300):
            insert_email(session, f"concurrent{index}-{time.time_ns()}@example.com")
    before = queued_messages(env, "emails")

    ticks = [
        subprocess.Popen([CLI, "tick", "emails"], env=env, cwd=tmp_path, stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outputs = [tick.communicate(timeout=120)[0] for tick in ticks]

    enqueued = [int(re.search(r"Enqueued (\d+) emails", output).group(1)) for output in outputs]  # type: ignore[union-attr]
    assert sum(enqueued) == 300
    counts = status_counts(sessions)
    assert counts["queued"] == 300 and set(counts) == {"sent", "queued"}
    with sessions() as session:  # claimed together, they travel in batches: one message per batch
        batches, unbatched = session.execute(
            text(
                "SELECT COUNT(DISTINCT batch_id), COUNT(*) FILTER (WHERE batch_id IS NULL) FROM email_queue "
                "WHERE status = 'queued'"
            )
        ).one()
    assert unbatched == 0 and queued_messages(env, "emails") - before == batches


def test_ticker_schedules_every_periodic_actor(env: dict[str, str], tmp_path: Path) -> None:
    log = tmp_path / "ticker.log"
    with running("ticker", env={**env, "EMAIL_SCHEDULE": "*/7 * * * *"}, cwd=tmp_path, log=log):
        wait_until(lambda: log.read_text().count("Scheduling ") >= 4, what="the ticker's schedule lines")
    text_of_log = log.read_text()
    for actor, schedule in [
        ("fan_out_emails", "*/7 * * * *"),
        ("retry_webhooks", "*/10 * * * *"),
        ("cleanup_reservations", "*/5 * * * *"),
    ]:
        assert f"Scheduling {actor} on '{schedule}'" in text_of_log
