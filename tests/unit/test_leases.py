"""The one lease lifecycle (``storage.leases``), on both tables, on the dev mode's SQLite."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import event
from sqlalchemy.orm import Session, sessionmaker

from storage import batches, emails, leases, webhooks
from storage.database import statement_by_statement
from storage.leases import AttemptOutcome, LeasedTable
from storage.models import EmailPriority

LEASE = timedelta(minutes=5)


def new_email(session: Session, **fields: object) -> int:
    return emails.enqueue(session, recipient="a@example.com", subject="s", html="<p>x</p>", **fields)  # type: ignore[arg-type]


def new_event(session: Session, event_id: str = "e1") -> int:
    return webhooks.store(
        session,
        provider="generic",
        event_id=event_id,
        event_type="payment.failed",
        payload={},
        order_id="o1",
        lease=timedelta(0),
    ).id


@pytest.fixture(params=["email_queue", "webhook_events"])
def table_and_row(request: pytest.FixtureRequest, lite: sessionmaker[Session]) -> tuple[LeasedTable[object], int]:
    with lite.begin() as session:
        if request.param == "email_queue":
            return emails.TABLE, new_email(session)  # type: ignore[return-value]
        return webhooks.TABLE, new_event(session)  # type: ignore[return-value]


def test_an_attempt_is_counted_and_a_second_message_waits_for_the_lease(
    lite: sessionmaker[Session], table_and_row: tuple[LeasedTable[object], int]
) -> None:
    table, row_id = table_and_row
    with lite.begin() as session:
        first = leases.start_attempt(table, session, row_id, lease=LEASE, max_attempts=4, holder="m1")
        other = leases.start_attempt(table, session, row_id, lease=LEASE, max_attempts=4, holder="m2")
    assert first.outcome is AttemptOutcome.GO and other.outcome is AttemptOutcome.SKIP


def test_the_same_message_takes_its_lease_back_at_once(
    lite: sessionmaker[Session], table_and_row: tuple[LeasedTable[object], int]
) -> None:
    """A redelivery after its worker died: before lease holders it waited the whole lease out."""
    table, row_id = table_and_row
    with lite.begin() as session:
        leases.start_attempt(table, session, row_id, lease=LEASE, max_attempts=4, holder="m1")
        again = leases.start_attempt(table, session, row_id, lease=LEASE, max_attempts=4, holder="m1")
    assert again.outcome is AttemptOutcome.GO
    assert again.item.attempts == 2


def test_a_message_back_before_its_retry_is_due_is_told_when(
    lite: sessionmaker[Session], table_and_row: tuple[LeasedTable[object], int]
) -> None:
    table, row_id = table_and_row
    with lite.begin() as session:
        leases.start_attempt(table, session, row_id, lease=LEASE, max_attempts=4, holder="m1")
        leases.schedule_retry(table, session, row_id, error="E", delay=timedelta(minutes=1), lease=LEASE, refund=False)
        early = leases.start_attempt(table, session, row_id, lease=LEASE, max_attempts=4, holder="m1")
        stranger = leases.start_attempt(table, session, row_id, lease=LEASE, max_attempts=4, holder="m2")
    assert early.outcome is AttemptOutcome.NOT_DUE and early.due_at is not None
    assert stranger.outcome is AttemptOutcome.SKIP


def test_a_refund_gives_the_attempt_back_and_never_goes_below_zero(
    lite: sessionmaker[Session], table_and_row: tuple[LeasedTable[object], int]
) -> None:
    table, row_id = table_and_row
    with lite.begin() as session:
        leases.start_attempt(table, session, row_id, lease=LEASE, max_attempts=4, holder="m1")
        leases.schedule_retry(table, session, row_id, error="429", delay=timedelta(0), lease=LEASE, refund=True)
        leases.schedule_retry(table, session, row_id, error="429", delay=timedelta(0), lease=LEASE, refund=True)
        row = session.get(table.model, row_id)
    assert row.attempts == 0 and row.retry_count == 0


def test_exhausted_give_up_and_revive(
    lite: sessionmaker[Session], table_and_row: tuple[LeasedTable[object], int]
) -> None:
    table, row_id = table_and_row
    with lite.begin() as session:
        for holder in ("m1", "m2"):
            leases.start_attempt(table, session, row_id, lease=timedelta(seconds=-1), max_attempts=1, holder=holder)
    with lite.begin() as session:
        assert leases.give_up(table, session, row_id, error="E: gone") is True
        assert leases.give_up(table, session, row_id, error="again") is False  # idempotent
        assert leases.start_attempt(table, session, row_id, lease=LEASE, max_attempts=1).outcome is AttemptOutcome.SKIP
        assert leases.revive(table, session, row_id, lease=LEASE) is True
        assert leases.revive(table, session, row_id, lease=LEASE) is False
        revived = session.get(table.model, row_id)
        assert revived.attempts == 0 and revived.last_error is None


def test_claims_take_transactional_emails_by_filter_and_release_unsent_ones(lite: sessionmaker[Session]) -> None:
    with lite.begin() as session:
        bulk = new_email(session, priority=EmailPriority.BULK)
        urgent = new_email(session)
    with lite.begin() as session:
        claimed = leases.claim_due(
            emails.TABLE, session, lease=LEASE, limit=10, only=emails.of_priority(EmailPriority.TRANSACTIONAL)
        )
        assert claimed == [urgent]
        assert leases.claim_due(emails.TABLE, session, lease=LEASE, limit=0) == []
        assert leases.release_claims(emails.TABLE, session, claimed) == 1
        assert leases.claim_due(emails.TABLE, session, lease=LEASE, limit=10) == sorted([bulk, urgent])


def test_a_message_back_after_giving_its_row_up_is_told_so(
    lite: sessionmaker[Session], table_and_row: tuple[LeasedTable[object], int]
) -> None:
    """Its nack was lost: it must be dead-lettered again, not skipped (issue 11, hole 3)."""
    table, row_id = table_and_row
    with lite.begin() as session:
        leases.start_attempt(table, session, row_id, lease=LEASE, max_attempts=4, holder="m1")
        leases.give_up(table, session, row_id, error="E: refused")
        back = leases.start_attempt(table, session, row_id, lease=LEASE, max_attempts=4, holder="m1")
        other = leases.start_attempt(table, session, row_id, lease=LEASE, max_attempts=4, holder="m2")
    assert back.outcome is AttemptOutcome.GIVEN_UP and other.outcome is AttemptOutcome.SKIP


def test_an_email_keeps_the_key_it_was_first_offered_under(lite: sessionmaker[Session]) -> None:
    """Found by the chaos suite: an email sent alone (its publish failed after RabbitMQ took it) was
    claimed again into a batch, under the batch's key, and the provider delivered it twice."""
    with lite.begin() as session:
        alone = emails.enqueue(session, recipient="a@example.com", subject="s", html="x", claim_for=LEASE)
        fresh = [new_email(session) for _ in range(3)]
    with lite.begin() as session:
        first = batches.plan(session, fresh[:2], size=100)
        lone = batches.plan(session, [fresh[2]], size=100)
    with lite.begin() as session:  # every one of them claimed again, together
        again = batches.plan(session, [alone, *fresh], size=100)
    assert len(first.batch_ids) == 1 and first.alone == [] and lone == batches.Plan(alone=[fresh[2]], batch_ids=[])
    assert again == batches.Plan(alone=sorted([alone, fresh[2]]), batch_ids=first.batch_ids)


