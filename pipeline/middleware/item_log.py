"""One log line per processed message: its item, actor, attempt and outcome.

The backoff middleware knows a failed message's fate (retried, deferred, given
up); only the actor knows what a success was (sent, or nothing to do because the
item was sent already). The actor says so with ``pipeline.core.outcomes.report``; the middleware writes
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
from typing import Any, Optional

from pipeline.core.messages import AnyMessage
from pipeline.core.outcomes import Outcome

logger = logging.getLogger(__name__)

#: The outcomes logged at WARNING: the message failed; every other outcome is INFO.
FAILURES = frozenset({Outcome.RETRYING, Outcome.DEFERRED, Outcome.GIVEN_UP})


def log_outcome(message: AnyMessage, outcome: Outcome, *, attempt: int, **details: Any) -> None:
    """The one line of ``message``: ``item=… actor=… attempt=… outcome=…`` and the details."""
    item = item_of(message)
    fields = {"item": item, "actor": message.actor_name, "attempt": attempt, "outcome": outcome.value, **details}
    text = " ".join(f"{name}={'-' if value is None else value}" for name, value in fields.items())
    level = logging.WARNING if outcome in FAILURES else logging.INFO
    logger.log(level, "%s", text, extra={**fields, "message_id": message.message_id})


def item_of(message: AnyMessage) -> Optional[Any]:
    """The id a message is about (its first argument; a group's ids joined by commas), None for a tick."""
    if not message.args:
        return None
    item = message.args[0]
    return ",".join(map(str, item)) if isinstance(item, list) else item
