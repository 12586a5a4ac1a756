"""The batch actors: emails that were ready together, in one request to the provider.

A batch (``storage.batches``) was formed and committed with the claim, so every
attempt sends the same emails, in the same order, under the same idempotency key:
a retry after a timeout or a 5xx is answered by the provider once. One request
takes one slot of the provider's rate and carries up to 100 emails. The provider
validates each email (permissive mode): a refused one fails at once, with the
provider's reason in its ``last_error`` and a dead letter of its own; the rest are
sent. Every member keeps its own row, status, counts and provider id.

Dead letters: a batch that fails as a whole until its retries run out dead-letters
as one message (``send_email_batch`` or ``send_bulk_email_batch(batch_id)``, its members
listed by ``dlq show``);
replaying it revives the members and sends the same batch under the same key.
"""

from __future__ import annotations

from actors.emails import PROVIDER_KEY_LIFETIME, compose, email_actor, fail_alone, handed_back, lease
from pipeline.core import runtime
from pipeline.core.attempts import counted_attempt, current_message_id
from pipeline.core.declare import DeclaredActor
from pipeline.core.errors import PermanentError, describe
from pipeline.core.item_hooks import LeasedItemHooks
from pipeline.core.outcomes import Outcome, report
from pipeline.providers.base import OutgoingEmail, PartlySent, ProviderPaused, Refused
from pipeline.providers.sending import BatchSent
from storage import batches, emails, leases, suppressions
from storage.clock import utcnow
from storage.models import EmailPriority, EmailQueue, EmailStatus

_HOOKS = LeasedItemHooks(
    emails.TABLE,
    lease=lease,
    describe=batches.describe,
    idempotent_for=PROVIDER_KEY_LIFETIME,
    rows=batches.member_ids,
    reached=emails.last_reached,
)


@email_actor(bulk=False, hooks=_HOOKS)
def send_email_batch(batch_id: int) -> None:
    """Send transactional emails that were ready together in one request, at most once each."""
    deliver_batch(batch_id, transactional=True)


@email_actor(bulk=True, hooks=_HOOKS)
def send_bulk_email_batch(batch_id: int) -> None:
    """Send bulk emails in one request with what the provider's limit leaves, at most once each."""
    deliver_batch(batch_id, transactional=False)


def batch_sender_of(priority: EmailPriority) -> DeclaredActor:
    """The actor whose queue carries batches of ``priority``."""
    return send_bulk_email_batch if priority is EmailPriority.BULK else send_email_batch


def deliver_batch(batch_id: int, *, transactional: bool) -> None:
    """Count the members' attempts, render them, take one slot, send, record each result."""
    current = runtime.current()
    settings = current.settings
    label = f"email batch {batch_id}"
    with current.sessions.begin() as session:
        members = batches.member_ids(session, batch_id)
        key = batches.idempotency_key(session, batch_id)
        if not members or key is None:
            report(Outcome.SKIPPED)  # no such batch
            return
        started = leases.start_attempts(
            emails.TABLE,
            session,
            members,
            lease=lease(),
            max_attempts=settings.email_max_attempts,
            holder=current_message_id(),
        )
        # Its recipient suppressed: held back at the batch's first attempt (a retry repeats the first request).
        held = suppressions.hold_back(session, members, first_attempt_only=True)
        payload = [emails.EmailMessage.from_row(row) for row in emails.rows(session, members) if _to_send(row)]
        first = (
            started[0]
            if started
            else leases.not_started(emails.TABLE, session, members[0], holder=current_message_id(), now=utcnow())
        )
    ours = {attempt.item.id for attempt in started if attempt.item is not None}
    with counted_attempt(first, label=label, max_attempts=settings.email_max_attempts) as counted:
        if counted is None:
            return  # sent, failed or in flight
        outgoing, unrenderable = _compose_all(payload)
        answer = BatchSent([], None)  # every member suppressed or unrenderable: no request, no slot
        if outgoing:
            maybe_sent_by = next((email.maybe_sent_by for email in payload if email.maybe_sent_by), None)
            try:
                answer = current.sending.send_batch(
                    [email for _, email in outgoing],
                    idempotency_key=key,
                    transactional=transactional,
                    maybe_sent_by=maybe_sent_by,
                )
            except ProviderPaused as paused:
                if handed_back(paused, sorted(ours), pinned=maybe_sent_by is not None):
                    return
                raise
            except PartlySent as partial:  # the members answered are recorded; the retry sends the rest
                answered = outgoing[: len(partial.results)]
                partly = BatchSent(partial.results, partial.provider)
                _record(answered, partly, unrenderable, ours=ours, transactional=transactional)
                raise
    _record(outgoing, answer, unrenderable, ours=ours, transactional=transactional)
    refused = sum(isinstance(result, Refused) for result in answer.results)
    report(
        Outcome.SENT,
        emails=len(answer.results) - refused,
        refused=refused,
        suppressed=len(held),
        provider=answer.provider,
    )


#: A member in one of these is not in the request: held back, or answered by an earlier attempt.
_NOT_SENT_AGAIN = frozenset(status.value for status in (EmailStatus.SUPPRESSED, EmailStatus.SENT, EmailStatus.FAILED))


def _to_send(row: EmailQueue) -> bool:
    """Whether a member goes in this attempt's request.

    A member answered by an earlier attempt is left out: only a batch sent one by one
    (SMTP, ``PartlySent``) is ever retried with some members answered, and SMTP has
    no key to answer them again. A Resend batch is answered as a whole, so its retry
    still repeats its first request exactly, as its key requires.
    """
    return row.status not in _NOT_SENT_AGAIN


def _record(
    outgoing: list[tuple[int, OutgoingEmail]],
    answer: BatchSent,
    unrenderable: dict[int, str],
    *,
    ours: set[int],
    transactional: bool,
) -> None:
    """This attempt's members' results, in one transaction: sent, or failed with a dead letter of their own."""
    delivered, failures = _outcomes(outgoing, answer.results, unrenderable, ours=ours)
    with runtime.current().sessions.begin() as session:
        emails.mark_sent_many(session, delivered, provider=answer.provider)
        fail_alone(session, failures, transactional=transactional)


def _outcomes(
    outgoing: list[tuple[int, OutgoingEmail]],
    results: list[str | Refused],
    unrenderable: dict[int, str],
    *,
    ours: set[int],
) -> tuple[dict[int, str], dict[int, str]]:
    """{email id: provider id} of the sent members, {email id: error} of the failed, this attempt's only."""
    delivered: dict[int, str] = {}
    failures = {email_id: error for email_id, error in unrenderable.items() if email_id in ours}
    for (email_id, _), result in zip(outgoing, results, strict=True):
        if email_id not in ours:
            continue
        if isinstance(result, Refused):
            failures[email_id] = f"The provider refused it: {result.reason}"
        else:
            delivered[email_id] = result
    return delivered, failures


def _compose_all(members: list[emails.EmailMessage]) -> tuple[list[tuple[int, OutgoingEmail]], dict[int, str]]:
    """Every member rendered, in order; those whose template fails, apart (they fail alone, at once).

    Rendering is deterministic, so every attempt leaves out the same members and the
    request stays the same under the batch's key.
    """
    outgoing: list[tuple[int, OutgoingEmail]] = []
    unrenderable: dict[int, str] = {}
    for email in members:
        try:
            outgoing.append((email.id, compose(email)))
        except PermanentError as exc:
            unrenderable[email.id] = describe(exc)
    return outgoing, unrenderable
