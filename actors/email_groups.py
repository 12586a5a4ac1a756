"""The group actors: emails that each go in a request of their own, several to a message.

Some emails cannot share a request with others: every email when EMAIL_PER_REQUEST=1
(and every email over a provider with no batch endpoint would be, were it sent
alone), and an email offered alone before, which keeps its own idempotency key. One
message per such email costs a broker round trip, a message's middleware, log line
and acknowledgement, and three statements (attempt, slot, sent) per email. The
fan-out sends them in groups instead (``groups``): one message, one statement to
start every member's attempt, one to record the sent ones, and one request per
email, each under the email's own key, one after another in the worker's thread.

**Each member fails on its own.** A member the provider refused (or whose template
fails, or whose attempts ran out) fails alone, with a dead letter of its own; a
member whose request failed (a 5xx, a timeout, a 429, a paused provider) is handed
to its own single-email message, which the backoff middleware settles as though
that message had failed (``Backoff.settle_apart``): retried on the member's own row
and schedule, or given up with its own dead letter, replayable alone. The group's
message itself is never retried for a member's failure, so its answered neighbours
are never sent again and no failing member spends another's attempts. When every
provider is in an outage, the members not yet answered go back to the table
(``actors.emails.handed_back``), to be claimed again in batches when a probe gets
through. Only a failure of our own (the database, the broker) fails the group's
message; its retry starts the members still open, under the same lease holder,
and sends them again under their own keys, which the provider answers once.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

from dramatiq import Message

from actors.emails import PROVIDER_KEY_LIFETIME, compose, email_actor, fail_alone, held_back, lease, single_sender
from pipeline.core import runtime
from pipeline.core.attempts import ComeBack, DeadLetterAgain, GivenUpEarlier, current_message_id, step
from pipeline.core.declare import DeclaredActor
from pipeline.core.errors import Deferred, PermanentError, RateLimited, describe
from pipeline.core.item_hooks import LeasedItemHooks
from pipeline.core.outcomes import Outcome, counting, report
from pipeline.middleware.backoff import backoff_of
from pipeline.providers.base import ProviderPaused, ProviderUnavailable
from pipeline.providers.pacing import OUTAGE
from pipeline.providers.sending import Sent, maybe_accepted
from storage import emails, leases
from storage.clock import utcnow
from storage.database import statement_by_statement
from storage.emails import EmailMessage
from storage.leases import AttemptOutcome
from storage.models import EmailPriority

logger = logging.getLogger(__name__)

#: A group writes its answers at least this often (seconds), so a worker that dies mid-group
#: leaves few sent emails unrecorded.
RECORD_EVERY_SECONDS = 1.0
#: At most this many emails in a group's message...
GROUP_SIZE = 20
#: ...and the emails of one claim are spread over at least this many messages (while they last):
#: the shipped worker's threads (``worker -p 2 -t 8``), so a burst of a few emails still goes out
#: side by side rather than one after another in one thread.
SPREAD = 16


def groups(email_ids: Sequence[int]) -> list[list[int]]:
    """Emails that go one per request, split into the groups of the fan-out's messages."""
    size = min(GROUP_SIZE, max(1, math.ceil(len(email_ids) / SPREAD)))
    return [list(email_ids[start : start + size]) for start in range(0, len(email_ids), size)]


def member_ids(_session: Any, item: Any) -> list[int]:
    """The emails a group's message stands for (its argument; anything else stands for none)."""
    if not isinstance(item, list):
        return []
    return [email_id for email_id in item if isinstance(email_id, int) and not isinstance(email_id, bool)]


def describe_group(session: Any, item: Any) -> Optional[dict[str, Any]]:
    """``dlq show`` of a group: its members' states now."""
    ids = member_ids(session, item)
    if not ids:
        return None
    members, status = emails.describe_all(session, ids)
    return {"kind": "email group", "status": status, "members": members}


_HOOKS = LeasedItemHooks(
    emails.TABLE,
    lease=lease,
    describe=describe_group,
    idempotent_for=PROVIDER_KEY_LIFETIME,
    rows=member_ids,
    reached=emails.last_reached,
)


@email_actor(bulk=False, hooks=_HOOKS)
def send_email_group(email_ids: list[int]) -> None:
    """Send transactional emails one per request, each under its own key, at most once each."""
    deliver_group(email_ids, transactional=True)


@email_actor(bulk=True, hooks=_HOOKS)
def send_bulk_email_group(email_ids: list[int]) -> None:
    """Send bulk emails one per request with what the provider's limit leaves, at most once each."""
    deliver_group(email_ids, transactional=False)