# --- statement by statement (issue 21): the per-email blocks of one write, without BEGIN and COMMIT ----------


def test_a_statement_by_statement_block_commits_each_statement_as_it_runs(lite: sessionmaker[Session]) -> None:
    """Each statement is its own transaction: what ran before a failure of the block stays written,
    as it would have had the block been that one statement's transaction, committed."""
    with lite.begin() as session:
        email_id = new_email(session)
        leases.claim_due(emails.TABLE, session, lease=LEASE, limit=1)
    with pytest.raises(RuntimeError), statement_by_statement(lite) as session:
        attempt = leases.start_attempt(emails.TABLE, session, email_id, lease=LEASE, max_attempts=3, holder="m1")
        assert attempt.outcome is AttemptOutcome.GO
        raise RuntimeError("the worker dies after its attempt started")
    with lite() as session:
        row = emails.get(session, email_id)
        assert row is not None and (row.status, row.attempts, row.lease_holder) == ("sending", 1, "m1")
    with statement_by_statement(lite) as session:
        again = leases.start_attempt(emails.TABLE, session, email_id, lease=LEASE, max_attempts=3, holder="m1")
        assert again.outcome is AttemptOutcome.GO, "the same message takes its own lease over"
        assert emails.mark_sent(session, email_id, "re_1")
    with lite() as session:
        row = emails.get(session, email_id)
        assert row is not None and (row.status, row.attempts, row.provider_message_id) == ("sent", 2, "re_1")


