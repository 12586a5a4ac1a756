"""One attempt at a leased row, as every item actor runs it: start, decide, run counted.

An email, a batch of emails and a payment webhook event all go the same way
(``storage.leases`` holds the statements): start a counted attempt under this
message's lease; then, from what the row said, go on, skip (done, failed, in
another message's hands), come back when the row's retry is due, or dead-letter
again what an earlier delivery of this very message gave up; and run the body so
that a failure carries the row's retry count to the backoff middleware. Actors
write this once, as::

    with leased_attempt(emails.TABLE, email_id, lease=..., max_attempts=..., label=...) as email:
        if email is None:
            return  # nothing to do now; reported skipped
        ...  # the provider call

What happens after the block (marking the row done) is the actor's, outside the
count: a failure there is the database's, not the item's.

``step`` is the pure decision; ``counted_attempt`` applies it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Optional, Protocol, TypeVar, Union

from dramatiq.middleware import CurrentMessage

from pipeline.core import runtime
from pipeline.core.errors import Deferred, PermanentError, RetriesExhausted
from pipeline.core.outcomes import Outcome, counting, report
from storage import leases
from storage.clock import utcnow
from storage.leases import Attempt, AttemptOutcome, LeasedTable


class CountedItem(Protocol):
    """An item whose attempts are counted in its row (an email, a webhook event).

    Read-only, as the items are frozen snapshots of their rows.
    """

    @property
    def retry_count(self) -> int: ...

    @property
    def attempts(self) -> int: ...


C = TypeVar("C", bound=CountedItem)


class GivenUpEarlier(PermanentError):
    """This message's earlier delivery gave its item up, and its nack was lost: dead-letter it again."""


@dataclass(frozen=True)
class Go:
    """Run the body; ``exhausted``: more attempts were started than allowed, so refuse at once."""

    exhausted: bool = False


@dataclass(frozen=True)
class Skip:
    """Nothing to do now: done, failed, or in another message's hands."""


@dataclass(frozen=True)
class ComeBack:
    """This message holds the row's retry and came back early: run it again in ``wait`` seconds."""

    wait: float


@dataclass(frozen=True)
class DeadLetterAgain:
    """This message gave the row up before and came back: its dead letter must not be lost."""


#: What an actor does with what ``start_attempt`` said.
Step = Union[Go, Skip, ComeBack, DeadLetterAgain]


def step(attempt: Attempt[Any], *, now: datetime) -> Step:
    """What to do with ``attempt``, decided from the row's answer alone."""
    if attempt.outcome is AttemptOutcome.NOT_DUE and attempt.due_at is not None:
        return ComeBack(wait=max((attempt.due_at - now).total_seconds(), 0.0))
    if attempt.outcome is AttemptOutcome.GIVEN_UP:
        return DeadLetterAgain()
    if attempt.outcome is AttemptOutcome.SKIP or attempt.item is None:
        return Skip()
    return Go(exhausted=attempt.outcome is AttemptOutcome.EXHAUSTED)


def current_message_id() -> Optional[str]:
    """The id of the message this worker thread processes: the lease holder of its attempt."""
    message = CurrentMessage.get_current_message()
    return message.message_id if message is not None else None


@contextmanager
def leased_attempt(
    table: LeasedTable[C], row_id: int, *, lease: timedelta, max_attempts: int, label: str
) -> Iterator[Optional[C]]:
    """Start a counted attempt at ``row_id`` for this message and run the block on its item.

    The item is None when there is nothing to do now (reported ``skipped``): the
    block must then return. See ``counted_attempt`` for the rest.
    """
    with runtime.current().sessions.begin() as session:
        attempt = leases.start_attempt(
            table, session, row_id, lease=lease, max_attempts=max_attempts, holder=current_message_id()
        )
    with counted_attempt(attempt, label=label, max_attempts=max_attempts) as item:
        yield item


@contextmanager
def counted_attempt(attempt: Attempt[C], *, label: str, max_attempts: int) -> Iterator[Optional[C]]:
    """The block of an attempt already started, applying ``step``.

    Raises ``Deferred`` (come back when the retry is due) or ``GivenUpEarlier`` (a
    permanent error: dead-letter again) before the block; yields None, reported
    ``skipped``, when there is nothing to do; otherwise yields the item, refusing an
    exhausted one (``RetriesExhausted``) and telling the middleware the row's retry
    count should the block fail (``counting``).
    """
    decided = step(attempt, now=utcnow())
    if isinstance(decided, ComeBack):
        raise Deferred(f"{label}: its retry is due later", retry_after=decided.wait)
    if isinstance(decided, DeadLetterAgain):
        raise GivenUpEarlier(f"{label}: given up by an earlier delivery of this message")
    if isinstance(decided, Skip):
        report(Outcome.SKIPPED)
        yield None
        return
    assert attempt.item is not None
    item = attempt.item
    with counting(item.retry_count):
        if decided.exhausted:
            raise RetriesExhausted(f"{label}: attempt {item.attempts} started, {max_attempts} allowed")
        yield item
