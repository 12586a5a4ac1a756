"""Acceptance: dead letters with the real commands (worker, archiver, dlq), on a database and vhost of their own."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from bench.harness import services
from bench.harness.fake_resend import FakeResend
from bench.harness.processes import run_cli, running
from tests.support.dlq_support import (  # noqa: F401  (fixtures)
    dlq_json,
    dramatiq_body,
    garbage,
    own_env,
    own_services,
    own_sessions,
    publish,
    queue_depth,
    raw_id,
    raw_letters,
)
from tests.support.helpers import insert_email, wait_until

pytestmark = pytest.mark.slow

REFUSED = 10
#: One recipient the provider answers 500 every time: its 4 attempts stay under the outage pause's
#: 5 failures with no success between (pipeline/providers/pacing.py). Several such recipients with
#: nothing else succeeding is what a provider that is down looks like, and they wait for it (#18).
FAILING = 1
BACKLOG = 500


def status_counts(sessions: sessionmaker[Session]) -> dict[str, int]:
    with sessions() as session:
        return dict(session.execute(text("SELECT status, COUNT(*) FROM email_queue GROUP BY status")).all())


def dead_letter_count(sessions: sessionmaker[Session]) -> int:
    with sessions() as session:
        return int(session.scalar(text("SELECT COUNT(*) FROM dead_letters")) or 0)


def test_done_when_failed_emails_are_listed_replayed_once_and_garbage_is_listed(
    own_env: dict[str, str],  # noqa: F811
    own_sessions: sessionmaker[Session],  # noqa: F811
    own_services: services.RunServices,  # noqa: F811
    fake_resend: FakeResend,
    tmp_path: Path,
) -> None:
    # One email per request: the failing recipients' 500s are scripted per recipient, which only
    # single sends can show (a batch given up and replayed whole: tests/integration/test_batches.py).
    own_env = {**own_env, "EMAIL_PER_REQUEST": "1"}
    run = uuid.uuid4().hex[:8]
    refused = [f"refused{i}-{run}@example.com" for i in range(REFUSED)]
    failing = [f"failing{i}-{run}@example.com" for i in range(FAILING)]
    for address in refused:
        fake_resend.fail_recipient(address, status=422, name="validation_error", message="Invalid `to` field.")
    for address in failing:
        fake_resend.fail_recipient(address, status=500, name="application_error", message="down, answer {attempt}")
    with own_sessions.begin() as session:
        ids = {insert_email(session, address): address for address in refused + failing}
    total = REFUSED + FAILING

    with (
        running("worker", "-p", "1", "-t", "8", env=own_env, cwd=tmp_path, log=tmp_path / "worker.log"),
        running("archiver", env=own_env, cwd=tmp_path, log=tmp_path / "archiver.log"),
    ):
        tick = run_cli("tick", "emails", env=own_env, cwd=tmp_path)
        assert tick.stdout.strip() == f"Enqueued {total} emails.", tick.stderr
        wait_until(lambda: dead_letter_count(own_sessions) == total, timeout=30, what="every email dead-lettered")

        listed = dlq_json(own_env, tmp_path, "list", "--limit", "0")
        dry = run_cli("dlq", "replay", "--all", "--dry-run", env=own_env, cwd=tmp_path)
        fake_resend.clear_failures()  # the provider is healthy again
        started = time.monotonic()
        first = run_cli("dlq", "replay", "--all", env=own_env, cwd=tmp_path)
        wait_until(lambda: status_counts(own_sessions) == {"sent": total}, timeout=30, what="every replay sent")
        replayed_in = time.monotonic() - started
        second = run_cli("dlq", "replay", "--all", env=own_env, cwd=tmp_path)
        by_id = run_cli("dlq", "replay", *(str(item["id"]) for item in listed[:3]), env=own_env, cwd=tmp_path)
        left_in_queue = queue_depth(own_services.broker_url, "emails")

        body = garbage(run)
        publish(own_services.broker_url, "emails", [body])
        with own_sessions.begin() as session:
            good = f"after-garbage-{run}@example.com"
            insert_email(session, good)
        assert run_cli("tick", "emails", env=own_env, cwd=tmp_path).stdout.strip() == "Enqueued 1 emails."
        wait_until(lambda: len(fake_resend.deliveries_to(good)) == 1, what="the good email after the garbage")
        wait_until(lambda: dead_letter_count(own_sessions) == total + 1, what="the garbage archived")
        after_garbage = dlq_json(own_env, tmp_path, "list", "--limit", "0")
        figures = dlq_json(own_env, tmp_path, "stats")

    assert len(listed) == total and {item["args"][0] for item in listed} == set(ids)
    for item in listed:
        assert item["actor"] == "send_email" and item["queue"] == "emails.XQ" and item["replayed_at"] is None
        address = ids[item["args"][0]]
        expected = "Resend 422 validation_error" if address in refused else "Resend 500 application_error: down"
        assert expected in item["error"], item
        assert item["retries"] == (0 if address in refused else 3)
    assert dry.stdout.splitlines()[-1] == f"Would replay {total} of {total} dead letters.", dry.stdout
    assert first.returncode == 0 and first.stdout.splitlines()[-1] == f"Replayed {total} of {total} dead letters."
    assert all(len(fake_resend.deliveries_to(address)) == 1 for address in ids.values())
    assert second.stdout.strip() == "Replayed 0 of 0 dead letters.", second.stdout
    assert by_id.returncode == 0 and "Replayed 0 of 3 dead letters; 3 already replayed." in by_id.stdout
    assert left_in_queue == 0
    (garbage_letter,) = raw_letters(own_sessions, run)
    garbage_item = next(item for item in after_garbage if item["message_id"] == garbage_letter.message_id)
    assert garbage_item["raw"] is True and garbage_item["actor"] is None
    assert garbage_item["error"].startswith("DecodeError")
    assert figures["by_actor"] == {"send_email": total, "(undecodable)": 1}
    assert figures["by_queue"] == {"emails.XQ": total + 1}
    assert figures["unreplayed"] == 1
    print(f"\n[figures] replay --all of {total} dead letters: all {total} sent once in {replayed_in:.2f}s")


def test_an_archiver_that_was_down_archives_the_whole_backlog(
    own_env: dict[str, str],  # noqa: F811
    own_sessions: sessionmaker[Session],  # noqa: F811
    own_services: services.RunServices,  # noqa: F811
    tmp_path: Path,
) -> None:
    broker = RabbitmqBroker(url=own_services.broker_url)
    broker.declare_queue("emails", ensure=True)  # emails, emails.DQ and emails.XQ, as a worker declares them
    broker.close()
    traceback = "Traceback (most recent call last):\n  ...\npipeline.errors.TransientError: Resend 500: down\n"
    published = [
        dramatiq_body("send_email", [10**9 + n], options={"retries": 3, "traceback": traceback})
        for n in range(BACKLOG - 5)
    ]
    bodies = [body for _, body in published] + [garbage(f"backlog-{n}") for n in range(5)]
    expected = {message_id for message_id, _ in published} | {raw_id(body, queue="emails.XQ") for body in bodies[-5:]}
    publish(own_services.broker_url, "emails.XQ", bodies)  # dead-lettered while no archiver ran
    assert queue_depth(own_services.broker_url, "emails.XQ") == BACKLOG

    def archived() -> int:
        with own_sessions() as session:
            statement = text("SELECT COUNT(*) FROM dead_letters WHERE message_id = ANY(:ids)")
            return int(session.scalar(statement, {"ids": list(expected)}) or 0)

    started = time.monotonic()
    with running("archiver", env=own_env, cwd=tmp_path, log=tmp_path / "archiver.log"):
        wait_until(lambda: archived() == BACKLOG, timeout=60, what=f"the backlog of {BACKLOG} archived")
        elapsed = time.monotonic() - started
        wait_until(lambda: queue_depth(own_services.broker_url, "emails.XQ") == 0, what="the XQ emptied (acked)")

    with own_sessions() as session:
        errors = session.execute(
            text("SELECT error, COUNT(*) FROM dead_letters WHERE message_id = ANY(:ids) GROUP BY error"),
            {"ids": list(expected)},
        ).all()
    assert dict(errors)["pipeline.errors.TransientError: Resend 500: down"] == BACKLOG - 5
    print(f"\n[figures] backlog of {BACKLOG} dead messages archived in {elapsed:.2f}s (archiver start included)")
