"""email_queue statements on real PostgreSQL: claims, leases, attempts, host inserts."""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any, Optional

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import func, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from bench.harness.services import RunServices
from storage import batches, emails, leases
from storage.clock import utcnow
from storage.database import get_engine, get_sessionmaker
from storage.emails import InvalidEmail
from storage.leases import AttemptOutcome
from storage.models import Base, EmailQueue
from tests.support.helpers import insert_email, unique_address

LEASE = timedelta(minutes=5)


@pytest.fixture
def sessions(test_services: RunServices) -> sessionmaker[Session]:
    """Storage tests need no broker: a plain session factory, and an empty queue."""
    factory = get_sessionmaker(test_services.database_url)
    with factory.begin() as session:
        session.execute(text("UPDATE email_queue SET status = 'sent' WHERE status <> 'sent'"))
    return factory


def test_host_insert_with_three_columns_gets_the_defaults(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        email_id = insert_email(session, unique_address("host"))
        row = emails.get(session, email_id)
        assert row is not None
        assert (row.status, row.retry_count, row.attempts, row.scheduled_at) == ("pending", 0, 0, None)
        counts = dict(session.execute(text("SELECT status, COUNT(*) FROM email_queue GROUP BY status")).all())
        assert counts["pending"] == 1


def test_insert_without_any_body_is_refused_by_the_database(sessions: sessionmaker[Session]) -> None:
    with pytest.raises(IntegrityError, match="ck_email_queue_has_body"):
        with sessions.begin() as session:
            insert_email(session, unique_address("empty"), html=None)


def test_python_enqueue_validates_its_input(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        with pytest.raises(InvalidEmail, match="not an email address"):
            emails.enqueue(session, recipient="nobody", subject="s", text="t")
        with pytest.raises(InvalidEmail, match="needs html, text or a template"):
            emails.enqueue(session, recipient="a@example.com", subject="s")


def test_concurrent_claims_take_disjoint_sets(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        ids = {insert_email(session, unique_address("race")) for _ in range(300)}
    claimed: list[list[int]] = []
    barrier = threading.Barrier(4)

    def claim() -> None:
        barrier.wait()
        for _ in range(10):
            with sessions.begin() as session:
                claimed.append(leases.claim_due(emails.TABLE, session, lease=LEASE, limit=40))

    threads = [threading.Thread(target=claim) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    every_claim = [email_id for batch in claimed for email_id in batch]
    assert len(every_claim) == len(set(every_claim)) == 300
    assert set(every_claim) == ids


def test_expired_lease_is_claimed_again_and_live_one_is_not(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        held = insert_email(session, unique_address("held"))
        assert leases.claim_due(emails.TABLE, session, lease=LEASE, limit=1) == [held]
        lost = insert_email(session, unique_address("lost"))
        assert leases.claim_due(emails.TABLE, session, lease=timedelta(seconds=-1), limit=1) == [lost]
    with sessions.begin() as session:
        assert leases.claim_due(emails.TABLE, session, lease=LEASE, limit=10) == [lost]


def test_released_claims_are_due_again(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        email_id = insert_email(session, unique_address("released"))
        assert leases.claim_due(emails.TABLE, session, lease=LEASE, limit=10) == [email_id]
        assert leases.release_claims(emails.TABLE, session, [email_id]) == 1
        assert leases.claim_due(emails.TABLE, session, lease=LEASE, limit=10) == [email_id]


def test_an_email_handed_back_in_an_outage_is_due_at_once_and_may_join_a_batch(
    sessions: sessionmaker[Session],
) -> None:
    """Its attempt given back, its claim released; it was offered under no key, so it may join a batch."""
    with sessions.begin() as session:
        fresh = insert_email(session, unique_address("handback"))
        seen = insert_email(session, unique_address("handback-seen"))
        other = insert_email(session, unique_address("handback-other"))
        assert leases.claim_due(emails.TABLE, session, lease=LEASE, limit=10) == [fresh, seen, other]
        assert batches.plan(session, [fresh, seen], size=1).alone == [fresh, seen]  # marked sent alone
        for email_id in (fresh, seen):
            leases.start_attempt(emails.TABLE, session, email_id, lease=LEASE, max_attempts=4, holder="m1")
        emails.record_maybe_sent(session, [seen], provider="resend", at=utcnow())
        assert emails.hand_back(session, [fresh, seen, other], holder="m1") == 2  # not the unstarted one
        rows = {email_id: emails.get(session, email_id) for email_id in (fresh, seen)}
        assert {(row.status, row.attempts, row.locked_until) for row in rows.values() if row} == {("pending", 0, None)}
        assert leases.claim_due(emails.TABLE, session, lease=LEASE, limit=10) == [fresh, seen]
        plan = batches.plan(session, [fresh, seen, other], size=10)
    # The one a provider may have seen keeps its own key; the others go together.
    assert plan.alone == [seen] and len(plan.batch_ids) == 1


def test_attempts_are_counted_and_bounded(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        email_id = insert_email(session, unique_address("bounded"))
    outcomes = []
    for _ in range(3):
        with sessions.begin() as session:
            attempt = leases.start_attempt(emails.TABLE, session, email_id, lease=timedelta(seconds=-1), max_attempts=2)
            outcomes.append((attempt.outcome, attempt.item.retry_count if attempt.item else None))
    assert outcomes == [(AttemptOutcome.GO, 0), (AttemptOutcome.GO, 1), (AttemptOutcome.EXHAUSTED, 1)]


def test_attempt_in_flight_is_not_started_twice(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        email_id = insert_email(session, unique_address("inflight"))
        first = leases.start_attempt(emails.TABLE, session, email_id, lease=LEASE, max_attempts=4)
        second = leases.start_attempt(emails.TABLE, session, email_id, lease=LEASE, max_attempts=4)
    assert (first.outcome, second.outcome) == (AttemptOutcome.GO, AttemptOutcome.SKIP)


def test_rate_limit_refund_gives_the_attempt_back(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        email_id = insert_email(session, unique_address("refund"))
        leases.start_attempt(emails.TABLE, session, email_id, lease=LEASE, max_attempts=4)
        leases.schedule_retry(
            emails.TABLE, session, email_id, error="429", delay=timedelta(0), lease=LEASE, refund=True
        )
        row = emails.get(session, email_id)
        assert row is not None and (row.status, row.attempts, row.retry_count) == ("retrying", 0, 0)


def test_sent_email_is_never_marked_failed(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        email_id = insert_email(session, unique_address("final"))
        leases.start_attempt(emails.TABLE, session, email_id, lease=LEASE, max_attempts=4)
        assert emails.mark_sent(session, email_id, "re_1")
        assert not leases.give_up(emails.TABLE, session, email_id, error="late failure")
        assert (
            leases.start_attempt(emails.TABLE, session, email_id, lease=LEASE, max_attempts=4).outcome
            is AttemptOutcome.SKIP
        )


def test_claim_never_takes_more_than_its_limit(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        for _ in range(7):
            insert_email(session, unique_address("limit"))
    with sessions.begin() as session:
        session.execute(text("ANALYZE email_queue"))
        assert len(leases.claim_due(emails.TABLE, session, lease=LEASE, limit=3)) == 3
        assert len(leases.claim_due(emails.TABLE, session, lease=LEASE, limit=100)) == 4


def test_the_oldest_due_email_counts_retries_and_future_schedules_not(sessions: sessionmaker[Session]) -> None:
    """One definition for the ops API and the gauge: unsent, ordered by since when it has been due."""
    with sessions.begin() as session:
        now = session.scalar(text("SELECT now()"))
        newer_pending = insert_email(session, unique_address("fresh"))
        older_retry = insert_email(session, unique_address("retry"))
        insert_email(session, unique_address("later"), scheduled_at=now + timedelta(hours=1))
        session.execute(
            text("UPDATE email_queue SET status = 'retrying', next_attempt_at = :at WHERE id = :id"),
            {"at": now - timedelta(minutes=10), "id": older_retry},
        )
        assert emails.oldest_due(session, now=now) == (older_retry, now - timedelta(minutes=10))
        session.execute(text("UPDATE email_queue SET status = 'sent' WHERE id = :id"), {"id": older_retry})
        oldest = emails.oldest_due(session, now=now)
        assert oldest is not None and oldest[0] == newer_pending


# --- the indexes (migration 0014, issue 21) ------------------------------------------------------


def test_email_queue_indexes_match_the_models(test_services: RunServices) -> None:
    """The partial indexes of migration 0014 are the models' (the ops search's ``lower(recipient)`` is the
    migration's alone, see ``storage.models``)."""

    def ours(item: Any, name: Optional[str], type_: str, reflected: bool, compare_to: Any) -> bool:
        if type_ == "index" and name == "ix_email_queue_recipient_lower":
            return False
        table = item if type_ == "table" else getattr(item, "table", None)
        return table is None or table.name == "email_queue"

    with get_engine(test_services.database_url).connect() as connection:
        context = MigrationContext.configure(connection, opts={"include_object": ours, "compare_type": True})
        assert compare_metadata(context, Base.metadata) == []


def test_each_partial_index_serves_its_query(
    sessions: sessionmaker[Session],
) -> None:
    """Every query of a partial index still reads it: its WHERE implies the index's predicate."""
    now = utcnow()
    queries = {
        "ix_email_queue_due": select(func.min(EmailQueue.scheduled_at)).where(
            EmailQueue.status == "pending", EmailQueue.scheduled_at > now
        ),
        "ix_email_queue_lease": select(func.count()).where(
            EmailQueue.status.in_(["queued", "sending"]), EmailQueue.locked_until > now
        ),
        "ix_email_queue_sent_at": select(func.count()).where(EmailQueue.sent_at >= now - timedelta(hours=1)),
        "ix_email_queue_batch_id": select(EmailQueue.id).where(EmailQueue.batch_id.in_([1, 2])),
    }
    with sessions.begin() as session:
        session.execute(text("SET LOCAL enable_seqscan = off"))
        for index, query in queries.items():
            sql = str(query.compile(dialect=session.get_bind().dialect, compile_kwargs={"literal_binds": True}))
            plan = "\n".join(session.execute(text(f"EXPLAIN {sql}")).scalars())
            assert index in plan, f"{index} does not serve its query:\n{plan}"
        predicates = dict(
            session.execute(
                text(
                    "SELECT indexrelid::regclass::text, pg_get_expr(indpred, indrelid) FROM pg_index "
                    "WHERE indrelid = 'email_queue'::regclass AND indexrelid::regclass::text = ANY(:names)"
                ),
                {"names": list(queries)},
            ).all()
        )
    assert all(predicates.get(name) for name in queries), predicates
