"""The email actors: a periodic fan-out, and one send per email.

Both take and pass ids only; the row in ``email_queue`` is the truth, and every
decision that must survive a crash (claims, attempt counts) is made there.
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta

import dramatiq
from dramatiq import Message
from periodiq import cron
from sqlalchemy.orm import Session

from pipeline.core import runtime
from pipeline.core.errors import PermanentError, RateLimited
from pipeline.core.mailer import OutgoingEmail
from pipeline.core.rendering import render
from pipeline.middleware.backoff import counted_attempt
from storage import emails, rate_limits
from storage.attempts import AttemptOutcome
from storage.clock import minutes
from storage.emails import EmailMessage

logger = logging.getLogger(__name__)

#: The queue of the per-email sends.
EMAIL_QUEUE = "emails"
#: The queue of periodic ticks, apart so that a send backlog never delays a tick.
TICKS_QUEUE = "ticks"
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


class EmailHooks:
    """Keeps ``email_queue`` in step with what the backoff middleware decides."""

    def retrying(
        self, session: Session, message: Message, *, error: str, delay: timedelta, refund: bool
    ) -> None:
        lease = minutes(runtime.current().settings.email_lease_minutes)
        emails.schedule_retry(session, _email_id(message), error=error, delay=delay, lease=lease, refund=refund)

    def given_up(self, session: Session, message: Message, *, error: str) -> None:
        emails.mark_failed(session, _email_id(message), error=error)

    def revive(self, session: Session, message: Message) -> bool:
        """Back to ``queued`` with a fresh budget, leased: the fan-out sends it if the replay is lost."""
        lease = minutes(runtime.current().settings.email_lease_minutes)
        return emails.revive(session, _email_id(message), lease=lease)

    def describe(self, session: Session, message: Message) -> dict[str, object] | None:
        row = emails.get(session, _email_id(message))
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


def _email_id(message: Message) -> int:
    return int(message.args[0])


@dramatiq.actor(queue_name=TICKS_QUEUE, periodic=cron("*/2 * * * *"), max_retries=0)
def fan_out_emails() -> None:
    """Claim every due email and send one ``send_email`` message per email."""
    logger.info("Fan-out enqueued %d emails.", enqueue_due_emails())


def enqueue_due_emails() -> int:
    """One fan-out, callable from the CLI: claim due emails in batches, send their messages."""
    current = runtime.current()
    batch_size = current.settings.email_batch_size
    lease = minutes(current.settings.email_lease_minutes)
    total = 0
    for _ in range(MAX_BATCHES_PER_TICK):
        with current.sessions.begin() as session:
            claimed = emails.claim_due(session, lease=lease, limit=batch_size)
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
                emails.release_claims(session, email_ids[position:])
            raise


@dramatiq.actor(queue_name=EMAIL_QUEUE, item_hooks=EmailHooks(), throws=(PermanentError,))
def send_email(email_id: int) -> None:
    """Send one email through the provider, at most once whatever is redelivered."""
    current = runtime.current()
    settings = current.settings
    with current.sessions.begin() as session:
        attempt = emails.start_attempt(
            session,
            email_id,
            lease=minutes(settings.email_lease_minutes),
            max_attempts=settings.email_max_attempts,
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
