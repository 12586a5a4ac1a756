"""Every statement on ``email_queue``.

The life of a row (see ``EmailStatus``): the host inserts it ``pending``; a fan-out
claims it (``queued``, leased); a worker starts an attempt (``sending``, leased,
counted); the attempt ends ``sent``, ``retrying`` (with ``next_attempt_at``) or,
when the pipeline gives up, ``failed``. A lease that runs out means the message
carrying the email was lost, and the next fan-out claims it again. The statements
of that lifecycle are ``storage.leases``'s, run on ``TABLE``; this module holds
what is the email's own.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Optional

from sqlalchemy import BigInteger, ColumnElement, Text, and_, bindparam, func, or_, select, update
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session

from storage import leases, suppressions
from storage.clock import utcnow
from storage.errors import StorageError
from storage.leases import LeasedTable, Now
from storage.models import BigId, EmailPriority, EmailQueue, EmailStatus, UtcDateTime
from storage.rowcount import rows_affected

#: The label under which an attempt's UPDATE returns the recipient's suppression reason.
SUPPRESSED_BECAUSE = "suppressed_because"
_LIVE = (EmailStatus.PENDING, EmailStatus.QUEUED, EmailStatus.SENDING, EmailStatus.RETRYING)
_LEASED = (EmailStatus.QUEUED, EmailStatus.SENDING, EmailStatus.RETRYING)
#: The statuses of an email still to send.
UNSENT = tuple(status.value for status in _LIVE)
#: Since when an email has been due: its retry's time, else its scheduled time, else its creation
#: (``ix_email_queue_due_since`` indexes it over the unsent statuses).
DUE_SINCE = func.coalesce(EmailQueue.next_attempt_at, EmailQueue.scheduled_at, EmailQueue.created_at)


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
    #: As stored, so any JSON a host's SQL wrote; rendering accepts only an object (or None).
    template_data: Any
    retry_count: int
    attempts: int
    created_at: datetime
    priority: str
    #: A provider an earlier attempt may have reached without a clear answer (only it may be asked again).
    maybe_sent_by: Optional[str] = None
    #: Why the recipient is suppressed, read by the attempt's own UPDATE (None: not suppressed, or not read).
    suppressed_because: Optional[str] = None

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
            priority=row.priority,
            maybe_sent_by=row.maybe_sent_by,
            suppressed_because=getattr(row, SUPPRESSED_BECAUSE, None),
        )


def _due(now: Now) -> Any:
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


def _scheduled_time_reached(now: Now) -> Any:
    return or_(
        EmailQueue.status != EmailStatus.PENDING.value,
        EmailQueue.scheduled_at.is_(None),
        EmailQueue.scheduled_at <= now,
    )


#: ``email_queue``'s spelling of the leased lifecycle.
TABLE: LeasedTable[EmailMessage] = LeasedTable(
    model=EmailQueue,
    open=EmailQueue.status.in_([s.value for s in _LIVE]),
    running=EmailQueue.status == EmailStatus.SENDING.value,
    next_attempt_at=EmailQueue.next_attempt_at,
    startable=_scheduled_time_reached,
    claimable=_due,
    claim_order=(EmailQueue.id,),
    unstarted=EmailQueue.status == EmailStatus.QUEUED.value,
    given_up=EmailQueue.status == EmailStatus.FAILED.value,
    claimed_values={"status": EmailStatus.QUEUED.value},
    released_values={"status": EmailStatus.PENDING.value},
    attempt_values=lambda _now: {"status": EmailStatus.SENDING.value},
    retry_values={"status": EmailStatus.RETRYING.value},
    given_up_values={"status": EmailStatus.FAILED.value},
    revived_values=lambda _now: {"status": EmailStatus.QUEUED.value, "next_attempt_at": None},
    snapshot=EmailMessage.from_row,
    # The suppression list read in the attempt's round trip: a send asks for the hold-back's UPDATE only
    # when its recipient is on it, not once per email (#21's per-email path).
    also_returning=(suppressions.reason_for(EmailQueue.recipient).label(SUPPRESSED_BECAUSE),),
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
    priority: EmailPriority = EmailPriority.TRANSACTIONAL,
) -> int:
    """Insert an email and return its id.

    With ``claim_for`` the row starts ``queued`` under a lease of that length: the
    caller is about to send its message itself (so the email must be due), and the
    lease hands it to the next fan-out should that message never be sent.
    """
    _validate(recipient, subject, html, text, template, template_data)
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
        priority=EmailPriority(priority).value,
        sent_alone=claimed,  # its message goes on its own, under its own key
        updated_at=now,
    )
    session.add(row)
    session.flush()
    return row.id


def _validate(
    recipient: str, subject: str, html: Optional[str], text: Optional[str], template: Optional[str], data: object
) -> None:
    if "@" not in (recipient or ""):
        raise InvalidEmail(f"recipient {recipient!r} is not an email address")
    if not subject:
        raise InvalidEmail("subject is empty")
    if html is None and text is None and template is None:
        raise InvalidEmail("an email needs html, text or a template")
    if data is not None and not isinstance(data, dict):
        raise InvalidEmail(f"template_data must be a dict of the template's variables, not {type(data).__name__}")


def _sent(provider_message_id: Any, now: Now, provider: Any = None) -> dict[str, Any]:
    """The columns of an email the provider accepted (values, columns of a VALUES list, or bound parameters)."""
    named = {"provider": provider} if provider is not None else {}
    return {
        **named,
        "status": EmailStatus.SENT.value,
        "provider_message_id": provider_message_id,
        "sent_at": now,
        "last_error": None,
        "locked_until": None,
        "next_attempt_at": None,
        "updated_at": now,
    }


def mark_sent(
    session: Session, email_id: int, provider_message_id: Optional[str], *, provider: Optional[str] = None
) -> bool:
    """Record the provider's acceptance (and which provider); False if the email was not being sent."""
    now = utcnow()
    parameters = {"email_id": email_id, "provider_message_id": provider_message_id, "now": now, "provider": provider}
    return rows_affected(session, _MARK_SENT, parameters) == 1