def group_sender_of(priority: EmailPriority) -> DeclaredActor:
    """The actor whose queue carries groups of ``priority``."""
    return send_bulk_email_group if priority is EmailPriority.BULK else send_email_group


@dataclass
class Answers:
    """What became of a group's members in this attempt."""

    sent: dict[int, Sent] = field(default_factory=dict)
    #: {email id: error}: failed for good (refused, unrenderable, out of attempts), each with its dead letter.
    failed: dict[int, str] = field(default_factory=dict)
    #: {email id: the exception}: handed to their own messages (``Backoff.settle_apart``).
    apart: dict[int, BaseException] = field(default_factory=dict)
    #: Given back to the table during an outage of every provider.
    handed_back: list[int] = field(default_factory=list)
    #: The members whose answer is written in ``email_queue`` already.
    recorded: set[int] = field(default_factory=set)
    #: When the answers were last written (``time.monotonic``).
    recorded_at: float = field(default_factory=time.monotonic)


def deliver_group(email_ids: list[int], *, transactional: bool) -> None:
    """Start every member's attempt in one statement, send each alone, record the answers together."""
    ids = member_ids(None, email_ids)
    if len(ids) != len(email_ids) or not ids:
        raise PermanentError(f"a group of emails is a list of email ids, not {email_ids!r:.60}")
    current = runtime.current()
    max_attempts = current.settings.email_max_attempts
    holder = current_message_id()
    with statement_by_statement(current.sessions) as session:  # one UPDATE (or, on a return, one read)
        unfinished = leases.running_under(emails.TABLE, session, ids, holder=holder) if holder else {}
        if unfinished:
            _split(session, unfinished, transactional=transactional)
            return
        started = leases.start_attempts(
            emails.TABLE, session, ids, lease=lease(), max_attempts=max_attempts, holder=holder
        )
        if not started:
            _nothing_started(session, ids)
            return
    members = [attempt.item for attempt in started if attempt.item is not None]
    answers = Answers()
    for attempt in started:
        if attempt.outcome is AttemptOutcome.EXHAUSTED and attempt.item is not None:
            answers.failed[attempt.item.id] = f"attempt {attempt.item.attempts} started, {max_attempts} allowed"
    to_send = [email for email in members if email.id not in answers.failed]
    held = held_back([email.id for email in to_send if email.suppressed_because is not None]) if to_send else {}
    to_send = [email for email in to_send if email.id not in held]
    with counting(min((email.retry_count for email in members), default=0)):
        try:
            _send_each(to_send, answers, transactional=transactional)
        finally:
            _record(answers, transactional=transactional)
    _settle_apart(members, answers, transactional=transactional)
    report(
        Outcome.SENT,
        emails=len(answers.sent),
        failed=len(answers.failed),
        apart=len(answers.apart),
        suppressed=len(held),
        handed_back=len(answers.handed_back),
        provider=",".join(sorted({sent.provider for sent in answers.sent.values()})) or None,
    )


def _send_each(to_send: list[EmailMessage], answers: Answers, *, transactional: bool) -> None:
    """One request per member, in order; a failed request is its member's alone, and the rest go on.

    A rate limit or a pause of every provider a member may take (all of them, unless an
    earlier attempt pins it to one) stops the group, as it would stop each of the rest:
    ``_stopped`` decides where they wait. A pinned member's stop is its own.

    The answers are written at least every ``RECORD_EVERY_SECONDS``, and at once for
    an email another provider than the first took: should the worker die mid-group, the
    members it already sent are not sent again (the first provider answers a repeated
    key once; the next one, without a key or under another, would deliver again).
    """
    sending = runtime.current().sending
    for position, email in enumerate(to_send):
        try:
            outgoing = compose(email)
        except PermanentError as exc:
            answers.failed[email.id] = describe(exc)
            continue
        try:
            sent = sending.send(outgoing, transactional=transactional, maybe_sent_by=email.maybe_sent_by)
        except PermanentError as exc:  # the provider refused this email
            answers.failed[email.id] = f"The provider refused it: {describe(exc)}"
            continue
        except RateLimited as limited:
            if email.maybe_sent_by is not None:
                answers.apart[email.id] = limited
                continue
            _stopped(limited, to_send[position:], answers)
            return
        except ProviderUnavailable as error:
            answers.apart[email.id] = error
            continue
        answers.sent[email.id] = sent
        if sent.provider != sending.primary.name or time.monotonic() - answers.recorded_at >= RECORD_EVERY_SECONDS:
            _record(answers, transactional=transactional)


