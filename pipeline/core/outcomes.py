"""What a running actor tells the middleware about its message, through the worker thread.

Two things only the actor knows, and the backoff middleware needs once the message
is settled: what a success was (``report``: sent, or nothing to do because the item
was sent already), and, when it failed inside a counted attempt, how many retries
the item's row says were made (``counting``), so attempts by workers that died
mid-way still count. Both travel in thread-local slots, as Dramatiq's worker runs
an actor and its middleware's ``after_process_message`` in the same thread; the
exception itself is never written on.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum
from typing import Any, Optional


class Outcome(StrEnum):
    """What became of a message's item."""

    #: The provider took the email(s).
    SENT = "sent"
    #: The event was applied to its order.
    PROCESSED = "processed"
    #: Not sent: the recipient is suppressed (``email_suppressions``); the email ended ``suppressed``.
    SUPPRESSED = "suppressed"
    #: Nothing to do: done already, failed, not due or in another message's hands.
    SKIPPED = "skipped"
    #: Ran to the end (a tick, or an actor that reports nothing finer).
    DONE = "done"
    #: Failed; it runs again after ``delay_ms``, counted as a retry.
    RETRYING = "retrying"
    #: Not its item's failure (the database down, a rate-limit wait): runs again untouched.
    DEFERRED = "deferred"
    #: Failed for good: the item is marked failed and the message dead-lettered.
    GIVEN_UP = "given_up"


_reported = threading.local()
_counted = threading.local()


def report(outcome: Outcome, **details: Any) -> None:
    """The running actor's own word on its item, logged when its message is settled."""
    _reported.value = (outcome, details)


def take_report() -> tuple[Outcome, dict[str, Any]]:
    """What the actor of this thread reported (``DONE`` if nothing), cleared for the next message."""
    reported: tuple[Outcome, dict[str, Any]] = getattr(_reported, "value", None) or (Outcome.DONE, {})
    _reported.value = None
    return reported


def clear() -> None:
    """Forget what the previous message of this thread reported or counted."""
    _reported.value = None
    _counted.value = None


@contextmanager
def counting(retries_made: int) -> Iterator[None]:
    """Tell the middleware how many retries the database says were made, should the block fail.

    Wrap the part of an actor that may fail after it counted its attempt::

        with counting(attempt.retry_count):
            provider.send(...)
    """
    try:
        yield
    except Exception as exc:
        _counted.value = (exc, retries_made)
        raise


def retries_counted(exception: Optional[BaseException]) -> Optional[int]:
    """The retries made that ``counting`` noted for ``exception`` (this very object), if any."""
    counted = getattr(_counted, "value", None)
    if exception is None or counted is None or counted[0] is not exception:
        return None
    return int(counted[1])
