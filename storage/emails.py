"""Every statement on ``email_queue``.

The life of a row (see ``EmailStatus``): the host inserts it ``pending``; a fan-out
claims it (``queued``, leased); a worker starts an attempt (``sending``, leased,
counted); the attempt ends ``sent``, ``retrying`` (with ``next_attempt_at``) or,
when the pipeline gives up, ``failed``. A lease that runs out means the message
carrying the email was lost, and the next fan-out claims it again.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Optional

from sqlalchemy import and_, case, func, or_, select, update
from sqlalchemy.orm import Session

from storage.attempts import Attempt, AttemptOutcome
from storage.clock import utcnow
from storage.errors import StorageError
from storage.models import EmailQueue, EmailStatus

_LIVE = (EmailStatus.PENDING, EmailStatus.QUEUED, EmailStatus.SENDING, EmailStatus.RETRYING)
_LEASED = (EmailStatus.QUEUED, EmailStatus.SENDING, EmailStatus.RETRYING)


class InvalidEmail(StorageError, ValueError):
    """The email cannot be queued as given."""


@dataclass(frozen=True, kw_only=True)
class EmailMessage:
    """What a worker needs to send one email."""

    id: int
    recipient: str
    subject: str
    html: Optional[str]
    text: Optional[str]
    template: Optional[str]
    template_data: Optional[dict[str, Any]]
    retry_count: int
    attempts: int
    created_at: datetime

    @classmethod
    def from_row(cls, row: EmailQueue) -> EmailMessage:
        return cls(
            id=row.id,
            recipient=row.recipient,
            subject=row.subject,
            html=row.html,
            text=row.text,
            template=row.template,
            template_data=row.template_data,
            retry_count=row.retry_count,
            attempts=row.attempts,
            created_at=row.created_at,
        )


def enqueue(
    session: Session,
    *,
    recipient: str,
    subject: str,
    html: Optional[str] = None,
    text: Optional[str] = None,
    template: Optional[str] = None,
    template_data: Optional[dict[str, Any]] = None,
    scheduled_at: Optional[datetime] = None,
    claim_for: Optional[timedelta] = None,
) -> int:
    """Insert an email and return its id.

    With ``claim_for`` the row starts ``queued`` under a lease of that length: the
    caller is about to send its message itself (so the email must be due), and the
    lease hands it to the next fan-out should that message never be sent.
    """
    _validate(recipient, subject, html, text, template)
    now = utcnow()
    claimed = claim_for is not None
    row = EmailQueue(
        recipient=recipient.strip(),
        subject=subject,
        html=html,
        text=text,
        template=template,
        template_data=template_data,
        scheduled_at=scheduled_at,
        status=(EmailStatus.QUEUED if claimed else EmailStatus.PENDING).value,
        locked_until=now + claim_for if claim_for is not None else None,
        updated_at=now,
    )
    session.add(row)
    session.flush()
    return row.id


def _validate(
    recipient: str, subject: str, html: Optional[str], text: Optional[str], template: Optional[str]
) -> None:
    if "@" not in (recipient or ""):
        raise InvalidEmail(f"recipient {recipient!r} is not an email address")
    if not subject:
        raise InvalidEmail("subject is empty")
    if html is None and text is None and template is None:
        raise InvalidEmail("an email needs html, text or a template")


def _due_condition(now: datetime) -> Any:
    """Pending and due, or leased and the lease ran out (its message was lost)."""
    return or_(
        and_(
            EmailQueue.status == EmailStatus.PENDING.value,
            or_(EmailQueue.scheduled_at.is_(None), EmailQueue.scheduled_at <= now),
        ),
        and_(
            EmailQueue.status.in_([s.value for s in _LEASED]),
            EmailQueue.locked_until < now,
        ),
    )


def claim_due(session: Session, *, lease: timedelta, limit: int) -> list[int]:
    """Claim up to ``limit`` due emails in one statement and return their ids.

    ``FOR UPDATE SKIP LOCKED`` makes concurrent claimers (two tickers, a tick and a
    manual tick) take disjoint sets; the lease keeps a claimed email from being
    claimed again until its message had every chance to arrive. The locking select
    is a MATERIALIZED CTE: as ``WHERE id IN (subquery)`` PostgreSQL may run the
    subquery once per row and claim more than ``limit``.
    """
    now = utcnow()
    due = (
        select(EmailQueue.id)
        .where(_due_condition(now))
        .order_by(EmailQueue.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
        .cte("due")
        .prefix_with("MATERIALIZED")
    )
    statement = (
        update(EmailQueue)
        .where(EmailQueue.id == due.c.id)
        .values(status=EmailStatus.QUEUED.value, locked_until=now + lease, updated_at=now)
        .returning(EmailQueue.id)
        .execution_options(synchronize_session=False)
    )
    return sorted(session.scalars(statement))


def release_claims(session: Session, email_ids: list[int]) -> int:
    """Hand claimed emails whose message could not be sent back to the next fan-out."""
    if not email_ids:
        return 0
    statement = (
        update(EmailQueue)
        .where(EmailQueue.id.in_(email_ids), EmailQueue.status == EmailStatus.QUEUED.value)
        .values(status=EmailStatus.PENDING.value, locked_until=None, updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    return session.execute(statement).rowcount


def start_attempt(
    session: Session, email_id: int, *, lease: timedelta, max_attempts: int
) -> Attempt[EmailMessage]:
    """Count one attempt at sending ``email_id`` unless there is nothing to do.

    The count lives in the row, not in the message, so a worker that dies mid-send
    (RabbitMQ redelivers; Dramatiq never saw a failure) still uses up an attempt.
    """
    now = utcnow()
    startable = and_(
        EmailQueue.id == email_id,
        EmailQueue.status.in_([s.value for s in _LIVE]),
        or_(EmailQueue.status != EmailStatus.SENDING.value, EmailQueue.locked_until < now),
        or_(
            EmailQueue.status != EmailStatus.RETRYING.value,
            EmailQueue.next_attempt_at.is_(None),
            EmailQueue.next_attempt_at <= now,
        ),
        or_(
            EmailQueue.status != EmailStatus.PENDING.value,
            EmailQueue.scheduled_at.is_(None),
            EmailQueue.scheduled_at <= now,
        ),
    )
    statement = (
        update(EmailQueue)
        .where(startable)
        .values(
            status=EmailStatus.SENDING.value,
            attempts=EmailQueue.attempts + 1,
            retry_count=_retry_count_after(EmailQueue.attempts + 1, max_attempts),
            locked_until=now + lease,
            updated_at=now,
        )
        .returning(EmailQueue)
        .execution_options(synchronize_session=False)
    )
    row = session.scalars(statement).one_or_none()
    if row is None:
        return Attempt(AttemptOutcome.SKIP)
    email = EmailMessage.from_row(row)
    if email.attempts > max_attempts:
        return Attempt(AttemptOutcome.EXHAUSTED, email)
    return Attempt(AttemptOutcome.GO, email)


def _retry_count_after(attempts: Any, max_attempts: int) -> Any:
    """Retries made once ``attempts`` attempts have started, never above the allowed."""
    return case((attempts > max_attempts, max_attempts - 1), else_=attempts - 1)


def mark_sent(session: Session, email_id: int, provider_message_id: Optional[str]) -> bool:
    """Record the provider's acceptance; False if the email was not being sent."""
    now = utcnow()
    statement = (
        update(EmailQueue)
        .where(EmailQueue.id == email_id, EmailQueue.status == EmailStatus.SENDING.value)
        .values(
            status=EmailStatus.SENT.value,
            provider_message_id=provider_message_id,
            sent_at=now,
            last_error=None,
            locked_until=None,
            next_attempt_at=None,
            updated_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    return session.execute(statement).rowcount == 1


def schedule_retry(
    session: Session, email_id: int, *, error: str, delay: timedelta, lease: timedelta, refund: bool
) -> bool:
    """Record a failed attempt and when the next one is due.

    ``refund`` gives the attempt back (the provider rate-limited us: the email
    itself did nothing wrong). The lease runs until the retry is due plus ``lease``,
    so the fan-out does not claim an email whose retry message is merely waiting.
    """
    now = utcnow()
    values: dict[str, Any] = {
        "status": EmailStatus.RETRYING.value,
        "last_error": error,
        "next_attempt_at": now + delay,
        "locked_until": now + delay + lease,
        "updated_at": now,
    }
    if refund:
        values["attempts"] = EmailQueue.attempts - 1
        values["retry_count"] = case((EmailQueue.attempts > 1, EmailQueue.attempts - 2), else_=0)
    statement = (
        update(EmailQueue)
        .where(EmailQueue.id == email_id, EmailQueue.status.in_([s.value for s in _LIVE]))
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    return session.execute(statement).rowcount == 1


def mark_failed(session: Session, email_id: int, *, error: str) -> bool:
    """Give up on an email (idempotent; a sent email stays sent)."""
    now = utcnow()
    statement = (
        update(EmailQueue)
        .where(EmailQueue.id == email_id, EmailQueue.status.in_([s.value for s in _LIVE]))
        .values(
            status=EmailStatus.FAILED.value,
            last_error=error,
            locked_until=None,
            next_attempt_at=None,
            updated_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    return session.execute(statement).rowcount == 1


def get(session: Session, email_id: int) -> Optional[EmailQueue]:
    """The row of ``email_id``, or None."""
    return session.get(EmailQueue, email_id)


def count_by_status(session: Session) -> dict[str, int]:
    """The monitoring query: ``SELECT status, COUNT(*) FROM email_queue GROUP BY status``."""
    rows = session.execute(select(EmailQueue.status, func.count()).group_by(EmailQueue.status))
    return {status: count for status, count in rows}


def revive(session: Session, email_id: int, *, lease: timedelta) -> bool:
    """Put a given-up email back in play for a replayed message; False unless it was ``failed``.

    The email starts over: ``queued`` with a fresh attempt budget (``attempts`` and
    ``retry_count`` 0) and no ``last_error``, leased for ``lease``. The replayed
    message should start it within the lease; if that message is never enqueued,
    the lease runs out and the next fan-out (``claim_due``) sends it. A ``sent``
    email (or one some other path already revived) is left alone: nothing is sent twice.
    """
    now = utcnow()
    statement = (
        update(EmailQueue)
        .where(EmailQueue.id == email_id, EmailQueue.status == EmailStatus.FAILED.value)
        .values(
            status=EmailStatus.QUEUED.value,
            attempts=0,
            retry_count=0,
            last_error=None,
            next_attempt_at=None,
            locked_until=now + lease,
            updated_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    return session.execute(statement).rowcount == 1
