"""Emails one per request, several to a message (``actors.email_groups``), on the real RabbitMQ and
PostgreSQL, against the fake Resend: each email its own request and key, each failure its own."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from actors.email_groups import groups
from actors.emails import idempotency_key
from actors.fan_out import enqueue_due_emails
from bench.harness.fake_resend import FakeResend
from pipeline.core import runtime as runtimes
from pipeline.core.runtime import Runtime
from pipeline.ops import dlq
from pipeline.ops.dlq import ReplayStatus
from storage import emails
from storage.emails import EmailMessage
from storage.models import DeadLetter
from tests.support.helpers import insert_email, unique_address, wait_until


@pytest.fixture
def one_per_request(runtime: Runtime) -> Iterator[Runtime]:
    """The in-process worker with EMAIL_PER_REQUEST=1, as a shop without batches runs it."""
    single = dataclasses.replace(runtime, settings=dataclasses.replace(runtime.settings, email_per_request=1))
    runtimes.install(single)
    yield single
    runtimes.install(runtime)


def insert(sessions: sessionmaker[Session], tag: str, count: int) -> tuple[list[int], list[str]]:
    addresses = [unique_address(f"{tag}{n}") for n in range(count)]
    with sessions.begin() as session:
        ids = [insert_email(session, address) for address in addresses]
    return ids, addresses


def statuses(sessions: sessionmaker[Session], ids: list[int]) -> dict[str, int]:
    with sessions() as session:
        query = text("SELECT status, COUNT(*) FROM email_queue WHERE id = ANY(:ids) GROUP BY status")
        return {status: int(count) for status, count in session.execute(query, {"ids": ids})}


def attempts(sessions: sessionmaker[Session], ids: list[int]) -> dict[int, int]:
    with sessions() as session:
        query = text("SELECT id, attempts FROM email_queue WHERE id = ANY(:ids)")
        return {int(email_id): int(count) for email_id, count in session.execute(query, {"ids": ids})}


def letters_of(sessions: sessionmaker[Session], actor: str, email_id: int) -> list[DeadLetter]:
    with sessions() as session:
        found = session.query(DeadLetter).filter(DeadLetter.actor == actor).all()
        return [letter for letter in found if letter.args == [email_id]]


def test_a_claim_is_spread_over_the_workers_threads_in_groups_of_at_most_twenty() -> None:
    assert [len(group) for group in groups(list(range(5)))] == [1] * 5
    assert [len(group) for group in groups(list(range(40)))] == [3] * 13 + [1]
    assert [len(group) for group in groups(list(range(500)))] == [20] * 25
    assert sum(groups(list(range(37))), []) == list(range(37))


@pytest.mark.usefixtures("one_per_request")
def test_emails_claimed_together_go_one_per_request_under_their_own_keys_several_to_a_message(
    sessions: sessionmaker[Session], fake_resend: FakeResend
) -> None:
    ids, addresses = insert(sessions, "group", 60)
    batch_requests = fake_resend.requests_to("/emails/batch")

    enqueue_due_emails()

    wait_until(lambda: statuses(sessions, ids) == {"sent": 60}, what="60 emails sent")
    assert fake_resend.requests_to("/emails/batch") == batch_requests  # one per request: no batch
    with sessions() as session:
        rows = emails.rows(session, ids)
        messages = session.execute(
            text("SELECT COUNT(DISTINCT lease_holder) FROM email_queue WHERE id = ANY(:ids)"), {"ids": ids}
        ).scalar_one()
    expected_keys = {row.recipient: idempotency_key(EmailMessage.from_row(row)) for row in rows}
    for address in addresses:
        (delivery,) = fake_resend.deliveries_to(address)
        requests = [r for r in fake_resend.requests if address in r.to]
        assert [r.headers.get("idempotency-key") for r in requests] == [expected_keys[address]]
    assert messages == 15  # 60 emails in 15 messages of 4, not 60 messages
    assert len({row.provider_message_id for row in rows}) == 60


@pytest.mark.usefixtures("one_per_request")
def test_a_member_whose_request_fails_is_retried_alone_and_its_neighbours_are_sent_once(
    sessions: sessionmaker[Session], fake_resend: FakeResend
) -> None:
    """Before groups, a failing email had a message of its own; it must still: a retry of the group
    would spend its neighbours' attempts, and its dead letter must name the one email."""
    ids, addresses = insert(sessions, "apart", 40)
    failing_id, failing = ids[1], addresses[1]
    fake_resend.fail_recipient(failing, status=500, name="application_error", message="down for {attempt}")

    enqueue_due_emails()

    wait_until(lambda: statuses(sessions, ids) == {"sent": 39, "failed": 1}, timeout=30, what="39 sent, 1 failed")
    (letter,) = wait_until(lambda: letters_of(sessions, "send_email", failing_id), what="its own dead letter")
    assert letter.queue == "emails.XQ" and letter.retries == 3 and "down for 4" in (letter.error or "")
    assert len([r for r in fake_resend.requests if failing in r.to]) == 4  # the first attempt and 3 retries
    counted = attempts(sessions, ids)
    assert counted[failing_id] == 4
    assert {counted[email_id] for email_id in ids if email_id != failing_id} == {1}
    assert all(len(fake_resend.deliveries_to(address)) == 1 for address in addresses if address != failing)

    outcome = dlq.replay(runtimes.current().broker, sessions, letter.id)
    fake_resend.clear_failures(failing)

    assert outcome.status is ReplayStatus.REPLAYED
    wait_until(lambda: statuses(sessions, [failing_id]) == {"sent": 1}, what="the replayed email sent")
    assert len(fake_resend.deliveries_to(failing)) == 1


@pytest.mark.usefixtures("one_per_request")
def test_a_member_the_provider_refuses_fails_at_once_with_its_own_dead_letter(
    sessions: sessionmaker[Session], fake_resend: FakeResend
) -> None:
    ids, addresses = insert(sessions, "refusedgroup", 20)
    refused_id, refused = ids[0], addresses[0]
    fake_resend.fail_recipient(refused, status=422, message="The recipient address is not allowed.")

    enqueue_due_emails()

    wait_until(lambda: statuses(sessions, ids) == {"sent": 19, "failed": 1}, what="19 sent and 1 refused")
    (letter,) = wait_until(lambda: letters_of(sessions, "send_email", refused_id), what="its dead letter")
    assert "The recipient address is not allowed." in (letter.error or "")
    assert attempts(sessions, [refused_id]) == {refused_id: 1}
    assert fake_resend.deliveries_to(refused) == []
    assert all(len(fake_resend.deliveries_to(address)) == 1 for address in addresses[1:])


@pytest.mark.usefixtures("one_per_request")
def test_a_rate_limit_sends_the_rest_of_the_group_each_on_its_own_after_the_wait_spending_no_attempt(
    sessions: sessionmaker[Session], fake_resend: FakeResend
) -> None:
    ids, addresses = insert(sessions, "limitedgroup", 20)
    fake_resend.fail_next(3, status=429, name="rate_limit_exceeded", message="Too many requests", to=addresses[0])

    enqueue_due_emails()

    wait_until(lambda: statuses(sessions, ids) == {"sent": 20}, timeout=30, what="all 20 sent after the 429s")
    assert set(attempts(sessions, ids).values()) == {1}  # every 429 refunded its attempt
    assert all(len(fake_resend.deliveries_to(address)) == 1 for address in addresses)
