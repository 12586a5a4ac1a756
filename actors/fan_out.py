"""The email fan-out: claim due emails and send their messages, transactional first.

It runs on ``EMAIL_SCHEDULE``, and whenever the ticker's wake-up hears of a new
email (``pipeline.core.wakeup``). Emails of one priority claimed together go out
together, in batches of up to EMAIL_PER_REQUEST (100) (``actors.email_batches``),
one request each; a lone email goes alone: nothing is ever held back to fill a
batch, so a password reset inserted on its own is sent on its own, at once. The
batch endpoint cannot carry attachments or ``scheduled_at``; we send neither
(scheduling is ours), so every email can travel in a batch: should a field it
cannot carry be added, ``storage.batches.plan`` is the one place that decides. An
email keeps the idempotency key it was first offered under: one sent alone never
joins a batch, and a batch member goes out again only in its own batch.

A fan-out claims no more than the provider's current rate sends within half a lease,
less what is already claimed, so an email waiting its turn behind the limiter is
never claimed (and published) twice; bulk claims leave a tenth of that room to
transactional emails, so one inserted during a bulk drain is claimed at once. While
an operator pauses sending (all, or bulk only), the held kind is not claimed: it
waits in the table, not in the broker. So do all emails while every provider is
paused for an outage (``Sending.outage_wait``), but when a probe is due: then the
fan-out claims as usual, the first request is the probe, and the messages that find
the pause on hand their emails back (``actors.emails.handed_back``) to be claimed
again, in batches, when a probe gets through.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from sqlalchemy.orm import Session

from actors.email_batches import batch_sender_of
from actors.email_groups import group_sender_of, groups
from actors.emails import lease, sender_of
from pipeline.core import runtime
from pipeline.core.declare import JobReport, periodic
from pipeline.core.enqueue import Send, send_each
from storage import batches, emails, leases
from storage.models import EmailPriority

#: One fan-out claims at most this many claims of EMAIL_BATCH_SIZE, so a tick always ends.
MAX_BATCHES_PER_TICK = 20
#: A fan-out claims at most what the provider's rate sends in this share of a lease.
LEASE_SHARE_CLAIMED = 0.5
#: Bulk claims leave this share of the room to transactional emails.
TRANSACTIONAL_RESERVE = 0.1
BULK = EmailPriority.BULK


@periodic(schedule="email_schedule", tick="emails", cron="process-email-queue")
def fan_out_emails() -> JobReport:
    """Claim every due email and enqueue its send."""
    enqueued = enqueue_due_emails()
    return JobReport(f"Enqueued {enqueued} emails.", processed=enqueued)


def enqueue_due_emails() -> int:
    """One fan-out: claim due emails, transactional first, within the room; return how many."""
    current = runtime.current()
    sending = current.sending
    # What the fan-out decides on, read in one transaction: at a shop's pace every inserted email gets
    # a fan-out of its own, and each checkout and transaction before the claim is in its pickup time.
    with current.sessions.begin() as session:  # begin: the rate rows are created on the first read
        now = time.time()
        wait = sending.outage_wait_in(session, now)
        if wait is not None and wait > 0:
            return 0  # every provider is down and its probe not due: the emails wait in the table
        held = {kind: sending.pauses.held_until(session, transactional=kind, now=now) for kind in (True, False)}
        room, reserve = claim_room(session, now)
    transactional = 0 if held[True] is not None else _claim_and_send(EmailPriority.TRANSACTIONAL, room)
    bulk = 0 if held[False] is not None else _claim_and_send(BULK, room - transactional - reserve)
    return transactional + bulk


def claim_room(session: Session, now: float) -> tuple[int, int]:
    """How many emails this fan-out may claim, and how many of those bulk must leave to transactional.

    The room is what the current rate sends (up to a batch per request) in part of a
    lease, less what is claimed already: claims beyond that would wait behind the
    limiter past their lease and be claimed and published again. Without a limit,
    the batch bound alone applies.
    """
    current = runtime.current()
    settings = current.settings
    most = settings.email_batch_size * MAX_BATCHES_PER_TICK
    if current.sending.unlimited:
        return most, 0
    per_second = current.sending.primary.limiter.per_second_in(session, now)
    requests = per_second * settings.email_lease_minutes * 60 * LEASE_SHARE_CLAIMED
    sendable = int(requests * settings.email_per_request)
    waiting = emails.in_flight(session)
    return max(min(most, sendable - waiting), 0), int(min(most, sendable) * TRANSACTIONAL_RESERVE)


def _claim_and_send(priority: EmailPriority, budget: int) -> int:
    """Claim in statements of EMAIL_BATCH_SIZE until the budget or the due emails run out."""
    current = runtime.current()
    batch_size = current.settings.email_batch_size
    per_request = current.settings.email_per_request
    total = 0
    while total < budget:
        limit = min(batch_size, budget - total)
        with current.sessions.begin() as session:
            claimed = leases.claim_due(
                emails.TABLE,
                session,
                lease=lease(),
                limit=limit,
                only=emails.of_priority(priority),
                also=batches.claimed_values(size=per_request),
            )
            plan = batches.plan(session, claimed, size=per_request)
        _send(plan, priority)
        total += len(claimed)
        if len(claimed) < limit:
            break
    return total


def _send(plan: batches.Plan, priority: EmailPriority) -> None:
    """One message per batch, and per group of emails that go one per request; unsent claims go back at once.

    A batch keeps its members whatever happens to its message: should the broker
    have taken it after all, it is the same batch, under the same key, that goes out.
    Emails that go one per request travel in groups (``actors.email_groups``), each
    under its own key; a group of one is a single email's message.
    """
    batch_sender = batch_sender_of(priority)

    def claims(session: Session, unsent: Sequence[Send]) -> list[int]:
        members = batches.member_ids_of(session, [item for actor, item in unsent if actor is batch_sender])
        alone = [item for actor, item in unsent if actor is not batch_sender]
        return members + [email_id for item in alone for email_id in (item if isinstance(item, list) else [item])]

    messages: list[Send] = [(batch_sender, batch_id) for batch_id in plan.batch_ids]
    for group in groups(plan.alone):
        messages.append((group_sender_of(priority), group) if len(group) > 1 else (sender_of(priority), group[0]))
    send_each(messages, emails.TABLE, claims=claims)