#: ``mark_sent``'s UPDATE, built once on the table (Core): rebuilt for every email, the expression
#: and its cache key cost more CPU than the round trip, and the ORM's bulk-UPDATE path as much again.
_MARK_SENT = (
    update(EmailQueue.__table__)
    .where(
        EmailQueue.__table__.c.id == bindparam("email_id", type_=BigId),
        EmailQueue.__table__.c.status == EmailStatus.SENDING.value,
    )
    .values(
        **_sent(
            bindparam("provider_message_id", type_=Text),
            bindparam("now", type_=UtcDateTime()),
            bindparam("provider", type_=Text),
        )
    )
)


def mark_sent_many(session: Session, provider_ids: dict[int, str], *, provider: Optional[str] = None) -> int:
    """``mark_sent`` for a batch's or a group's members in one statement: {email id: provider id}; how many changed."""
    if not provider_ids:
        return 0
    if session.get_bind().dialect.name != "postgresql":
        # SQLite has no arrays to unnest: one UPDATE a member (the dev mode's few batches).
        return sum(mark_sent(session, row, sent_as, provider=provider) for row, sent_as in provider_ids.items())
    parameters = {
        "email_ids": list(provider_ids),
        "provider_ids": list(provider_ids.values()),
        "now": utcnow(),
        "provider": provider,
    }
    return rows_affected(session, _mark_sent_many_statement(), parameters)


@functools.cache
def _mark_sent_many_statement() -> Any:
    """``mark_sent_many``'s UPDATE … FROM unnest(ids, provider ids), built once: the members are two arrays.

    A ``VALUES`` list of the members made a new statement (its SQL, its cache key, its
    compilation) for every batch: a fifth of a group's Python CPU (issue 21).
    """
    table = EmailQueue.__table__
    sent = (
        func.unnest(
            bindparam("email_ids", type_=ARRAY(BigInteger)), bindparam("provider_ids", type_=ARRAY(Text))
        )
        .table_valued("email_id", "provider_id")
        .render_derived(name="sent")
    )
    return (
        update(table)
        .where(table.c.id == sent.c.email_id, table.c.status == EmailStatus.SENDING.value)
        .values(
            **_sent(sent.c.provider_id, bindparam("now", type_=UtcDateTime()), bindparam("provider", type_=Text))
        )
    )


