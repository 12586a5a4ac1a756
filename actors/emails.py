"""The email actors: a periodic fan-out, and one send per email.

They take and pass ids only; the row in ``email_queue`` is the truth, and every
decision that must survive a crash (claims, attempt counts, leases) is made there.

Transactional and bulk emails travel on separate queues (``emails`` and
``emails_bulk``), so a password reset never waits in RabbitMQ behind a newsletter;
workers take prefetched transactional messages first (Dramatiq's actor priority),
and the limiter gives them the provider's next slot. Broker message priorities
are not used: quorum queues do not have them on RabbitMQ 3.x.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from pipeline.core import runtime
from pipeline.core.declare import DeclaredActor, JobReport, actor, periodic
from pipeline.core.errors import PermanentError, RateLimited
from pipeline.core.mailer import OutgoingEmail
from pipeline.core.rendering import render
from pipeline.middleware.backoff import counted_attempt, current_message_id, must_run
from pipeline.middleware.item_hooks import LeasedItemHooks
from storage import emails, leases
from storage.clock import minutes
from storage.emails import EmailMessage
from storage.models import EmailPriority

logger = logging.getLogger(__name__)

#: The queue of transactional sends.
EMAIL_QUEUE = "emails"
#: The queue of bulk sends (newsletters, campaigns): the limiter's leftovers.
BULK_EMAIL_QUEUE = "emails_bulk"
#: Dramatiq's priority of bulk sends among prefetched messages (lower runs first; the rest are 0).
BULK_PRIORITY = 100
#: Resend keeps an idempotency key this long: a repeat within it is answered, not sent again.
PROVIDER_KEY_LIFETIME = timedelta(hours=24)
#: Bulk claims leave this share of a fan-out's room to transactional emails, so one inserted
#: during a bulk drain is claimed at once rather than when the drain frees room.
TRANSACTIONAL_RESERVE = 0.1
#: One fan-out claims at most this many batches, so a tick always ends.
MAX_BATCHES_PER_TICK = 20
#: A fan-out claims at most what the provider's rate sends in this share of a lease, so an
#: email claimed now is sent long before its claim runs out and is never claimed twice.
LEASE_SHARE_CLAIMED = 0.5


def idempotency_key(email: EmailMessage) -> str:
    """The provider-side key of an email: a redelivered message never sends twice.

    The id alone is not enough: staging and production (or a restored database)
    reuse ids within Resend's 24-hour key window, and a reused key with another
    body is refused with a 409. The row's creation time, to the microsecond, makes
    the key unique across databases while staying stable across retries.
    """
    return f"minalesh-email-{email.id}-{int(email.created_at.timestamp() * 1_000_000)}"


def _lease() -> timedelta:
    return minutes(runtime.current().settings.email_lease_minutes)


# --- the fan-out ---------------------------------------------------------------------------------


@periodic(schedule="email_schedule", tick="emails")
def fan_out_emails() -> JobReport:
    """Claim every due email and enqueue its send."""
    return JobReport(f"Enqueued {enqueue_due_emails()} emails.")


def enqueue_due_emails() -> int:
    """One fan-out: claim due emails, transactional first, within the room; return how many."""
    room, reserve = claim_room()
    transactional = _claim_and_send(EmailPriority.TRANSACTIONAL, room)
    bulk = _claim_and_send(EmailPriority.BULK, room - transactional - reserve)
    return transactional + bulk


def claim_room() -> tuple[int, int]:
    """How many emails this fan-out may claim, and how many of those bulk must leave to transactional.

    The room is what the current rate sends in part of a lease, less what is already
    claimed: claims beyond that would wait behind the limiter past their lease and be
    claimed and published again. Without a limit, the batch bound alone applies.
    """
    current = runtime.current()
    settings = current.settings
    most = settings.email_batch_size * MAX_BATCHES_PER_TICK
    if current.limiter.unlimited:
        return most, 0
    sendable = int(current.limiter.per_second() * settings.email_lease_minutes * 60 * LEASE_SHARE_CLAIMED)
    with current.sessions() as session:
        waiting = emails.in_flight(session)
    return max(min(most, sendable - waiting), 0), int(sendable * TRANSACTIONAL_RESERVE)


def _claim_and_send(priority: EmailPriority, budget: int) -> int:
    current = runtime.current()
    batch_size = current.settings.email_batch_size
    total = 0
    while total < budget:
        limit = min(batch_size, budget - total)
        with current.sessions.begin() as session:
            claimed = leases.claim_due(
                emails.TABLE, session, lease=_lease(), limit=limit, only=emails.of_priority(priority)
            )
        send_claimed(claimed, priority=priority)
        total += len(claimed)
        if len(claimed) < limit:
            break
    return total


def send_claimed(email_ids: list[int], *, priority: EmailPriority = EmailPriority.TRANSACTIONAL) -> None:
    """Send one message per claimed email; unsent claims go back to ``pending`` at once."""
    sender = sender_of(priority)
    for position, email_id in enumerate(email_ids):
        try:
            sender.send(email_id)
        except Exception:
            with runtime.current().sessions.begin() as session:
                leases.release_claims(emails.TABLE, session, email_ids[position:])
            raise


def sender_of(priority: EmailPriority | str) -> DeclaredActor:
    """The actor whose queue carries emails of ``priority``."""
    return send_bulk_email if EmailPriority(priority) is EmailPriority.BULK else send_email


# --- the send ------------------------------------------------------------------------------------

_HOOKS = LeasedItemHooks(
    emails.TABLE, lease=_lease, describe=emails.describe, idempotent_for=PROVIDER_KEY_LIFETIME
)


@actor(
    queue_name=EMAIL_QUEUE,
    retries=lambda settings: settings.email_retries,
    item_hooks=_HOOKS,
    throws=(PermanentError,),
)
def send_email(email_id: int) -> None:
    """Send one transactional email, at most once whatever is redelivered."""
    deliver(email_id, transactional=True)


@actor(
    queue_name=BULK_EMAIL_QUEUE,
    priority=BULK_PRIORITY,
    retries=lambda settings: settings.email_retries,
    item_hooks=_HOOKS,
    throws=(PermanentError,),
)
def send_bulk_email(email_id: int) -> None:
    """Send one bulk email with what the provider's limit leaves, at most once."""
    deliver(email_id, transactional=False)


