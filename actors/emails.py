"""The email actors: a periodic fan-out, and one send per email.

Both take and pass ids only; the row in ``email_queue`` is the truth, and every
decision that must survive a crash (claims, attempt counts) is made there.
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta

from pipeline.core import runtime
from pipeline.core.declare import JobReport, actor, periodic
from pipeline.core.errors import PermanentError, RateLimited
from pipeline.core.mailer import OutgoingEmail
from pipeline.core.rendering import render
from pipeline.middleware.backoff import counted_attempt
from pipeline.middleware.item_hooks import LeasedItemHooks
from storage import emails, leases, rate_limits
from storage.clock import minutes
from storage.emails import EmailMessage
from storage.leases import AttemptOutcome

logger = logging.getLogger(__name__)

#: The queue of the per-email sends.
EMAIL_QUEUE = "emails"
#: One fan-out claims at most this many batches, so a tick always ends.
MAX_BATCHES_PER_TICK = 20
#: Name of the provider's shared rate-limit slot row.
RESEND_SLOT = "resend"
#: Waiting longer than this for a send slot re-queues the email instead of holding a thread.
MAX_SLOT_WAIT_SECONDS = 5.0


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


@periodic(schedule="email_schedule", tick="emails")
def fan_out_emails() -> JobReport:
    """Claim every due email and enqueue its send."""
    return JobReport(f"Enqueued {enqueue_due_emails()} emails.")


def enqueue_due_emails() -> int:
    """One fan-out: claim due emails in batches, send their messages; return how many."""
    current = runtime.current()
    batch_size = current.settings.email_batch_size
    total = 0
    for _ in range(MAX_BATCHES_PER_TICK):
        with current.sessions.begin() as session:
            claimed = leases.claim_due(emails.TABLE, session, lease=_lease(), limit=batch_size)
        send_claimed(claimed)
        total += len(claimed)
        if len(claimed) < batch_size:
            break
    return total


def send_claimed(email_ids: list[int]) -> None:
    """Send one message per claimed email; unsent claims go back to ``pending`` at once."""
    for position, email_id in enumerate(email_ids):
        try:
            send_email.send(email_id)
        except Exception:
            with runtime.current().sessions.begin() as session:
                leases.release_claims(emails.TABLE, session, email_ids[position:])
            raise


@actor(
    queue_name=EMAIL_QUEUE,
    retries=lambda settings: settings.email_retries,
    item_hooks=LeasedItemHooks(emails.TABLE, lease=_lease, describe=emails.describe),
    throws=(PermanentError,),
)
def send_email(email_id: int) -> None:
    """Send one email through the provider, at most once whatever is redelivered."""
    current = runtime.current()
    settings = current.settings
    with current.sessions.begin() as session:
        attempt = leases.start_attempt(
            emails.TABLE, session, email_id, lease=_lease(), max_attempts=settings.email_max_attempts
        )
    if attempt.outcome is AttemptOutcome.SKIP or attempt.item is None:
        logger.info("Email %s needs no attempt now (sent, failed, not due or in flight).", email_id)
        return
    email = attempt.item
    with counted_attempt(attempt, label=f"email {email_id}", max_attempts=settings.email_max_attempts):
        body = render(
            subject=email.subject, html=email.html, text=email.text, template=email.template, data=email.template_data
        )
        wait_for_send_slot()
        provider_id = current.mailer.send(
            OutgoingEmail(
                sender=settings.email_from,
                recipient=email.recipient,
                subject=body.subject,
                html=body.html,
                text=body.text,
                idempotency_key=idempotency_key(email),
            )
        )
    with current.sessions.begin() as session:
        emails.mark_sent(session, email_id, provider_id)
    logger.info("Email %s sent (%s).", email_id, provider_id)


def wait_for_send_slot() -> None:
    """Stay within the provider's request rate, shared by every worker host."""
    current = runtime.current()
    with current.sessions.begin() as session:
        slot = rate_limits.reserve_slot(
            session, RESEND_SLOT, per_second=current.settings.email_rate_limit_per_second
        )
    wait = slot - time.time()
    if wait > MAX_SLOT_WAIT_SECONDS:
        raise RateLimited(f"send slot {wait:.1f}s away", retry_after=wait)
    if wait > 0:
        time.sleep(wait)
