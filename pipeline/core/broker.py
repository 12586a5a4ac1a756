"""Dramatiq's RabbitMQ broker, with a prefetch cap per queue and a consumer that refuses malformed bodies.

Dramatiq gives every queue of a worker process the same prefetch (twice its
threads). Bulk emails spend most of their time waiting for a slot of the
provider's rate; with the full prefetch they would hold every worker thread, and a
transactional email or a payment webhook would wait for a thread to come free. A
small cap on the bulk queue keeps enough bulk sends in flight to use the whole
rate, and leaves the other threads to everything else.

Dramatiq's consumer dead-letters a body only when it is not JSON; one that is
JSON but not a well-formed message for its queue stalls the queue or kills worker
threads (``pipeline.core.wellformed`` says how). Ours checks every body with
``wellformed.decode`` first and nacks the ones it refuses into the queue's XQ, raw
and unrun, as Dramatiq does with undecodable ones; the worker never sees them, and
the archiver keeps them with their raw body.

A cluster's nodes (``BROKER_URL`` lists them) each get a share of the connections,
and a connection lost with its node is opened again on another (``parameters``).
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Generator, Iterator, Mapping
from typing import Any

import pika
from dramatiq import Consumer
from dramatiq.brokers import rabbitmq
from dramatiq.errors import DecodeError
from dramatiq.logging import get_logger

from pipeline.core import wellformed

#: How much of a refused body the log quotes.
LOGGED_BODY_BYTES = 200

#: What pika's ``channel.consume`` yields: (method, properties, body), or three Nones when idle.
Delivery = tuple[Any, Any, Any]


class RabbitmqBroker(rabbitmq.RabbitmqBroker):
    """``RabbitmqBroker`` whose consumers refuse malformed bodies, prefetch at most
    ``prefetch_caps[queue]`` on the queues named there, and spread their connections over
    a cluster's nodes."""

    def __init__(self, *, prefetch_caps: Mapping[str, int], **options: Any) -> None:
        super().__init__(**options)
        self.prefetch_caps = dict(prefetch_caps)

    @property
    def parameters(self) -> list[pika.URLParameters]:
        """The nodes in the order the next connection tries them: each one starts a node further on.

        Dramatiq reads this for every connection it opens (each consumer's, each
        publishing thread's, the archiver's), and pika connects to the first node of
        the list that answers. Starting each at the next node (the first at a random
        one) spreads a process's connections over the cluster, and a connection whose
        node went away comes back on a node that is still there.

        Dramatiq sets them from its ``url`` argument (a list when it has several nodes, as
        ``BROKER_URL`` may), and every broker here is built from a URL.
        """
        start = next(self._turns) % len(self._nodes)
        return self._nodes[start:] + self._nodes[:start]

    @parameters.setter
    def parameters(self, nodes: pika.URLParameters | list[pika.URLParameters]) -> None:
        self._nodes = nodes if isinstance(nodes, list) else [nodes]
        self._turns = itertools.count(random.randrange(len(self._nodes)))

    @property
    def consumer_class(self) -> type[rabbitmq._RabbitmqConsumer]:
        return WellFormedConsumer

    def consume(self, queue_name: str, prefetch: int = 1, timeout: int = 5000) -> Consumer:
        cap = self.prefetch_caps.get(queue_name)
        return super().consume(queue_name, prefetch=min(prefetch, cap) if cap else prefetch, timeout=timeout)


class WellFormedConsumer(rabbitmq._RabbitmqConsumer):
    """Dramatiq's consumer, handed only the deliveries whose body is a well-formed message for its queue.

    The deliveries are filtered where they come off the channel, so Dramatiq's own
    ``__next__`` (its connection handling, its delivery tags) stays as it is; a
    refused body is nacked without requeueing (RabbitMQ moves it to the XQ) and the
    consumer reports an idle turn, as it does for an undecodable body. The body is
    decoded twice, here and by Dramatiq: microseconds against a message's work.
    """

    def __init__(self, broker: rabbitmq.RabbitmqBroker, queue_name: str, prefetch: int, timeout: int) -> None:
        super().__init__(broker, queue_name, prefetch, timeout)
        self.logger = get_logger(__name__, type(self))
        self.iterator = self._well_formed(self.iterator)

    def _well_formed(self, deliveries: Iterator[Delivery]) -> Generator[Delivery, None, None]:
        for method, properties, body in deliveries:
            if method is None or self._accepts(body):
                yield method, properties, body
                continue
            self._nack(method.delivery_tag)
            yield None, None, None

    def _accepts(self, body: bytes) -> bool:
        try:
            wellformed.decode(body, queue=self.queue_name)
        except DecodeError as exc:
            self.logger.error(
                "Dead-lettered a body from %s unrun: %s; body: %r",
                self.queue_name,
                exc,
                body[:LOGGED_BODY_BYTES],
            )
            return False
        return True
