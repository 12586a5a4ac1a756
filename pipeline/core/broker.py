"""Dramatiq's RabbitMQ broker with a prefetch cap per queue.

Dramatiq gives every queue of a worker process the same prefetch (twice its
threads). Bulk emails spend most of their time waiting for a slot of the
provider's rate; with the full prefetch they would hold every worker thread, and a
transactional email or a payment webhook would wait for a thread to come free. A
small cap on the bulk queue keeps enough bulk sends in flight to use the whole
rate, and leaves the other threads to everything else.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dramatiq.brokers import rabbitmq


class RabbitmqBroker(rabbitmq.RabbitmqBroker):
    """``RabbitmqBroker`` whose consumers of the queues in ``prefetch_caps`` prefetch at most that many."""

    def __init__(self, *, prefetch_caps: Mapping[str, int], **options: Any) -> None:
        super().__init__(**options)
        self.prefetch_caps = dict(prefetch_caps)

    def consume(self, queue_name: str, prefetch: int = 1, timeout: int = 5000) -> rabbitmq._RabbitmqConsumer:
        cap = self.prefetch_caps.get(queue_name)
        return super().consume(queue_name, prefetch=min(prefetch, cap) if cap else prefetch, timeout=timeout)
