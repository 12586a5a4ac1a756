"""Every statement on ``webhook_events``.

The life of an event (see ``WebhookStatus``): the intake stores it ``pending``
under a short lease and enqueues its message; a worker starts an attempt (counted
in ``attempts``, ``retry_count`` = attempts after the first, ``attempt_started_at``
set, leased); the attempt ends ``processed``, or ``failed`` with ``next_retry_at``
and ``last_error``; when the pipeline gives up, ``failed`` and ``archived``.

``locked_until`` is the one answer to "is somebody handling this event?": the
intake's message, a running attempt, or a retry message waiting in RabbitMQ each
hold it (the last until ``next_retry_at`` plus the lease). Once it runs out the
event's message is taken as lost and the next claim hands it to the ticker. The
statements of that lifecycle are ``storage.leases``'s, run on ``TABLE``.

An event is stored once per (provider, event_id), and an event already stored
under another provider with the same payload is refused: providers that share a
secret verify each other's signed requests, so that is a replay of one request
to another path, not a second event (``store``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Optional

from sqlalchemy import ColumnElement, and_, false, func, or_, select, text, true, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from storage.clock import utcnow
from storage.errors import MinaleshError, StorageError
from storage.leases import LeasedTable
from storage.models import WebhookEvent, WebhookStatus
from storage.rowcount import rows_affected

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


def _unhandled(now: datetime) -> Any:
    """Open, due, and nobody's: its lease ran out, so its message was lost.

    Covers failed events past ``next_retry_at`` whose retry message never came,
    stored events whose intake message was never sent, and attempts whose worker died.
    """
    return and_(
        _IS_OPEN,
        or_(WebhookEvent.locked_until.is_(None), WebhookEvent.locked_until < now),
        or_(WebhookEvent.next_retry_at.is_(None), WebhookEvent.next_retry_at <= now),
    )


_IS_OPEN = and_(WebhookEvent.archived == false(), WebhookEvent.status.in_(_OPEN))

#: ``webhook_events``' spelling of the leased lifecycle; the oldest due event is claimed first.
TABLE: LeasedTable[EventData] = LeasedTable(
    model=WebhookEvent,
    open=_IS_OPEN,
    running=WebhookEvent.attempt_started_at.is_not(None),
    next_attempt_at=WebhookEvent.next_retry_at,
    startable=lambda _now: true(),
    claimable=_unhandled,
    claim_order=(func.coalesce(WebhookEvent.next_retry_at, WebhookEvent.received_at), WebhookEvent.id),
    unstarted=and_(_IS_OPEN, WebhookEvent.attempt_started_at.is_(None)),
    given_up=and_(WebhookEvent.archived == true(), WebhookEvent.status == WebhookStatus.FAILED.value),
    claimed_values={},
    released_values={},
    attempt_values=lambda now: {"attempt_started_at": now},
    retry_values={"status": WebhookStatus.FAILED.value, "attempt_started_at": None},
    given_up_values={"status": WebhookStatus.FAILED.value, "archived": True, "attempt_started_at": None},
    revived_values=lambda now: {
        "status": WebhookStatus.PENDING.value,
        "archived": False,
        "next_retry_at": now,
        "attempt_started_at": None,
    },
    snapshot=EventData.from_row,
)


#: The first key of the advisory locks ``store`` takes per event id (the second is the id's hash);
#: two-key locks never meet the migrations' one-key lock.
EVENT_LOCK_SPACE = 746_271_002


class ReplayedFromAnotherProvider(MinaleshError):
    """The same event (event id and payload) is stored under another provider: this is a replay of its request."""

    def __init__(self, *, event_id: str, provider: str, stored_under: str) -> None:
        super().__init__(f"event {event_id} for {provider} is stored under {stored_under} already")
        self.event_id = event_id
        self.provider = provider
        self.stored_under = stored_under


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

    ``ReplayedFromAnotherProvider`` if another provider's row has this event id
    and this very payload. Copies racing on several paths queue on an advisory
    lock of the event id, so the first to commit is the event and the others see
    it. That lock is PostgreSQL's: on the dev mode's SQLite, copies racing within
    the same milliseconds may still both be stored.
    """
    _lock_event_id(session, event_id)
    stored_under = _same_event_elsewhere(
        session, provider=provider, event_id=event_id, payload=payload, order_id=order_id
    )
    if stored_under is not None:
        raise ReplayedFromAnotherProvider(event_id=event_id, provider=provider, stored_under=stored_under)
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


def _lock_event_id(session: Session, event_id: str) -> None:
    """Hold, until the transaction ends, the advisory lock of ``event_id`` (PostgreSQL only)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(
            text("SELECT pg_advisory_xact_lock(:space, hashtext(:event_id))"),
            {"space": EVENT_LOCK_SPACE, "event_id": event_id},
        )


def _same_event_elsewhere(
    session: Session, *, provider: str, event_id: str, payload: dict[str, Any], order_id: Optional[str]
) -> Optional[str]:
    """The other provider under which this event id is stored with this payload, or None.

    The payloads are compared as decoded JSON, so the stored ``jsonb`` (which keeps
    neither spacing nor key order) matches the body it came from. The order id
    narrows the look-up to the order's few events, on its index.
    """
    statement = select(WebhookEvent.provider, WebhookEvent.payload).where(
        WebhookEvent.order_id == order_id, WebhookEvent.event_id == event_id, WebhookEvent.provider != provider
    )
    for other, stored in session.execute(statement):
        if stored == payload:
            return str(other)
    return None


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
    return rows_affected(session, statement) == 1


def get(session: Session, event_row_id: int) -> Optional[WebhookEvent]:
    """The row of ``event_row_id``, or None."""
    return session.get(WebhookEvent, event_row_id)


def describe(session: Session, event_row_id: int) -> Optional[dict[str, Any]]:
    """``dlq show``: the event's state now, as JSON-ready values; None if it is gone."""
    row = get(session, event_row_id)
    if row is None:
        return None
    return {
        "kind": "webhook event",
        "id": row.id,
        "status": f"{row.status}, archived" if row.archived else row.status,
        "provider": row.provider,
        "event_id": row.event_id,
        "type": row.type,
        "order_id": row.order_id,
        "attempts": row.attempts,
        "retry_count": row.retry_count,
        "last_error": row.last_error,
        "processed_at": row.processed_at,
        "updated_at": row.updated_at,
    }


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
    is_open = _IS_OPEN
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


def event_or_order(search: str) -> ColumnElement[bool]:
    """Events whose provider event id or order id is ``search`` (both indexed)."""
    return or_(WebhookEvent.event_id == search, WebhookEvent.order_id == search)


def page(
    session: Session,
    *,
    status: Optional[str] = None,
    provider: Optional[str] = None,
    search: Optional[str] = None,
    before_id: Optional[int] = None,
    limit: int = 50,
) -> list[WebhookEvent]:
    """Events newest first, below ``before_id`` (keyset paging); ``search`` is an event id or an order id."""
    statement = select(WebhookEvent)
    if status is not None:
        statement = statement.where(WebhookEvent.status == status)
    if provider is not None:
        statement = statement.where(WebhookEvent.provider == provider)
    if search:
        statement = statement.where(event_or_order(search))
    if before_id is not None:
        statement = statement.where(WebhookEvent.id < before_id)
    return list(session.scalars(statement.order_by(WebhookEvent.id.desc()).limit(limit)))
