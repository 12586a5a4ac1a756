"""Every statement on ``email_events``, and what a delivery event does to its email.

Resend tells what became of a sent email by webhook (``pipeline.web.email_events``
verifies them). Each event is stored once per ``svix_id`` with its raw payload and
linked to its email by ``data.email_id`` (our ``provider_message_id``; a batch's
members each have their own). Then, in the same transaction:

* ``email_queue.delivery_status`` follows it (``STATUS_OF``), only ever up
  ``DELIVERY_RANK``: events come at least once and in any order, so an older
  ``delivered`` after a ``bounced`` leaves ``bounced``;
* a permanent bounce, a complaint and the provider's ``email.suppressed`` put the
  recipient on ``email_suppressions`` (``storage.suppressions``); a temporary bounce
  is recorded and suppresses nothing;
* ``opened``, ``clicked``, ``sent``, ``scheduled`` and ``failed`` are recorded only.

An event for an email id no row carries (another system on the same account, or an
event that beat our own commit of the send) is kept with ``email_id`` NULL and
counted (``unmatched``); its addresses (``data.to``) are still suppressed, since the
account's reputation is the shop's whatever sent the email.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Optional

from sqlalchemy import case, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from storage import suppressions
from storage.clock import utcnow
from storage.models import DELIVERY_RANK, DeliveryRateAlert, DeliveryStatus, EmailEvent, EmailQueue, EmailStatus
from storage.payments import MAX_DEPTH, _depth, _unstorable_text
from storage.rowcount import rows_affected

#: The event types taken; any other is refused (subscribe the endpoint to these only).
EVENT_TYPES = (
    "email.sent",
    "email.scheduled",
    "email.delivered",
    "email.delivery_delayed",
    "email.bounced",
    "email.complained",
    "email.suppressed",
    "email.opened",
    "email.clicked",
    "email.failed",
)
#: The delivery status each event type moves its email to (the others are recorded only).
STATUS_OF = {
    "email.delivered": DeliveryStatus.DELIVERED,
    "email.delivery_delayed": DeliveryStatus.DELIVERY_DELAYED,
    "email.bounced": DeliveryStatus.BOUNCED,
    "email.complained": DeliveryStatus.COMPLAINED,
    "email.suppressed": DeliveryStatus.SUPPRESSED,
}
#: The suppression reason each suppressing event type gives.
SUPPRESSING = {"email.bounced": "bounced", "email.complained": "complained", "email.suppressed": "suppressed"}
#: The bounce types that suppress nothing (Resend: ``Temporary``; older payloads: ``Transient``).
TEMPORARY_BOUNCES = frozenset({"temporary", "transient"})
#: The longest ``data.email_id`` and ``svix-id`` taken (Resend's are UUIDs, Svix's ``msg_`` + 27).
MAX_ID_LENGTH = 200
#: Recipients of one event suppressed at most (Resend: 50 ``to`` per email).
MAX_RECIPIENTS = 50
#: Resend's acceptable-use thresholds: above them an account may be paused without warning.
BOUNCE_RATE_LIMIT = 0.04
COMPLAINT_RATE_LIMIT = 0.0008
#: Fewer sends than this in a window make any rate (one bounce in ten is 10%): no alert below it.
MIN_SENDS_FOR_ALERT = 100
#: The two windows the rates are read over.
WINDOWS = {"24h": timedelta(hours=24), "7d": timedelta(days=7)}


class InvalidDeliveryEvent(ValueError):
    """The body is not a delivery event this intake takes; the message names what is wrong."""


@dataclass(frozen=True, kw_only=True)
class DeliveryEvent:
    """A verified body, checked: what storing it needs."""

    svix_id: str
    type: str
    provider_message_id: str
    occurred_at: Optional[datetime]
    #: ``data.bounce.type`` lower-cased, for ``email.bounced``.
    bounce_type: Optional[str]
    #: ``data.to``, the addresses the event is about.
    recipients: tuple[str, ...]
    payload: dict[str, Any] = field(repr=False)

    @property
    def status(self) -> Optional[DeliveryStatus]:
        """The delivery status this event moves its email to, if any."""
        if self.type == "email.bounced" and self.bounce_type in TEMPORARY_BOUNCES:
            return None
        return STATUS_OF.get(self.type)

    @property
    def suppression_reason(self) -> Optional[str]:
        """Why this event suppresses its recipient, or None when it does not."""
        if self.type == "email.bounced" and self.bounce_type in TEMPORARY_BOUNCES:
            return None
        reason = SUPPRESSING.get(self.type)
        if reason == "bounced" and self.bounce_type:
            return f"bounced ({self.bounce_type})"
        return reason


def parse_event(svix_id: str, payload: Any) -> DeliveryEvent:
    """The event in an already parsed body, or ``InvalidDeliveryEvent`` naming what is wrong."""
    if not svix_id or len(svix_id) > MAX_ID_LENGTH:
        raise InvalidDeliveryEvent("svix-id is missing or too long")
    if not isinstance(payload, dict):
        raise InvalidDeliveryEvent("body must be a JSON object")
    if _depth(payload) > MAX_DEPTH:
        raise InvalidDeliveryEvent(f"body is nested more than {MAX_DEPTH} levels deep")
    unstorable = _unstorable_text(payload)
    if unstorable is not None:
        raise InvalidDeliveryEvent(f"{unstorable} holds \\u0000 or an unpaired surrogate, which cannot be stored")
    kind = payload.get("type")
    if kind not in EVENT_TYPES:
        raise InvalidDeliveryEvent(f"type must be one of {', '.join(EVENT_TYPES)}")
    data = payload.get("data")
    if not isinstance(data, dict):
        raise InvalidDeliveryEvent("data must be an object")
    message_id = data.get("email_id")
    if not isinstance(message_id, str) or not message_id.strip() or len(message_id) > MAX_ID_LENGTH:
        raise InvalidDeliveryEvent("data.email_id must be the id of a sent email")
    bounce = data.get("bounce")
    bounce_type = bounce.get("type") if isinstance(bounce, dict) else None
    to = data.get("to")
    addresses = [to] if isinstance(to, str) else to if isinstance(to, list) else []
    return DeliveryEvent(
        svix_id=svix_id,
        type=kind,
        provider_message_id=message_id.strip(),
        occurred_at=_timestamp(payload.get("created_at")),
        bounce_type=bounce_type.strip().lower() if isinstance(bounce_type, str) else None,
        recipients=tuple(a for a in addresses[:MAX_RECIPIENTS] if isinstance(a, str) and "@" in a),
        payload=payload,
    )


def _timestamp(value: Any) -> Optional[datetime]:
    """An ISO 8601 time of the payload (``2026-12-10T10:00:00.000Z``), aware; None if it is not one."""
    if not isinstance(value, str) or len(value) > 64:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else None


@dataclass(frozen=True)
class Recorded:
    """What storing one event did."""

    #: The event's row.
    id: int
    #: False: this ``svix_id`` was stored already, and nothing changed.
    created: bool
    #: The email it is about, or None (unmatched).
    email_id: Optional[int] = None
    #: The email's delivery status moved.
    status_changed: bool = False
    #: The addresses this event newly suppressed.
    suppressed: tuple[str, ...] = ()


def record(session: Session, event: DeliveryEvent) -> Recorded:
    """Store ``event`` once per ``svix_id`` and apply it to its email and the suppression list."""
    email = session.execute(
        select(EmailQueue.id, EmailQueue.recipient)
        .where(EmailQueue.provider_message_id == event.provider_message_id)
        .order_by(EmailQueue.id)
        .limit(1)
    ).one_or_none()
    email_id = int(email.id) if email is not None else None
    row_id = _insert(session, event, email_id)
    if row_id is None:
        existing = session.scalar(select(EmailEvent.id).where(EmailEvent.svix_id == event.svix_id))
        return Recorded(int(existing or 0), created=False, email_id=email_id)
    changed = email_id is not None and event.status is not None and _advance(session, email_id, event.status)
    newly: list[str] = []
    reason = event.suppression_reason
    if reason is not None:
        addresses = [email.recipient] if email is not None else list(event.recipients)
        for address in addresses:
            try:
                if suppressions.add(
                    session, address, reason=reason, created_by="event", email_id=email_id, event_id=row_id
                ):
                    newly.append(suppressions.normalize(address))
            except suppressions.InvalidAddress:
                continue
    return Recorded(row_id, created=True, email_id=email_id, status_changed=changed, suppressed=tuple(newly))


def _insert(session: Session, event: DeliveryEvent, email_id: Optional[int]) -> Optional[int]:
    """INSERT the event unless its ``svix_id`` is stored; its new id, or None."""
    module = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    statement = (
        module.insert(EmailEvent)
        .values(
            svix_id=event.svix_id,
            type=event.type,
            provider_message_id=event.provider_message_id,
            email_id=email_id,
            occurred_at=event.occurred_at,
            payload=event.payload,
            received_at=utcnow(),
        )
        .on_conflict_do_nothing(index_elements=["svix_id"])
        .returning(EmailEvent.id)
    )
    inserted = session.scalar(statement)
    return int(inserted) if inserted is not None else None


#: ``delivery_status``'s rank in SQL (0: none yet).
_RANK = case(
    *((EmailQueue.delivery_status == status, rank) for status, rank in DELIVERY_RANK.items()),
    else_=0,
)


def _advance(session: Session, email_id: int, status: DeliveryStatus) -> bool:
    """Move the email's delivery status to ``status`` unless it is as far along already."""
    now = utcnow()
    statement = (
        update(EmailQueue)
        .where(EmailQueue.id == email_id, _RANK < DELIVERY_RANK[status.value])
        .values(delivery_status=status.value, delivery_updated_at=now)
        .execution_options(synchronize_session=False)
    )
    return rows_affected(session, statement) == 1


