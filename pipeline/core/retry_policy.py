"""What to do with a failed message: a pure decision, as procrastinate's ``RetryStrategy`` makes it.

``decide`` looks at the exception, the retries made and the actor's policy, and
returns one of four answers; it reads no clock, no database and no message, and
writes nothing. ``pipeline.middleware.backoff`` applies the answer (the message's
options, the item's row, the delayed message, the log line) in one place.

* ``Defer``: not the item's failure (``Deferred``, the database failing for now):
  run the message again, untouched, after the delay;
* ``Refund``: the provider's or our limiter's rate limit (``RateLimited``): run it
  again after the wait, the attempt given back to the item;
* ``GiveUp``: a ``PermanentError`` (or a class of the actor's ``throws``), or no
  retries left: the item fails and the message is dead-lettered;
* ``Retry``: anything else, after ``retry_delay * 2**retries_made`` capped by
  ``max_retry_delay``, exact, without jitter (1, 2, 4, 8, 16 … minutes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

from pipeline.core.errors import DEFAULT_RETRY_AFTER_SECONDS, Deferred, PermanentError, RateLimited
from storage.database import transient_failure

#: A message whose database was unreachable runs again after this long (ms), doubling per deferral.
DATABASE_RETRY_MS = 2_000
#: The longest wait of a message whose database stays unreachable (ms).
MAX_DATABASE_RETRY_MS = 30_000
#: ``GiveUp.reason``: the error says no retry can succeed (``PermanentError``, the actor's ``throws``).
PERMANENT = "permanent"
#: ``GiveUp.reason``: the actor's ``max_retries`` were made.
EXHAUSTED = "retries exhausted"


@dataclass(frozen=True, kw_only=True)
class Policy:
    """An actor's retry options, resolved message → actor → default, in milliseconds."""

    max_retries: int
    retry_delay_ms: int
    max_retry_delay_ms: int
    #: Exception classes this actor never retries, besides ``PermanentError``.
    throws: tuple[type[BaseException], ...] = ()


@dataclass(frozen=True)
class Retry:
    """Run the message again after ``delay_ms``, one retry spent; ``retries``: its count from now on."""

    delay_ms: int
    retries: int


@dataclass(frozen=True)
class Defer:
    """Run the message again after ``delay_ms``, nothing counted, its item's row untouched.

    ``deferrals``: the message's count of database deferrals from now on (each doubles
    the next wait); None when this deferral does not count (``Deferred`` says when).
    """

    delay_ms: int
    deferrals: Optional[int] = None


@dataclass(frozen=True)
class Refund:
    """Run the message again after ``delay_ms``; the item's row gives the attempt back."""

    delay_ms: int


@dataclass(frozen=True)
class GiveUp:
    """No more attempts: the item fails and the message is dead-lettered; ``reason`` says why."""

    reason: str


#: One of the four answers of ``decide``.
Decision = Union[Retry, Defer, Refund, GiveUp]


def decide(exception: BaseException, retries_made: int, policy: Policy, *, deferrals_made: int = 0) -> Decision:
    """What to do with a message that raised ``exception`` after ``retries_made`` retries."""
    if isinstance(exception, Deferred):
        return Defer(max(int(exception.retry_after * 1000), 1))
    if transient_failure(exception):
        return Defer(min(DATABASE_RETRY_MS * 2**deferrals_made, MAX_DATABASE_RETRY_MS), deferrals=deferrals_made + 1)
    if isinstance(exception, RateLimited):
        return Refund(int(max(exception.retry_after, DEFAULT_RETRY_AFTER_SECONDS) * 1000))
    if isinstance(exception, (PermanentError, *policy.throws)):
        return GiveUp(PERMANENT)
    if retries_made >= policy.max_retries:
        return GiveUp(EXHAUSTED)
    delay_ms = retry_delay_ms(retries_made, base_ms=policy.retry_delay_ms, cap_ms=policy.max_retry_delay_ms)
    return Retry(delay_ms, retries=retries_made + 1)


def retry_delay_ms(retries_made: int, *, base_ms: int, cap_ms: int) -> int:
    """The wait before retry number ``retries_made + 1``."""
    return int(min(base_ms * (2**retries_made), cap_ms))