def _stopped(limited: RateLimited, rest: list[EmailMessage], answers: Answers) -> None:
    """The rest of the group after a rate limit or a pause: back to the table, or each to its own message.

    Every provider paused for an outage: the members no request may have reached go
    back to the table (with the answers, in ``_record``), claimed again (in batches)
    when a probe gets through, as ``actors.emails.handed_back`` does for a lone email.
    Any other stop, and a member an attempt may have reached (it keeps its key and
    its provider), goes apart: its own message waits out the pause or the limit, the
    attempt refunded.
    """
    reached = {email.id for email in rest if email.maybe_sent_by is not None}
    if maybe_accepted(limited):  # the request that found the pause may itself have reached the provider
        reached.add(rest[0].id)
    free = [email.id for email in rest if email.id not in reached]
    if isinstance(limited, ProviderPaused) and limited.reason == OUTAGE and free:
        answers.handed_back = free
    answers.apart.update({email.id: limited for email in rest if email.id not in answers.handed_back})


def _record(answers: Answers, *, transactional: bool) -> None:
    """The answers not written yet, in one transaction: sent, failed (each with its dead letter), handed back."""
    sent = {email_id: done for email_id, done in answers.sent.items() if email_id not in answers.recorded}
    failed = {email_id: error for email_id, error in answers.failed.items() if email_id not in answers.recorded}
    back = [email_id for email_id in answers.handed_back if email_id not in answers.recorded]
    answers.recorded_at = time.monotonic()
    if not sent and not failed and not back:
        return
    by_provider: dict[str, dict[int, str]] = {}
    for email_id, done in sent.items():
        by_provider.setdefault(done.provider, {})[email_id] = done.provider_id
    with runtime.current().sessions.begin() as session:
        for provider, provider_ids in by_provider.items():
            emails.mark_sent_many(session, provider_ids, provider=provider)
        fail_alone(session, failed, transactional=transactional)
        if back:
            emails.hand_back(session, back, holder=current_message_id())
    answers.recorded.update(sent, failed, back)


def _settle_apart(members: list[EmailMessage], answers: Answers, *, transactional: bool) -> None:
    """Each member whose request failed, to its own single-email message, settled as if it had failed.

    A member whose message cannot be enqueued (RabbitMQ restarting) is left to its
    lease: the next claim after it takes the email again. The group goes on.
    """
    if not answers.apart:
        return
    broker = runtime.current().broker
    backoff = backoff_of(broker)
    retries = {email.id: email.retry_count for email in members}
    for email_id, error in answers.apart.items():
        message = _own_message(email_id, retries[email_id], transactional=transactional)
        try:
            backoff.settle_apart(broker, message, error)
        except Exception as exc:
            logger.warning("Email %s is left to its lease: its own message was not enqueued (%s).", email_id, exc)


def _split(session: Any, unfinished: dict[int, int], *, transactional: bool) -> None:
    """This group's message came back (its worker died, or the database failed it mid-way): no request of its own.

    Each member still in the attempt it started goes to its own single-email message,
    which takes over the lease at once: a member that made the worker die dies alone
    from then on, instead of spending its neighbours' attempts at every return. The
    members it already answered, and those handed to their own messages, are not its
    own any more. A member sent but not yet recorded is sent again under its own key,
    which the provider answers once.
    """
    broker = runtime.current().broker
    for email_id, retry_count in sorted(unfinished.items()):
        message = _own_message(email_id, retry_count, transactional=transactional)
        if leases.pass_lease(emails.TABLE, session, email_id, holder=current_message_id(), to=message.message_id):
            broker.enqueue(message)
    report(Outcome.DONE, split=len(unfinished))


def _own_message(email_id: int, retries: int, *, transactional: bool) -> Message[Any]:
    """A member's own single-email message, carrying the retries its row counted."""
    return single_sender(transactional=transactional).message(email_id).copy(options={"retries": retries})


def _nothing_started(session: Any, ids: list[int]) -> None:
    """No member started: skip, or do what this very message must do for a member it holds."""
    now = utcnow()
    holder = current_message_id()
    for email_id in ids:
        decided = step(leases.not_started(emails.TABLE, session, email_id, holder=holder, now=now), now=now)
        if isinstance(decided, ComeBack):
            raise Deferred(f"email group: the retry of email {email_id} is due later", retry_after=decided.wait)
        if isinstance(decided, DeadLetterAgain):
            raise GivenUpEarlier(f"email group: email {email_id} was given up by an earlier delivery")
    report(Outcome.SKIPPED)