def events_of(session: Session, email_id: int, *, limit: int = 200) -> list[dict[str, Any]]:
    """The events of one email in the order they happened (the provider's time, then arrival)."""
    statement = (
        select(EmailEvent)
        .where(EmailEvent.email_id == email_id)
        .order_by(func.coalesce(EmailEvent.occurred_at, EmailEvent.received_at), EmailEvent.id)
        .limit(limit)
    )
    return [
        {
            "id": row.id,
            "type": row.type,
            "occurred_at": row.occurred_at,
            "received_at": row.received_at,
            "bounce": (row.payload.get("data") or {}).get("bounce") if isinstance(row.payload, dict) else None,
        }
        for row in session.scalars(statement)
    ]


def unmatched(session: Session) -> int:
    """Events stored without an email (``ix_email_events_unmatched``)."""
    return int(session.scalar(select(func.count()).where(EmailEvent.email_id.is_(None))) or 0)


def rates_queries(now: datetime, *, providers: Sequence[str]) -> tuple[Any, Any]:
    """The two statements of ``rates``: sends per window, then bounces and complaints per window.

    Sends are an index-only count on ``ix_email_queue_sent_at`` (sent_at, provider); the
    bad outcomes, a few percent at most, on the partial ``ix_email_queue_bad_deliveries``.
    """
    since = {name: now - span for name, span in WINDOWS.items()}
    oldest = min(since.values())
    counted = or_(EmailQueue.provider.in_(list(providers)), EmailQueue.provider.is_(None))
    sends: Any = select(*(func.count().filter(EmailQueue.sent_at >= since[name]) for name in WINDOWS)).where(
        EmailQueue.sent_at >= oldest, counted
    )
    bad = [DeliveryStatus.BOUNCED.value, DeliveryStatus.COMPLAINED.value]
    outcomes: Any = select(
        *(
            func.count().filter(EmailQueue.sent_at >= since[name], EmailQueue.delivery_status == status)
            for name in WINDOWS
            for status in bad
        )
    ).where(EmailQueue.sent_at >= oldest, EmailQueue.delivery_status.in_(bad))
    return sends, outcomes


