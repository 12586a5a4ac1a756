"""Failed connections as the drivers raise them, for the tests of what they mean and how they are logged."""

from __future__ import annotations

import pika.exceptions
from dramatiq.errors import ConnectionClosed
from pika.adapters.utils.connection_workflow import AMQPConnectorSocketConnectError


def refused_socket() -> pika.exceptions.AMQPConnectionError:
    """What ``pika.BlockingConnection`` raises when nothing listens on the port (a real one's repr)."""
    return pika.exceptions.AMQPConnectionError(
        AMQPConnectorSocketConnectError(ConnectionRefusedError(111, "Connection refused"))
    )


def refused_consumer() -> ConnectionClosed:
    """What Dramatiq's RabbitMQ consumer raises in that case."""
    return ConnectionClosed(refused_socket())
