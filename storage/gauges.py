"""The grouped counts the ``/metrics`` endpoint reads.

Each statement is answered from an index, and the rows that only pile up (sent and
failed emails, processed or archived events) are counted apart from the live ones,
so that a scrape can count the live rows every time, at a cost that grows with what
is unsent or open, not with the table (``python -m bench.metrics_scrape`` measures
it on a million emails): emails by status and priority from a range of
``ix_email_queue_claim`` (status, priority, id); the oldest due email from the first
entry of ``ix_email_queue_due_since``; webhook events from ``ix_webhook_events_due``
(archived, status, …); reservations from ``ix_inventory_reservations_due`` (status,
expires_at); dead letters from ``ix_dead_letters_queue_actor``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Optional

from sqlalchemy import and_, false, func, or_, select, true
from sqlalchemy.orm import Session

from storage import emails
from storage.models import (
    DeadLetter,
    EmailQueue,
    EmailStatus,
    InventoryReservation,
    ReservationStatus,
    WebhookEvent,
    WebhookStatus,
)

#: The final statuses: their rows only pile up.
SETTLED = (EmailStatus.SENT.value, EmailStatus.FAILED.value, EmailStatus.SUPPRESSED.value)
#: Events done with: processed, or archived (given up). Their rows only pile up.
_EVENT_SETTLED = or_(WebhookEvent.archived == true(), WebhookEvent.status == WebhookStatus.PROCESSED.value)
#: The others, spelt as a range of ``ix_webhook_events_due`` (archived, status, …).
_EVENT_OPEN = and_(
    WebhookEvent.archived == false(),
    WebhookEvent.status.in_([WebhookStatus.PENDING.value, WebhookStatus.FAILED.value]),
)


@dataclass(frozen=True)
class Reservations:
    """Reservations holding stock, and those of them past their expiry (the cleanup's backlog)."""

    active: int
    expired_not_released: int


def emails_by_status_and_priority(session: Session, statuses: tuple[str, ...]) -> dict[tuple[str, str], int]:
    """{(status, priority): emails} of ``statuses`` (``UNSENT`` or ``SETTLED``)."""
    statement = (
        select(EmailQueue.status, EmailQueue.priority, func.count())
        .where(EmailQueue.status.in_(statuses))
        .group_by(EmailQueue.status, EmailQueue.priority)
    )
    return {(status, priority): int(count) for status, priority, count in session.execute(statement)}


def sent_by_provider(session: Session) -> dict[tuple[str], int]:
    """{(provider,): emails sent} (``email_queue.provider``; ``unknown`` for those sent before it was stored)."""
    statement = (
        select(func.coalesce(EmailQueue.provider, "unknown"), func.count())
        .where(EmailQueue.status == EmailStatus.SENT.value)
        .group_by(func.coalesce(EmailQueue.provider, "unknown"))
    )
    return {(str(provider),): int(count) for provider, count in session.execute(statement)}


def oldest_due_email_since(session: Session, *, now: datetime) -> Optional[datetime]:
    """Since when the longest-waiting unsent email has been due (``emails.oldest_due``); None when none is."""
    oldest = emails.oldest_due(session, now=now)
    return oldest[1] if oldest is not None else None


def webhook_events_by_status(session: Session, *, settled: bool) -> dict[tuple[str, bool], int]:
    """{(status, archived): events}, of the settled events (processed or archived) or of the open ones."""
    statement = (
        select(WebhookEvent.status, WebhookEvent.archived, func.count())
        .where(_EVENT_SETTLED if settled else _EVENT_OPEN)
        .group_by(WebhookEvent.status, WebhookEvent.archived)
    )
    return {(status, bool(archived)): int(count) for status, archived, count in session.execute(statement)}


def reservations(session: Session, *, now: datetime) -> Reservations:
    """Active reservations, and the active ones already past ``expires_at``."""
    statement = select(func.count(), func.count().filter(InventoryReservation.expires_at < now)).where(
        InventoryReservation.status == ReservationStatus.ACTIVE.value
    )
    active, expired = session.execute(statement).one()
    return Reservations(active=int(active), expired_not_released=int(expired))


def dead_letters_by_queue_and_actor(session: Session) -> dict[tuple[str, Optional[str]], int]:
    """{(queue, actor): dead letters}; the actor is None for a body kept raw."""
    statement = select(DeadLetter.queue, DeadLetter.actor, func.count()).group_by(DeadLetter.queue, DeadLetter.actor)
    return {(queue, actor): int(count) for queue, actor, count in session.execute(statement)}