def rates(
    session: Session, *, providers: Sequence[str], now: Optional[datetime] = None
) -> dict[str, dict[str, Any]]:
    """Bounce and complaint rates over the emails ``providers`` sent in the last 24 hours and 7 days.

    ``providers`` are those that report delivery events, whose thresholds the rates
    watch: a send by another (SMTP) would count as one that neither bounced nor
    complained and dilute them. An email sent before ``email_queue.provider`` was
    recorded counts (Resend sent it). Two index-only range scans (``rates_queries``):
    every window's sends, bounces (``bounced``) and complaints (``complained``), and
    their ratios (0.0 without sends).
    """
    sends_query, outcomes_query = rates_queries(now or utcnow(), providers=providers)
    sends = session.execute(sends_query).one()
    outcomes = session.execute(outcomes_query).one()
    figures: dict[str, dict[str, Any]] = {}
    for index, name in enumerate(WINDOWS):
        sent = int(sends[index] or 0)
        bounced, complained = int(outcomes[index * 2] or 0), int(outcomes[index * 2 + 1] or 0)
        figures[name] = {
            "sent": sent,
            "bounced": bounced,
            "complained": complained,
            "bounce_rate": bounced / sent if sent else 0.0,
            "complaint_rate": complained / sent if sent else 0.0,
        }
    return figures


def suppressed_count(session: Session) -> int:
    """Emails that ended ``suppressed`` (never offered to a provider)."""
    return int(session.scalar(select(func.count()).where(EmailQueue.status == EmailStatus.SUPPRESSED.value)) or 0)


def claim_rate_alert(session: Session, rate: str, *, now: datetime, interval: timedelta) -> bool:
    """True (and stamped) if ``rate`` has not alerted within ``interval``: at most one alert per interval.

    One conditional UPDATE on ``delivery_rate_alerts``: of two workers checking at once, one wins.
    """
    module = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    first = module.insert(DeliveryRateAlert).values(rate=rate, last_alert_at=None)
    session.execute(first.on_conflict_do_nothing(index_elements=["rate"]))
    statement = (
        update(DeliveryRateAlert)
        .where(
            DeliveryRateAlert.rate == rate,
            or_(DeliveryRateAlert.last_alert_at.is_(None), DeliveryRateAlert.last_alert_at <= now - interval),
        )
        .values(last_alert_at=now)
        .execution_options(synchronize_session=False)
    )
    return rows_affected(session, statement) == 1
