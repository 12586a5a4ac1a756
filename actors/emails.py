"""The single-email actors: one send per email, transactional or bulk.

The fan-out (``actors.fan_out``) claims emails and sends these messages, or
batches (``actors.email_batches``) when several are ready at once. They take and
pass ids only; the row in ``email_queue`` is the truth, and every
decision that must survive a crash (claims, attempt counts, leases) is made there.

Transactional and bulk emails travel on separate queues (``emails`` and
``emails_bulk``), so a password reset never waits in RabbitMQ behind a newsletter;
workers take prefetched transactional messages first (Dramatiq's actor priority),
and the limiter gives them the provider's next slot. Broker message priorities
are not used: quorum queues do not have them on RabbitMQ 3.x.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

from dramatiq.common import xq_name
from sqlalchemy.orm import Session

from pipeline.core import runtime
from pipeline.core.attempts import current_message_id, leased_attempt
from pipeline.core.declare import DeclaredActor, actor
from pipeline.core.errors import PermanentError, describe
from pipeline.core.item_hooks import LeasedItemHooks
from pipeline.core.outcomes import Outcome, report
from pipeline.core.rendering import render
from pipeline.providers.base import OutgoingEmail, ProviderPaused
from pipeline.providers.pacing import OUTAGE
from pipeline.providers.sending import maybe_accepted
from storage import batches, emails, suppressions
from storage.clock import minutes
from storage.database import statement_by_statement
from storage.emails import EmailMessage
from storage.models import EmailPriority

#: The queue of transactional sends.
EMAIL_QUEUE = "emails"
#: The queue of bulk sends (newsletters, campaigns): the limiter's leftovers.
BULK_EMAIL_QUEUE = "emails_bulk"
#: Dramatiq's priority of bulk sends among prefetched messages (lower runs first; the rest are 0).
BULK_PRIORITY = 100
#: How long a replay may count on the provider's idempotency to not send twice: Resend's key window
#: (SMTP has none; ``pipeline.ops.dlq`` asks each provider's capabilities for replays).
PROVIDER_KEY_LIFETIME = timedelta(hours=24)


def idempotency_key(email: EmailMessage) -> str:
    """The provider-side key of an email: a redelivered message never sends twice.

    The id alone is not enough: staging and production (or a restored database)
    reuse ids within Resend's 24-hour key window, and a reused key with another
    body is refused with a 409. The row's creation time, to the microsecond, makes
    the key unique across databases while staying stable across retries.
    """
    return f"minalesh-email-{email.id}-{int(email.created_at.timestamp() * 1_000_000)}"


def lease() -> timedelta:
    return minutes(runtime.current().settings.email_lease_minutes)


# --- the send ------------------------------------------------------------------------------------

_HOOKS = LeasedItemHooks(
    emails.TABLE,
    lease=lease,
    describe=emails.describe,
    idempotent_for=PROVIDER_KEY_LIFETIME,
    reached=emails.last_reached,
)


def email_actor(*, bulk: bool, hooks: LeasedItemHooks) -> Callable[[Callable[..., Any]], DeclaredActor]:
    """The declaration every email actor shares: its queue and priority, the email retry policy."""
    return actor(
        queue_name=BULK_EMAIL_QUEUE if bulk else EMAIL_QUEUE,
        priority=BULK_PRIORITY if bulk else 0,
        retries=lambda settings: settings.email_retries,
        item_hooks=hooks,
        throws=(PermanentError,),
    )


@email_actor(bulk=False, hooks=_HOOKS)
def send_email(email_id: int) -> None:
    """Send one transactional email, at most once whatever is redelivered."""
    deliver(email_id, transactional=True)


@email_actor(bulk=True, hooks=_HOOKS)
def send_bulk_email(email_id: int) -> None:
    """Send one bulk email with what the provider's limit leaves, at most once."""
    deliver(email_id, transactional=False)


def sender_of(priority: EmailPriority | str) -> DeclaredActor:
    """The actor whose queue carries single emails of ``priority``."""
    return send_bulk_email if EmailPriority(priority) is EmailPriority.BULK else send_email


def single_sender(*, transactional: bool) -> DeclaredActor:
    """The single-email actor of a batch's or a group's member: its own retries and dead letters are its."""
    return send_email if transactional else send_bulk_email


def fail_alone(session: Session, failures: dict[int, str], *, transactional: bool) -> None:
    """Members of a batch or a group that failed for good: each failed with a single-email dead letter of its own."""
    single = single_sender(transactional=transactional)
    for email_id, error in failures.items():
        batches.fail_member(session, email_id, error=error, queue=xq_name(single.queue_name), actor=single.actor_name)


def compose(email: EmailMessage) -> OutgoingEmail:
    """The email as the provider gets it: rendered, from EMAIL_FROM, under its own idempotency key."""
    settings = runtime.current().settings
    body = render(
        subject=email.subject,
        html=email.html,
        text=email.text,
        template=email.template,
        data=email.template_data,
        max_subject_bytes=settings.email_max_subject_bytes,
        max_body_bytes=settings.email_max_body_bytes,
    )
    return OutgoingEmail(
        sender=settings.email_from,
        recipient=email.recipient,
        subject=body.subject,
        html=body.html,
        text=body.text,
        idempotency_key=idempotency_key(email),
        email_id=email.id,
    )


def held_back(email_ids: list[int]) -> dict[int, str]:
    """End the emails to suppressed addresses ``suppressed`` before any provider request: {id: reason}."""
    with statement_by_statement(runtime.current().sessions) as session:  # one UPDATE: no BEGIN, no COMMIT
        held = suppressions.hold_back(session, email_ids)
    if held:
        report(Outcome.SUPPRESSED, emails=sorted(held))
    return held


def handed_back(error: ProviderPaused, email_ids: list[int], *, pinned: bool) -> bool:
    """Every provider the emails may take is paused for an outage: back to the table, not the broker.

    Their attempt is given back and their claim released (``emails.hand_back``); the
    fan-out claims nothing while the outage lasts (``Sending.outage_wait``) but the
    probe, and claims them all, in batches, when the probe gets through (its resume
    notifies the wake-up). False, changing nothing, for any other pause, or when an
    attempt may have reached a provider (``pinned``): such an email keeps its own key
    and its own message, re-queued after the pause as before.
    """
    if error.reason != OUTAGE or pinned or maybe_accepted(error):
        return False
    with runtime.current().sessions.begin() as session:
        emails.hand_back(session, email_ids, holder=current_message_id())
    report(Outcome.DEFERRED, error=describe(error), handed_back=len(email_ids))
    return True


def deliver(email_id: int, *, transactional: bool) -> None:
    """Count the attempt, render, send through the providers (paced, paused, failing over), record."""
    current = runtime.current()
    max_attempts = current.settings.email_max_attempts
    with leased_attempt(
        emails.TABLE, email_id, lease=lease(), max_attempts=max_attempts, label=f"email {email_id}"
    ) as email:
        if email is None:
            return  # sent, failed, not due or in flight
        if email.suppressed_because is not None and held_back([email_id]):
            return  # its recipient is suppressed: no provider, no slot
        try:
            sent = current.sending.send(compose(email), transactional=transactional, maybe_sent_by=email.maybe_sent_by)
        except ProviderPaused as paused:
            if handed_back(paused, [email_id], pinned=email.maybe_sent_by is not None):
                return
            raise
    with statement_by_statement(current.sessions) as session:  # one UPDATE: no BEGIN, no COMMIT round trip
        emails.mark_sent(session, email_id, sent.provider_id, provider=sent.provider)
    report(Outcome.SENT, provider_id=sent.provider_id, provider=sent.provider)
