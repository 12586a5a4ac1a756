"""Well-formed messages: the bodies Dramatiq can be handed without breaking.

Dramatiq's ``Message.decode`` checks that a body is JSON with the right field
*names*, never their types, nor that the message belongs to the queue it arrived
on; its worker then trusts both, and a single bad body breaks it:

* ``options`` that is not an object (or an ``actor_name`` that cannot be looked
  up) raises in the consumer thread; the message stays unacked, so the restarted
  consumer is handed it first again, and nothing behind it ever runs;
* a ``queue_name`` other than the queue's runs, then the worker thread looks up
  a consumer by that name to ack it: the ``KeyError`` kills the thread and leaves
  the message unacked, and once RabbitMQ redelivers it, it kills the next thread;
* ``args`` that is a string or an object becomes a tuple of its characters or
  keys; a missing ``message_id`` is made up anew at every delivery;
* an option the worker or our middleware read, of the wrong type (``retries``
  that is a string, ``throws`` that is not a Python class), raises inside the
  worker's own error handling and kills the thread too.

``decode`` is the one strict decoder: the RabbitMQ consumer (``pipeline.core.broker``)
dead-letters every body it refuses before Dramatiq sees it, and the archiver keeps
such a body raw. Whether a well-formed message can *run* (its actor exists, its
arguments fit) is the next question, ``pipeline.middleware.poison``'s.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple, Optional

from dramatiq import Message
from dramatiq.common import dq_name, q_name
from dramatiq.errors import DecodeError
from dramatiq.message import get_encoder

#: The largest count an option may carry: the archive's integer columns hold no more.
MAX_COUNT = 2**31 - 1
#: How much of a bad value a reason quotes.
QUOTE_CHARS = 60


class MalformedMessage(DecodeError):
    """The body decodes, but not to a well-formed message for the queue it arrived on."""

    def __init__(self, reason: str, data: bytes) -> None:
        super().__init__(reason, data, None)


class Rule(NamedTuple):
    """What a value must be, said in words for the reason, and the test."""

    description: str
    test: Callable[[Any], bool]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return _is_int(value) or (isinstance(value, float) and value == value and abs(value) != float("inf"))


_STRING = Rule("a string", lambda value: isinstance(value, str))
_COUNT = Rule(f"a count (0 to {MAX_COUNT})", lambda value: _is_int(value) and 0 <= value <= MAX_COUNT)
_MILLISECONDS = Rule("a whole number of milliseconds", lambda value: _is_int(value) and value >= 0)
_TIME_MS = Rule("a time in milliseconds", _is_number)
_PRIORITY = Rule("a priority (0 to 255)", lambda value: value is None or (_is_int(value) and 0 <= value <= 255))

#: Every field of a Dramatiq message (it always writes all seven) and what it must be.
FIELDS: Mapping[str, Rule] = {
    "queue_name": _STRING,
    "actor_name": _STRING,
    "args": Rule("an array", lambda value: isinstance(value, list)),
    "kwargs": Rule("an object", lambda value: isinstance(value, dict)),
    "options": Rule("an object", lambda value: isinstance(value, dict)),
    "message_id": _STRING,
    "message_timestamp": Rule("an integer", _is_int),
}

#: The options something in our worker reads, and what each must be; other options pass untouched.
OPTIONS: Mapping[str, Rule] = {
    "eta": Rule(_TIME_MS.description, lambda value: value is None or _is_number(value)),  # the worker
    "time_limit": Rule("a number of milliseconds", lambda value: _is_number(value) and value > 0),  # TimeLimit
    "scheduled_at": _STRING,  # periodiq
    "not_before": _TIME_MS,  # LongDelays
    "retries": _COUNT,  # Backoff and the archive
    "deferrals": _COUNT,
    "max_retries": _COUNT,
    "retry_delay": _MILLISECONDS,
    "max_retry_delay": _MILLISECONDS,
    "traceback": _STRING,  # the archive
    "replay_of": _STRING,  # dlq replay
    "broker_priority": _PRIORITY,  # RabbitMQ, when a retry is enqueued
}

#: Options that hold Python objects (exception classes, callables) and so can never travel in a body.
UNSENDABLE_OPTIONS = frozenset({"throws"})


def decode(body: bytes, *, queue: str) -> Message:
    """The message in ``body``, if it is a well-formed message for ``queue``, the queue it arrived on.

    A body in a dead-letter queue ``X.XQ`` may be a message of ``X`` or ``X.DQ``;
    the archiver passes the queue it died on instead, when RabbitMQ says which.
    Raises ``DecodeError`` for a body that is not JSON, and its subclass
    ``MalformedMessage`` (the reason as its text) for one that is no such message.
    """
    try:
        fields = get_encoder().decode(body)
    except Exception as exc:  # the encoder's own DecodeError quotes the whole body: say it as Dramatiq does
        raise DecodeError("Failed to decode message.", body, exc) from exc
    reason = malformation(fields, queue=queue)
    if reason is not None:
        raise MalformedMessage(reason, body)
    return Message(**{**fields, "args": tuple(fields["args"])})


def malformation(fields: Any, *, queue: str) -> Optional[str]:
    """Why decoded ``fields`` are not a well-formed message for ``queue``, or None."""
    if not isinstance(fields, dict):
        return f"the body is {_kind(fields)}, not an object"
    for name, rule in FIELDS.items():
        if name not in fields:
            return f"{name} is missing"
        if not rule.test(fields[name]):
            return f"{name} must be {rule.description}, not {_kind(fields[name])}"
    unexpected = sorted(set(fields) - set(FIELDS))
    if unexpected:
        return f"unexpected field {unexpected[0]!r}"
    return _queue_problem(fields["queue_name"], queue) or _option_problem(fields["options"])


def _queue_problem(queue_name: str, queue: str) -> Optional[str]:
    """The worker acks through the consumer named by ``queue_name``: it must be the one that delivered it."""
    if queue.endswith(".XQ"):
        if queue_name in (q_name(queue), dq_name(queue)):
            return None
        return f"queue_name is {queue_name!r}, but the message was dead-lettered into {queue!r}"
    if queue_name == queue:
        return None
    return f"queue_name is {queue_name!r}, but the message arrived on {queue!r}"


def _option_problem(options: dict[str, Any]) -> Optional[str]:
    unsendable = sorted(UNSENDABLE_OPTIONS & set(options))
    if unsendable:
        return f"options.{unsendable[0]} cannot travel in a message"
    for name, rule in OPTIONS.items():
        if name in options and not rule.test(options[name]):
            return f"options.{name} must be {rule.description}, not {_quote(options[name])}"
    return None


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _quote(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= QUOTE_CHARS else text[: QUOTE_CHARS - 1] + "…"