def record_maybe_sent(session: Session, email_ids: list[int], *, provider: str, at: datetime) -> None:
    """An attempt at these emails reached ``provider`` and no clear answer came back: only it may be asked again."""
    statement = (
        update(EmailQueue)
        .where(EmailQueue.id.in_(email_ids))
        .values(maybe_sent_by=provider, maybe_sent_at=at)
        .execution_options(synchronize_session=False)
    )
    session.execute(statement)


def hand_back(session: Session, email_ids: list[int], *, holder: Optional[str]) -> int:
    """Every provider is paused for an outage: the emails back to the next claim, their attempt given back.

    ``leases.hand_back`` on ``TABLE``. An email left with no counted attempt and no
    provider that may have seen it was never offered under its own key, so it may
    join a batch at its next claim (``storage.batches.plan``): the backlog of an
    outage drains in batches, not one request per email.
    """
    count = leases.hand_back(TABLE, session, email_ids, holder=holder)
    statement = (
        update(EmailQueue)
        .where(
            EmailQueue.id.in_(email_ids),
            EmailQueue.status == EmailStatus.PENDING.value,
            EmailQueue.batch_id.is_(None),
            EmailQueue.attempts == 0,
            EmailQueue.maybe_sent_by.is_(None),
        )
        .values(sent_alone=False)
        .execution_options(synchronize_session=False)
    )
    session.execute(statement)
    return count


def last_reached(session: Session, email_ids: leases.Rows) -> Optional[tuple[str, datetime]]:
    """The provider an attempt at these emails last may have reached (no clear answer), and when; None."""
    ids = [email_ids] if isinstance(email_ids, int) else list(email_ids)
    statement = (
        select(EmailQueue.maybe_sent_by, EmailQueue.maybe_sent_at)
        .where(EmailQueue.id.in_(ids), EmailQueue.maybe_sent_by.is_not(None), EmailQueue.maybe_sent_at.is_not(None))
        .order_by(EmailQueue.maybe_sent_at.desc())
        .limit(1)
    )
    row = session.execute(statement).one_or_none()
    if row is None or row[1] is None:
        return None
    return str(row[0]), row[1]


def in_flight(session: Session) -> int:
    """Emails claimed or being sent under a live lease: what the limiter still has to let through."""
    now = utcnow()
    statement = select(func.count()).where(
        EmailQueue.status.in_([EmailStatus.QUEUED.value, EmailStatus.SENDING.value]),
        EmailQueue.locked_until > now,
    )
    return int(session.scalar(statement) or 0)


def of_priority(priority: EmailPriority) -> Any:
    """The claim filter of one priority."""
    return EmailQueue.priority == priority.value


def rows(session: Session, email_ids: list[int]) -> list[EmailQueue]:
    """These emails' rows, by id."""
    return list(session.scalars(select(EmailQueue).where(EmailQueue.id.in_(email_ids)).order_by(EmailQueue.id)))


def get(session: Session, email_id: int) -> Optional[EmailQueue]:
    """The row of ``email_id``, or None."""
    return session.get(EmailQueue, email_id)


def describe(session: Session, email_id: int) -> Optional[dict[str, Any]]:
    """``dlq show``: the email's state now, as JSON-ready values; None if it is gone."""
    row = get(session, email_id)
    if row is None:
        return None
    return {
        "kind": "email",
        "id": row.id,
        "status": row.status,
        "recipient": row.recipient,
        "subject": row.subject,
        "attempts": row.attempts,
        "retry_count": row.retry_count,
        "last_error": row.last_error,
        "sent_at": row.sent_at,
        "updated_at": row.updated_at,
    }


def describe_all(session: Session, email_ids: Sequence[int]) -> tuple[list[dict[str, Any]], str]:
    """``describe`` of each email of a batch or a group, and their statuses in one word ("sent, failed")."""
    members = [found for found in (describe(session, email_id) for email_id in email_ids) if found]
    statuses = sorted({str(member["status"]) for member in members})
    return members, ", ".join(statuses) or "empty"


def count_by_status(session: Session) -> dict[str, int]:
    """The monitoring query: ``SELECT status, COUNT(*) FROM email_queue GROUP BY status``."""
    rows = session.execute(select(EmailQueue.status, func.count()).group_by(EmailQueue.status))
    return {status: count for status, count in rows}


