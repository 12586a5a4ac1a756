"""A Dramatiq actor that does nothing: the ceiling of RabbitMQ and a Dramatiq worker here.

Workers::

    dramatiq bench.peers.noop --processes 2 --threads 8

Fill the queue (before the workers start, so the drain is timed alone)::

    python -m bench.peers.noop publish 3000

Reads BROKER_URL.
"""

from __future__ import annotations

import sys

import dramatiq
from dramatiq.brokers.rabbitmq import RabbitmqBroker

from bench.peers import plain

#: The queue the no-op messages wait in.
QUEUE = "noop"

broker = RabbitmqBroker(url=plain.broker_url())
dramatiq.set_broker(broker)


@dramatiq.actor(queue_name=QUEUE)
def noop() -> None:
    """Nothing: what is left is the broker, the decoding, the middleware and the ack."""


def publish(count: int) -> None:
    for _ in range(count):
        noop.send()
    broker.close()


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "publish":
        raise SystemExit("usage: python -m bench.peers.noop publish COUNT")
    publish(int(sys.argv[2]))
