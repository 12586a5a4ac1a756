"""Bulk emails in batch requests, on the real RabbitMQ and PostgreSQL, against the fake Resend."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from actors.fan_out import enqueue_due_emails
from bench.harness.fake_resend import FakeResend
from pipeline.core.runtime import Runtime
from pipeline.ops import dlq
from pipeline.ops.dlq import ReplayStatus
from storage.models import DeadLetter
from tests.support.helpers import email_statuses, insert_email, unique_address, wait_until

pytestmark = pytest.mark.usefixtures("runtime")


def insert_bulk(sessions: sessionmaker[Session], tag: str, count: int) -> tuple[list[int], list[str]]:
    addresses = [unique_address(f"{tag}{n}") for n in range(count)]
    with sessions.begin() as session:
        ids = [insert_email(session, address, priority="bulk") for address in addresses]
    return ids, addresses



def test_bulk_emails_claimed_together_go_in_one_request_each_delivered_once(
    sessions: sessionmaker[Session], fake_resend: FakeResend
) -> None:
    ids, addresses = insert_bulk(sessions, "batch", 150)
    batch_requests = fake_resend.requests_to("/emails/batch")

    enqueue_due_emails()

    wait_until(lambda: email_statuses(sessions, ids) == {"sent": 150}, what="150 bulk emails sent")
    assert fake_resend.requests_to("/emails/batch") - batch_requests == 2  # 100 + 50
    assert all(len(fake_resend.deliveries_to(address)) == 1 for address in addresses)
    with sessions() as session:
        providers = session.execute(
            text(
                "SELECT COUNT(DISTINCT provider_message_id), COUNT(DISTINCT batch_id) "
                "FROM email_queue WHERE id = ANY(:ids)"
            ),
            {"ids": ids},
        ).one()
    assert tuple(providers) == (150, 2)  # each email has its own provider id and row


def test_a_batch_whose_first_request_timed_out_is_resent_with_its_key_and_delivered_once(
    sessions: sessionmaker[Session], fake_resend: FakeResend
) -> None:
    """The provider took the first request but answered after our timeout: the retry, same
    members and same key, is answered by the provider's replay."""
    ids, addresses = insert_bulk(sessions, "timeout", 20)
    fake_resend.delay_next(1, 4.0, delivered=True, to=addresses[0])  # the integration mailer gives up after 3 s

    enqueue_due_emails()

    wait_until(lambda: email_statuses(sessions, ids) == {"sent": 20}, timeout=30, what="the batch sent after its retry")
    keys = [
        r.headers.get("idempotency-key")
        for r in fake_resend.requests
        if r.path == "/emails/batch" and addresses[0] in str(r.body)
    ]
    assert len(keys) == 2 and len(set(keys)) == 1 and keys[0] is not None
    assert all(len(fake_resend.deliveries_to(address)) == 1 for address in addresses)


def test_a_member_the_provider_refuses_fails_alone_with_its_reason_and_dead_letter(
    sessions: sessionmaker[Session], fake_resend: FakeResend
) -> None:
    ids, addresses = insert_bulk(sessions, "permissive", 5)
    refused_id, refused_address = ids[2], addresses[2]
    fake_resend.fail_recipient(refused_address, status=422, message="The recipient address is not allowed.")

    enqueue_due_emails()

    wait_until(lambda: email_statuses(sessions, ids) == {"sent": 4, "failed": 1}, what="4 sent and 1 refused")
    with sessions() as session:
        status, error, retries = session.execute(
            text("SELECT status, last_error, retry_count FROM email_queue WHERE id = :id"), {"id": refused_id}
        ).one()
        letters = session.query(DeadLetter).filter(DeadLetter.actor == "send_bulk_email").all()
    assert status == "failed" and "The recipient address is not allowed." in error and retries == 0
    assert [letter.args for letter in letters if letter.args == [refused_id]] == [[refused_id]]
    assert fake_resend.deliveries_to(refused_address) == []
    assert all(len(fake_resend.deliveries_to(address)) == 1 for address in addresses if address != refused_address)


def test_a_batch_given_up_as_a_whole_is_one_dead_letter_and_its_replay_sends_each_member_once(
    runtime: Runtime, sessions: sessionmaker[Session], fake_resend: FakeResend
) -> None:
    ids, addresses = insert_bulk(sessions, "dead", 4)
    fake_resend.fail_next(4, status=500, to=addresses[0])  # the first attempt and its 3 retries (EMAIL_MAX_RETRIES)

    enqueue_due_emails()

    wait_until(lambda: email_statuses(sessions, ids) == {"failed": 4}, timeout=30, what="the batch given up")
    with sessions() as session:
        (batch_id,) = {
            row[0]
            for row in session.execute(text("SELECT batch_id FROM email_queue WHERE id = ANY(:ids)"), {"ids": ids})
        }
    letter = wait_until(lambda: batch_letter(sessions, batch_id), what="the batch's dead letter")
    assert letter.actor == "send_bulk_email_batch" and "500" in (letter.error or "")
    shown = dlq.show(runtime.broker, sessions, str(letter.id))
    assert shown is not None and sorted(member["id"] for member in shown["item"]["members"]) == sorted(ids)

    outcome = dlq.replay(runtime.broker, sessions, letter.id)

    assert outcome.status is ReplayStatus.REPLAYED
    wait_until(lambda: email_statuses(sessions, ids) == {"sent": 4}, what="the replayed batch sent")
    assert all(len(fake_resend.deliveries_to(address)) == 1 for address in addresses)


def batch_letter(sessions: sessionmaker[Session], batch_id: int) -> DeadLetter | None:
    with sessions() as session:
        letters = session.query(DeadLetter).filter(DeadLetter.actor == "send_bulk_email_batch").all()
        return next((letter for letter in letters if letter.args == [batch_id]), None)
