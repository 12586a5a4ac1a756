"""RabbitMQ's depths of every queue we declare, its delay queue and its dead-letter queue.

Asked the way Dramatiq's broker asks (``queue_declare`` with the queue's own
arguments, which answers the message count; no management plugin needed), on one
thread of its own: Dramatiq's broker keeps a connection per thread, and the web
server's thread pool would otherwise open one per pool thread. A failure drops
that connection, so the next call starts on a fresh one.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Optional

from dramatiq import Broker
from dramatiq.brokers.rabbitmq import RabbitmqBroker

from pipeline.core.errors import describe

logger = logging.getLogger(__name__)

#: The depths wait at most this long for RabbitMQ.
DEPTHS_TIMEOUT_SECONDS = 5.0


class QueueDepths:
    """``depths()``: one dict per declared queue, or None when RabbitMQ cannot be asked now."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="queue-depths")

    def depths(self) -> Optional[list[dict[str, Any]]]:
        if not isinstance(self.broker, RabbitmqBroker):
            return None
        try:
            return self._thread.submit(self._ask, self.broker).result(timeout=DEPTHS_TIMEOUT_SECONDS)
        except Exception as exc:
            logger.warning("Could not read the queues' depths from RabbitMQ: %s", describe(exc))
            return None

    def _ask(self, broker: RabbitmqBroker) -> list[dict[str, Any]]:
        try:
            depths = []
            for name in sorted(q for q in broker.get_declared_queues() if not q.endswith((".DQ", ".XQ"))):
                ready, delayed, dead = broker.get_queue_message_counts(name)
                depths.append({"name": name, "ready": ready, "delayed": delayed, "dead": dead})
            return depths
        except Exception:
            del broker.connection  # a closed channel or connection: the next call opens a new one
            raise
