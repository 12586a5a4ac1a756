"""Emails one per request, several to a message (``actors.email_groups``), on the real RabbitMQ and
PostgreSQL, against the fake Resend: each email its own request and key, each failure its own."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from actors.email_groups import groups, send_email_group
from actors.emails import idempotency_key
from actors.fan_out import enqueue_due_emails
from bench.harness.fake_resend import FakeResend
from pipeline.core import runtime as runtimes
from pipeline.core.runtime import Runtime
from pipeline.ops import dlq
from pipeline.ops.dlq import ReplayStatus
from storage import emails, leases
from storage.emails import EmailMessage
from storage.models import DeadLetter
from tests.support.helpers import email_statuses, insert_email, unique_address, wait_until


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

    wait_until(lambda: email_statuses(sessions, ids) == {"sent": 60}, what="60 emails sent")
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

    wait_until(lambda: email_statuses(sessions, ids) == {"sent": 39, "failed": 1}, timeout=30, what="39 sent, 1 failed")
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
    wait_until(lambda: email_statuses(sessions, [failing_id]) == {"sent": 1}, what="the replayed email sent")
    assert len(fake_resend.deliveries_to(failing)) == 1


@pytest.mark.usefixtures("one_per_request")
def test_a_member_the_provider_refuses_fails_at_once_with_its_own_dead_letter(
    sessions: sessionmaker[Session], fake_resend: FakeResend
) -> None:
    ids, addresses = insert(sessions, "refusedgroup", 20)
    refused_id, refused = ids[0], addresses[0]
    fake_resend.fail_recipient(refused, status=422, message="The recipient address is not allowed.")

    enqueue_due_emails()

    wait_until(lambda: email_statuses(sessions, ids) == {"sent": 19, "failed": 1}, what="19 sent and 1 refused")
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

    wait_until(lambda: email_statuses(sessions, ids) == {"sent": 20}, timeout=30, what="all 20 sent after the 429s")
    assert set(attempts(sessions, ids).values()) == {1}  # every 429 refunded its attempt
    assert all(len(fake_resend.deliveries_to(address)) == 1 for address in addresses)


LEASE = timedelta(minutes=5)


def claim(session: Session, ids: list[int]) -> None:
    """What the fan-out does before it sends a group's message."""
    leases.claim_due(emails.TABLE, session, lease=LEASE, limit=len(ids), only=emails.TABLE.model.id.in_(ids))


def held_by(sessions: sessionmaker[Session], ids: list[int]) -> dict[int, str | None]:
    with sessions() as session:
        query = text("SELECT id, lease_holder FROM email_queue WHERE id = ANY(:ids)")
        return {int(email_id): holder for email_id, holder in session.execute(query, {"ids": ids})}


def group_letters(sessions: sessionmaker[Session]) -> list[DeadLetter]:
    with sessions() as session:
        return session.query(DeadLetter).filter(DeadLetter.actor == "send_email_group").all()


def test_a_group_that_comes_back_mid_way_hands_each_unfinished_member_to_its_own_message(
    runtime: Runtime, sessions: sessionmaker[Session], fake_resend: FakeResend
) -> None:
    """Its worker died with one member sent and two not: re-running the group would count an attempt
    of every member again at each return, so a member that kills the worker would exhaust the rest."""
    ids, addresses = insert(sessions, "comeback", 3)
    group = send_email_group.message(ids)
    with runtimes.current().sessions.begin() as session:
        claim(session, ids)
        leases.start_attempts(emails.TABLE, session, ids, lease=LEASE, max_attempts=4, holder=group.message_id)
        emails.mark_sent(session, ids[0], "sent-before-the-crash", provider="resend")

    runtime.broker.enqueue(group)  # the redelivery of the message whose worker died

    wait_until(lambda: email_statuses(sessions, ids) == {"sent": 3}, what="the two unfinished members sent")
    assert fake_resend.deliveries_to(addresses[0]) == []  # answered before the crash: not sent again
    assert all(len(fake_resend.deliveries_to(address)) == 1 for address in addresses[1:])
    holders = held_by(sessions, ids)
    assert holders[ids[0]] == group.message_id
    assert group.message_id not in (holders[ids[1]], holders[ids[2]]) and holders[ids[1]] != holders[ids[2]]
    assert attempts(sessions, ids[1:]) == {ids[1]: 2, ids[2]: 2}  # the crashed attempt counts, as alone


def test_a_group_redelivered_after_a_member_failed_leaves_its_neighbour_s_retries_alone(
    runtime: Runtime, sessions: sessionmaker[Session], fake_resend: FakeResend
) -> None:
    """The failed member's row still named the group's message as its holder: the group, coming back,
    took the failure for its own (GivenUpEarlier), failed the retrying neighbour after one attempt of
    four, and dead-lettered itself."""
    ids, addresses = insert(sessions, "redelivered", 2)
    refused, flaky = ids
    fake_resend.fail_recipient(addresses[0], status=422, message="The recipient address is not allowed.")
    fake_resend.fail_recipient(addresses[1], status=500, name="application_error", message="down for {attempt}")
    group = send_email_group.message(ids)
    with runtimes.current().sessions.begin() as session:
        claim(session, ids)

    runtime.broker.enqueue(group)
    wait_until(lambda: email_statuses(sessions, ids) == {"failed": 1, "retrying": 1}, what="one refused, one retrying")
    runtime.broker.enqueue(group)  # RabbitMQ redelivers it (its ack was lost)

    (letter,) = wait_until(lambda: letters_of(sessions, "send_email", flaky), timeout=30, what="the flaky one's letter")
    assert letter.retries == 3 and "down for 4" in (letter.error or "")
    assert attempts(sessions, [flaky]) == {flaky: 4}
    assert len(letters_of(sessions, "send_email", refused)) == 1
    assert [letter.args for letter in group_letters(sessions) if letter.args == [ids]] == []


@pytest.mark.usefixtures("one_per_request")
def test_a_member_pinned_to_a_provider_that_refuses_it_waits_alone_while_the_group_goes_on(
    sessions: sessionmaker[Session], fake_resend: FakeResend
) -> None:
    """An email an earlier attempt may have sent is asked of that provider only; its 429 said nothing
    of the rest, which took the next provider or waited with it, each in a message of its own."""
    ids, addresses = insert(sessions, "pinned", 48)  # 16 groups of 3: the first is ids[0:3]
    with sessions.begin() as session:
        session.execute(
            text("UPDATE email_queue SET maybe_sent_by = 'resend', maybe_sent_at = now() WHERE id = :id"),
            {"id": ids[0]},
        )
    fake_resend.fail_next(1, status=429, name="rate_limit_exceeded", message="Too many requests", to=addresses[0])

    enqueue_due_emails()

    wait_until(lambda: email_statuses(sessions, ids) == {"sent": 48}, timeout=30, what="all 48 sent")
    holders = held_by(sessions, ids)
    assert holders[ids[1]] == holders[ids[2]] != holders[ids[0]]  # the two went on in the group's message
    assert set(attempts(sessions, ids).values()) == {1}  # the 429 refunded its attempt
