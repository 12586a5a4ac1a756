"""Every statement on ``webhook_events``.

The life of an event (see ``WebhookStatus``): the intake stores it ``pending``
under a short lease and enqueues its message; a worker starts an attempt (counted
in ``attempts``, ``retry_count`` = attempts after the first, ``attempt_started_at``
set, leased); the attempt ends ``processed``, or ``failed`` with ``next_retry_at``
and ``last_error``; when the pipeline gives up, ``failed`` and ``archived``.

``locked_until`` is the one answer to "is somebody handling this event?": the
intake's message, a running attempt, or a retry message waiting in RabbitMQ each
hold it (the last until ``next_retry_at`` plus the lease). Once it runs out the
event's message is taken as lost and ``claim_due_for_retry`` hands it to the ticker.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Optional

from sqlalchemy import and_, case, false, func, or_, select, true, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from storage.attempts import Attempt, AttemptOutcome
from storage.clock import utcnow
from storage.errors import StorageError
from storage.models import WebhookEvent, WebhookStatus

_OPEN = (WebhookStatus.PENDING.value, WebhookStatus.FAILED.value)


@dataclass(frozen=True, kw_only=True)
class EventData:
    """What a worker needs to apply one event."""

    id: int
    provider: str
    event_id: str
    type: str
    order_id: Optional[str]
    payload: dict[str, Any]
    retry_count: int
    attempts: int

    @classmethod
    def from_row(cls, row: WebhookEvent) -> EventData:
        return cls(
            id=row.id,
            provider=row.provider,
            event_id=row.event_id,
            type=row.type,
            order_id=row.order_id,
            payload=dict(row.payload or {}),
            retry_count=row.retry_count,
            attempts=row.attempts,
        )


@dataclass(frozen=True)
class Stored:
    """The row an incoming event is kept in, and whether this call created it."""

    id: int
    created: bool


def store(
    session: Session,
    *,
    provider: str,
    event_id: str,
    event_type: str,
    payload: dict[str, Any],
    order_id: Optional[str],
    lease: timedelta,
) -> Stored:
    """Insert the event unless (provider, event_id) is stored already; return its row id.

    ``INSERT ... ON CONFLICT DO NOTHING`` makes two deliveries racing each other
    store one row. The new row is leased for ``lease``: the intake's own message
    should start it by then, and if it never does, the ticker will.
    """
    now = utcnow()
    values = {
        "provider": provider,
        "event_id": event_id,
        "type": event_type,
        "payload": payload,
        "order_id": order_id,
        "status": WebhookStatus.PENDING.value,
        "locked_until": now + lease,
        "received_at": now,
        "updated_at": now,
    }
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    statement = (
        dialect.insert(WebhookEvent.__table__)
        .values(**values)
        .on_conflict_do_nothing(index_elements=["provider", "event_id"])
        .returning(WebhookEvent.__table__.c.id)
    )
    inserted = session.execute(statement).scalar_one_or_none()
    if inserted is not None:
        return Stored(int(inserted), True)
    existing = session.scalar(
        select(WebhookEvent.id).where(WebhookEvent.provider == provider, WebhookEvent.event_id == event_id)
    )
    if existing is None:
        raise StorageError(f"webhook event {provider}/{event_id} conflicted but is not there")
    return Stored(int(existing), False)


def start_attempt(
    session: Session, event_row_id: int, *, lease: timedelta, max_attempts: int
) -> Attempt[EventData]:
    """Count one attempt at applying the event unless there is nothing to do.

    The count lives in the row, so a worker that dies mid-attempt (RabbitMQ
    redelivers; Dramatiq never saw a failure) still uses one up. An attempt is
    not started while another runs (``attempt_started_at`` under a live lease)
    nor before ``next_retry_at``, so a stray duplicate message cannot jump the
    schedule.
    """
    now = utcnow()
    startable = and_(
        WebhookEvent.id == event_row_id,
        WebhookEvent.archived == false(),
        WebhookEvent.status.in_(_OPEN),
        or_(WebhookEvent.attempt_started_at.is_(None), WebhookEvent.locked_until < now),
        or_(WebhookEvent.next_retry_at.is_(None), WebhookEvent.next_retry_at <= now),
    )
    attempts = WebhookEvent.attempts + 1
    statement = (
        update(WebhookEvent)
        .where(startable)
        .values(
            attempts=attempts,
            retry_count=case((attempts > max_attempts, max_attempts - 1), else_=attempts - 1),
            attempt_started_at=now,
            locked_until=now + lease,
            updated_at=now,
        )
        .returning(WebhookEvent)
        .execution_options(synchronize_session=False)
    )
    row = session.scalars(statement).one_or_none()
    if row is None:
        return Attempt(AttemptOutcome.SKIP)
    event = EventData.from_row(row)
    if event.attempts > max_attempts:
        return Attempt(AttemptOutcome.EXHAUSTED, event)
    return Attempt(AttemptOutcome.GO, event)


def lock_unprocessed(session: Session, event_row_id: int) -> bool:
    """Lock the event for the applying transaction; False if it was processed meanwhile.

    Two workers applying one event (a lease ran out under a slow one) queue on
    this lock, and the second then sees ``processed``: an event applies once.
    """
    statement = (
        select(WebhookEvent.id)
        .where(
            WebhookEvent.id == event_row_id,
            WebhookEvent.status != WebhookStatus.PROCESSED.value,
            WebhookEvent.archived == false(),
        )
        .with_for_update()
    )
    return session.scalar(statement) is not None


def mark_processed(session: Session, event_row_id: int) -> bool:
    """The event was applied; ``last_error`` stays as the record of why it needed retries."""
    now = utcnow()
    statement = (
        update(WebhookEvent)
        .where(WebhookEvent.id == event_row_id, WebhookEvent.status != WebhookStatus.PROCESSED.value)
        .values(
            status=WebhookStatus.PROCESSED.value,
            processed_at=now,
            next_retry_at=None,
            locked_until=None,
            attempt_started_at=None,
            updated_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    return session.execute(statement).rowcount == 1


def schedule_retry(
    session: Session, event_row_id: int, *, error: str, delay: timedelta, lease: timedelta, refund: bool
) -> bool:
    """Record a failed attempt: ``failed``, ``last_error``, and ``next_retry_at`` = now + ``delay``.

    The lease runs to ``next_retry_at`` plus ``lease``, so the ticker leaves an
    event alone while its retry message waits in RabbitMQ. ``refund`` gives the
    attempt back (it failed for a reason that was not the event's).
    """
    now = utcnow()
    values: dict[str, Any] = {
        "status": WebhookStatus.FAILED.value,
        "last_error": error,
        "next_retry_at": now + delay,
        "locked_until": now + delay + lease,
        "attempt_started_at": None,
        "updated_at": now,
    }
    if refund:
        values["attempts"] = case((WebhookEvent.attempts > 0, WebhookEvent.attempts - 1), else_=0)
        values["retry_count"] = case((WebhookEvent.attempts > 1, WebhookEvent.attempts - 2), else_=0)
    statement = (
        update(WebhookEvent)
        .where(
            WebhookEvent.id == event_row_id,
            WebhookEvent.status.in_(_OPEN),
            WebhookEvent.archived == false(),
        )
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    return session.execute(statement).rowcount == 1


def archive(session: Session, event_row_id: int, *, error: str) -> bool:
    """Give up on the event: ``failed`` and ``archived`` (idempotent; a processed event stays so)."""
    now = utcnow()
    statement = (
        update(WebhookEvent)
        .where(
            WebhookEvent.id == event_row_id,
            WebhookEvent.status.in_(_OPEN),
            WebhookEvent.archived == false(),
        )
        .values(
            status=WebhookStatus.FAILED.value,
            archived=True,
            last_error=error,
            next_retry_at=None,
            locked_until=None,
            attempt_started_at=None,
            updated_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    return session.execute(statement).rowcount == 1


def _unhandled(now: datetime) -> Any:
    """Open, due, and nobody's: its lease ran out, so its message was lost."""
    return and_(
        WebhookEvent.archived == false(),
        WebhookEvent.status.in_(_OPEN),
        or_(WebhookEvent.locked_until.is_(None), WebhookEvent.locked_until < now),
        or_(WebhookEvent.next_retry_at.is_(None), WebhookEvent.next_retry_at <= now),
    )


def claim_due_for_retry(session: Session, *, limit: int, lease: timedelta) -> list[int]:
    """Claim up to ``limit`` events whose message was lost; return their row ids, oldest due first.

    Covers failed events past ``next_retry_at`` whose retry message never came,
    stored events whose intake message was never sent, and attempts whose worker
    died. ``FOR UPDATE SKIP LOCKED`` gives two tickers disjoint sets, and the new
    lease keeps a claimed event from being claimed again while its message travels.
    The locking select is a MATERIALIZED CTE, as in ``storage.emails.claim_due``:
    as ``WHERE id IN (subquery)`` PostgreSQL may rerun it and claim more than ``limit``.
    """
    now = utcnow()
    due = (
        select(WebhookEvent.id)
        .where(_unhandled(now))
        .order_by(func.coalesce(WebhookEvent.next_retry_at, WebhookEvent.received_at), WebhookEvent.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
        .cte("due")
        .prefix_with("MATERIALIZED")
    )
    statement = (
        update(WebhookEvent)
        .where(WebhookEvent.id == due.c.id, _unhandled(now))
        .values(locked_until=now + lease, updated_at=now)
        .returning(WebhookEvent.id)
        .execution_options(synchronize_session=False)
    )
    return sorted(session.scalars(statement))


def release_claims(session: Session, event_row_ids: list[int]) -> int:
    """Hand claimed events whose message could not be sent back to the next tick."""
    if not event_row_ids:
        return 0
    statement = (
        update(WebhookEvent)
        .where(
            WebhookEvent.id.in_(event_row_ids),
            WebhookEvent.status.in_(_OPEN),
            WebhookEvent.attempt_started_at.is_(None),
        )
        .values(locked_until=None, updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    return session.execute(statement).rowcount


def get(session: Session, event_row_id: int) -> Optional[WebhookEvent]:
    """The row of ``event_row_id``, or None."""
    return session.get(WebhookEvent, event_row_id)


def find(session: Session, provider: str, event_id: str) -> Optional[WebhookEvent]:
    """The row of a provider's event, or None."""
    statement = select(WebhookEvent).where(WebhookEvent.provider == provider, WebhookEvent.event_id == event_id)
    return session.scalars(statement).one_or_none()


def stats(session: Session) -> dict[str, Any]:
    """The shop's ``getWebhookRetryStats``, in one statement.

    ``by_status``: every event by status (archived ones count as ``failed``);
    ``awaiting_retry``: failed, not archived; ``archived``: given up;
    ``average_retries``: mean ``retry_count`` over every event;
    ``due_now``: open events whose next attempt time (``next_retry_at``, or
    receipt for a first attempt) has come.
    """
    now = utcnow()
    is_open = and_(WebhookEvent.archived == false(), WebhookEvent.status.in_(_OPEN))
    due = and_(is_open, func.coalesce(WebhookEvent.next_retry_at, WebhookEvent.received_at) <= now)
    failed = WebhookEvent.status == WebhookStatus.FAILED.value
    totals = session.execute(
        select(
            func.count().filter(and_(failed, WebhookEvent.archived == false())).label("awaiting_retry"),
            func.count().filter(WebhookEvent.archived == true()).label("archived"),
            func.avg(WebhookEvent.retry_count).label("average_retries"),
            func.count().filter(due).label("due_now"),
        )
    ).one()
    by_status = {status.value: 0 for status in WebhookStatus}
    for status, count in session.execute(select(WebhookEvent.status, func.count()).group_by(WebhookEvent.status)):
        by_status[status] = int(count)
    return {
        "by_status": by_status,
        "awaiting_retry": int(totals.awaiting_retry),
        "archived": int(totals.archived),
        "average_retries": round(float(totals.average_retries or 0), 2),
        "due_now": int(totals.due_now),
    }


def revive(session: Session, event_row_id: int, *, lease: timedelta) -> bool:
    """Put an archived (given-up) event back in play for ``dlq replay``; False unless it was archived.

    Out of the archive as ``pending``, with a fresh attempt budget (``attempts`` and
    ``retry_count`` 0), due now and leased for ``lease``: the replayed message should
    start it within the lease, and if it never arrives, ``claim_due_for_retry`` hands
    the event to the ticker once the lease runs out. A processed event is left alone.
    """
    now = utcnow()
    statement = (
        update(WebhookEvent)
        .where(
            WebhookEvent.id == event_row_id,
            WebhookEvent.archived == true(),
            WebhookEvent.status == WebhookStatus.FAILED.value,
        )
        .values(
            status=WebhookStatus.PENDING.value,
            archived=False,
            attempts=0,
            retry_count=0,
            last_error=None,
            next_retry_at=now,
            locked_until=now + lease,
            attempt_started_at=None,
            updated_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    return session.execute(statement).rowcount == 1