def test_the_built_once_statements_take_each_call_s_values(lite: sessionmaker[Session]) -> None:
    """``start_attempts`` and ``mark_sent`` keep one statement and bind every value: nothing of one
    call (its rows, holder, lease, attempt budget) leaks into the next."""
    with lite.begin() as session:
        first, second = new_email(session), new_email(session)
        leases.claim_due(emails.TABLE, session, lease=LEASE, limit=2)
    with lite.begin() as session:
        started = leases.start_attempts(emails.TABLE, session, [first], lease=LEASE, max_attempts=1, holder="m1")
        assert [a.item.id for a in started if a.item] == [first]
        other = leases.start_attempt(emails.TABLE, session, second, lease=LEASE * 2, max_attempts=0, holder=None)
        assert other.outcome is AttemptOutcome.EXHAUSTED, "max_attempts is the call's, not the first call's"
        assert not emails.mark_sent(session, first + second + 100, "re_x")
        assert emails.mark_sent(session, second, "re_2")
    with lite() as session:
        rows = {row.id: row for row in emails.rows(session, [first, second])}
        assert rows[first].lease_holder == "m1" and rows[second].lease_holder is None
        assert rows[second].locked_until is None and rows[second].provider_message_id == "re_2"
        assert rows[first].status == "sending" and rows[first].provider_message_id is None


def test_one_per_request_the_claim_marks_the_emails_sent_alone_and_the_plan_writes_nothing(
    lite: sessionmaker[Session],
) -> None:
    """EMAIL_PER_REQUEST=1: ``sent_alone`` is written by the claim (one row version, not two);
    an email of a batch formed earlier keeps its batch, and goes in it."""
    with lite.begin() as session:
        fresh = [new_email(session), new_email(session)]
        members = [new_email(session), new_email(session)]
        (batch_id,) = batches.form(session, members, size=100)
    with lite.begin() as session:
        claimed = leases.claim_due(emails.TABLE, session, lease=LEASE, limit=10, also=batches.claimed_values(size=1))
        assert claimed == sorted(fresh + members)
        rows = {row.id: row for row in emails.rows(session, claimed)}
        assert [rows[i].sent_alone for i in fresh] == [True, True]
        assert [(rows[i].sent_alone, rows[i].batch_id) for i in members] == [(False, batch_id)] * 2
        updates: list[str] = []
        event.listen(session.get_bind(), "before_cursor_execute", lambda *args: updates.append(args[2]))
        plan = batches.plan(session, claimed, size=1)
        assert (plan.alone, plan.batch_ids) == (fresh, [batch_id])
        assert not [sql for sql in updates if sql.lstrip().upper().startswith("UPDATE")], "the plan wrote again"


def test_with_batches_the_claim_writes_no_sent_alone_and_the_plan_forms_them(lite: sessionmaker[Session]) -> None:
    assert batches.claimed_values(size=100) == {}
    with lite.begin() as session:
        fresh = [new_email(session), new_email(session)]
    with lite.begin() as session:
        claimed = leases.claim_due(emails.TABLE, session, lease=LEASE, limit=10, also=batches.claimed_values(size=100))
        plan = batches.plan(session, claimed, size=100)
        assert plan.alone == [] and len(plan.batch_ids) == 1
        assert not any(row.sent_alone for row in emails.rows(session, fresh))
