"""The grouped counts the ``/metrics`` endpoint reads at every scrape.

Each statement is answered from an index, so a scrape stays cheap however many
rows the tables hold (``python -m bench.metrics_scrape`` measures it on a million
emails): emails by status and priority from ``ix_email_queue_claim`` (status,
priority, id); the oldest due email through ``ix_email_queue_due``, over the
unsent statuses only; webhook events from ``ix_webhook_events_due`` (archived,
status, …); reservations from ``ix_inventory_reservations_due`` (status,
expires_at); dead letters from ``ix_dead_letters_queue_actor``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Optional

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from storage.models import DeadLetter, EmailQueue, EmailStatus, InventoryReservation, ReservationStatus, WebhookEvent

#: The statuses of an email still to send.
_UNSENT = [
    status.value for status in (EmailStatus.PENDING, EmailStatus.QUEUED, EmailStatus.SENDING, EmailStatus.RETRYING)
]


@dataclass(frozen=True)
class Reservations:
    """Reservations holding stock, and those of them past their expiry (the cleanup's backlog)."""

    active: int
    expired_not_released: int


def emails_by_status_and_priority(session: Session) -> dict[tuple[str, str], int]:
    """{(status, priority): emails}."""
    statement = select(EmailQueue.status, EmailQueue.priority, func.count()).group_by(
        EmailQueue.status, EmailQueue.priority
    )
    return {(status, priority): int(count) for status, priority, count in session.execute(statement)}


def oldest_due_email_since(session: Session, *, now: datetime) -> Optional[datetime]:
    """Since when the longest-waiting unsent email has been due; None when none is.

    An email is due from its ``next_attempt_at`` (a retry), else its ``scheduled_at``,
    else its creation; queued and sending ones count too, since they are not sent yet.
    """
    due_since = func.coalesce(EmailQueue.next_attempt_at, EmailQueue.scheduled_at, EmailQueue.created_at)
    statement = select(func.min(due_since)).where(EmailQueue.status.in_(_UNSENT), due_since <= now)
    return session.execute(statement).scalar_one()


def webhook_events_by_status(session: Session) -> dict[tuple[str, bool], int]:
    """{(status, archived): events}."""
    statement = select(WebhookEvent.status, WebhookEvent.archived, func.count()).group_by(
        WebhookEvent.status, WebhookEvent.archived
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
