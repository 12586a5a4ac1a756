"""One log line per processed message: its item, actor, attempt and outcome.

The backoff middleware knows a failed message's fate (retried, deferred, given
up); only the actor knows what a success was (sent, or nothing to do because the
item was sent already). The actor says so with ``report``; the middleware writes
the line with ``log_outcome`` once the message is settled, so every message gets
exactly one line::

    item=42 actor=send_email attempt=2 outcome=retrying delay_ms=120000 error=TransientError: …

A failure (``retrying``, ``deferred``, ``given_up``) is a WARNING, its cause in ``error``;
the rest are INFO. For a failure some code expected it is the only line, without a
traceback (``pipeline.core.logs.ExpectedFailures``); a bug also gets Dramatiq's ERROR
line with the traceback, before this one.

In JSON logs (``LOG_FORMAT=json``) ``item``, ``actor``, ``attempt``, ``outcome``,
``message_id`` and the details are fields of their own.
"""

from __future__ import annotations

import logging
import threading
from enum import StrEnum
from typing import Any, Optional

from dramatiq import Message

logger = logging.getLogger(__name__)


class Outcome(StrEnum):
    """What became of a message's item."""

    #: The provider took the email(s).
    SENT = "sent"
    #: The event was applied to its order.
    PROCESSED = "processed"
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


#: The outcomes logged at WARNING: the message failed; every other outcome is INFO.
FAILURES = frozenset({Outcome.RETRYING, Outcome.DEFERRED, Outcome.GIVEN_UP})

_reported = threading.local()


def report(outcome: Outcome, **details: Any) -> None:
    """The running actor's own word on its item, logged when its message is settled."""
    _reported.value = (outcome, details)


def take_report() -> tuple[Outcome, dict[str, Any]]:
    """What the actor of this thread reported (``DONE`` if nothing), cleared for the next message."""
    reported = getattr(_reported, "value", None) or (Outcome.DONE, {})
    _reported.value = None
    return reported


def clear_report() -> None:
    _reported.value = None


def log_outcome(message: Message, outcome: Outcome, *, attempt: int, **details: Any) -> None:  # type: ignore[type-arg]
    """The one line of ``message``: ``item=… actor=… attempt=… outcome=…`` and the details."""
    item = item_of(message)
    fields = {"item": item, "actor": message.actor_name, "attempt": attempt, "outcome": outcome.value, **details}
    text = " ".join(f"{name}={'-' if value is None else value}" for name, value in fields.items())
    level = logging.WARNING if outcome in FAILURES else logging.INFO
    logger.log(level, "%s", text, extra={**fields, "message_id": message.message_id})


def item_of(message: Message) -> Optional[Any]:  # type: ignore[type-arg]
    """The id a message is about (its first argument), None for a tick."""
    return message.args[0] if message.args else None