def count_by_priority(session: Session) -> dict[str, dict[str, int]]:
    """Emails still to send by priority and status: every priority and every live status (pending, queued,
    sending, retrying) is there, 0 when none. Sent and failed are left out: counting them would read the
    whole table again."""
    statement = (
        select(EmailQueue.priority, EmailQueue.status, func.count())
        .where(EmailQueue.status.in_([s.value for s in _LIVE]))
        .group_by(EmailQueue.priority, EmailQueue.status)
    )
    counts = {priority.value: {status.value: 0 for status in _LIVE} for priority in EmailPriority}
    for priority, status, count in session.execute(statement):
        counts.setdefault(priority, {})[status] = int(count)
    return counts


# --- the ops API's reads (indexes of migration 0009) ---------------------------------------------

#: What a list of emails shows: everything but the bodies, which can be large.
LISTED = (
    EmailQueue.id,
    EmailQueue.recipient,
    EmailQueue.subject,
    EmailQueue.status,
    EmailQueue.priority,
    EmailQueue.retry_count,
    EmailQueue.attempts,
    EmailQueue.scheduled_at,
    EmailQueue.next_attempt_at,
    EmailQueue.created_at,
    EmailQueue.sent_at,
    EmailQueue.updated_at,
    EmailQueue.last_error,
    EmailQueue.template,
    EmailQueue.provider_message_id,
    EmailQueue.batch_id,
    EmailQueue.delivery_status,
    EmailQueue.provider,
    EmailQueue.maybe_sent_by,
)


def page(
    session: Session,
    *,
    recipient_prefix: Optional[str] = None,
    status: Optional[str] = None,
    priority: Optional[str] = None,
    before_id: Optional[int] = None,
    limit: int = 50,
) -> list[dict[str, Any]]:
    """Emails newest first, below ``before_id`` (keyset paging), matching every filter given.

    ``recipient_prefix`` matches the start of the address, case-insensitively (a whole
    address matches itself): an index range on ``lower(recipient)``.
    """
    statement = select(*LISTED)
    if recipient_prefix:
        statement = statement.where(recipient_starts_with(recipient_prefix))
    if status is not None:
        statement = statement.where(EmailQueue.status == status)
    if priority is not None:
        statement = statement.where(EmailQueue.priority == priority)
    if before_id is not None:
        statement = statement.where(EmailQueue.id < before_id)
    statement = statement.order_by(EmailQueue.id.desc()).limit(limit)
    return [dict(row._mapping) for row in session.execute(statement)]


def recipient_starts_with(prefix: str) -> ColumnElement[bool]:
    """Emails whose recipient starts with ``prefix``, any case: an index range on ``lower(recipient)``."""
    return func.lower(EmailQueue.recipient).like(escape_like(prefix.strip().lower()) + "%", escape="\\")


def escape_like(text: str) -> str:
    """``text`` matched literally inside a LIKE pattern (escape character: backslash)."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def activity(session: Session, *, since: datetime) -> dict[datetime, dict[str, int]]:
    """Per minute since ``since``: emails sent (``sent_at``) and emails given up (failed, by ``updated_at``).

    PostgreSQL only (``date_trunc``): the ops API is not served by ``dev``.
    """
    counts: dict[datetime, dict[str, int]] = {}
    given_up = and_(EmailQueue.status == EmailStatus.FAILED.value, EmailQueue.updated_at >= since)
    for name, moment, only in (
        ("sent", EmailQueue.sent_at, EmailQueue.sent_at >= since),
        ("failed", EmailQueue.updated_at, given_up),
    ):
        minute = func.date_trunc("minute", moment)
        for at, count in session.execute(select(minute, func.count()).where(only).group_by(minute)):
            counts.setdefault(at, {"sent": 0, "failed": 0})[name] = int(count)
    return counts


def oldest_due(session: Session, *, now: datetime) -> Optional[tuple[int, datetime]]:
    """The unsent email that has waited longest since it came due: its id and since when.

    The one definition behind the ops API's ``oldest_due_email`` and the
    ``minalesh_oldest_due_email_age_seconds`` gauge, read from the first entry of
    ``ix_email_queue_due_since``.
    """
    statement = (
        select(EmailQueue.id, DUE_SINCE)
        .where(EmailQueue.status.in_(UNSENT), DUE_SINCE <= now)
        .order_by(DUE_SINCE)
        .limit(1)
    )
    row = session.execute(statement).one_or_none()
    return (int(row[0]), row[1]) if row is not None else None
