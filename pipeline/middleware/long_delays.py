"""Delays longer than RabbitMQ's consumer timeout, fired once and on time.

Dramatiq holds a delayed message unacked in the worker until it is due. RabbitMQ
closes a channel whose delivery stays unacked past ``consumer_timeout`` (30 minutes
by default) and redelivers everything on it, so a one-hour retry delay would be
cut short and repeated. Instead a long delay is split into hops no longer than
``max_hold``: the message carries its real due time in the ``not_before`` option,
and each hop that arrives early is sent on again (same message id) and acked.
"""

from __future__ import annotations

from typing import Any

from dramatiq import Broker, Message, MessageProxy, Middleware
from dramatiq.common import current_millis
from dramatiq.logging import get_logger
from dramatiq.middleware import SkipMessage

from pipeline.core.messages import AnyMessage


def send_later(broker: Broker, message: AnyMessage, delay_ms: int, max_hold_ms: int) -> None:
    """Enqueue ``message`` to run in ``delay_ms``, in hops of at most ``max_hold_ms``."""
    if delay_ms <= max_hold_ms:
        broker.enqueue(message, delay=delay_ms)  # type: ignore[arg-type]  # a proxy enqueues as its message, as in Dramatiq's Retries
        return
    due = current_millis() + delay_ms
    broker.enqueue(message.copy(options={"not_before": due}), delay=max_hold_ms)


class LongDelays(Middleware):
    """Sends a message that arrived before its ``not_before`` on its next hop."""

    def __init__(self, *, max_hold_ms: int) -> None:
        """``max_hold_ms``: BROKER_MAX_HOLD_MINUTES, well below RabbitMQ's ``consumer_timeout``."""
        self.logger = get_logger(__name__, type(self))
        self.max_hold_ms = max_hold_ms

    def before_process_message(self, broker: Broker, message: MessageProxy) -> None:
        not_before = message.options.get("not_before")
        if not isinstance(not_before, int):
            return
        remaining = not_before - current_millis()
        if remaining <= 0:
            return
        self.logger.debug("Message %s is due in %d ms: next hop.", message.message_id, remaining)
        send_later(broker, _undelayed(message), remaining, self.max_hold_ms)
        raise SkipMessage()


def _undelayed(message: MessageProxy) -> Message[Any]:
    """A copy bound for the canonical queue, without the eta of the hop just made."""
    copy = message.copy()
    copy.options.pop("eta", None)
    return copy