def deliver(email_id: int, *, transactional: bool) -> None:
    """Count the attempt, render, wait for a slot of the provider's rate, send, record."""
    current = runtime.current()
    settings = current.settings
    with current.sessions.begin() as session:
        attempt = leases.start_attempt(
            emails.TABLE,
            session,
            email_id,
            lease=_lease(),
            max_attempts=settings.email_max_attempts,
            holder=current_message_id(),
        )
    if not must_run(attempt, label=f"email {email_id}"):
        logger.info("Email %s needs no attempt now (sent, failed, not due or in flight).", email_id)
        return
    assert attempt.item is not None
    email = attempt.item
    with counted_attempt(attempt, label=f"email {email_id}", max_attempts=settings.email_max_attempts):
        body = render(
            subject=email.subject, html=email.html, text=email.text, template=email.template, data=email.template_data
        )
        slot = current.limiter.acquire(transactional=transactional)
        try:
            sent = current.mailer.send(
                OutgoingEmail(
                    sender=settings.email_from,
                    recipient=email.recipient,
                    subject=body.subject,
                    html=body.html,
                    text=body.text,
                    idempotency_key=idempotency_key(email),
                )
            )
        except RateLimited as refused:
            current.limiter.refused(refused)
            raise
        current.limiter.observe(sent.headers, slot)
    with current.sessions.begin() as session:
        emails.mark_sent(session, email_id, sent.provider_id)
    logger.info("Email %s sent (%s).", email_id, sent.provider_id)
