"""The email pipeline written plainly on Dramatiq: one actor, a thread-local connection.

Workers::

    dramatiq bench.peers.dramatiq_pipeline --processes 2 --threads 8

Fan-out (claims every due email and sends one message per email)::

    python -m bench.peers.dramatiq_pipeline fan-out

Reads DATABASE_URL, BROKER_URL, RESEND_API_KEY and RESEND_API_URL. Dramatiq's
defaults throughout: its default middleware (``Retries`` and the rest), no
publisher confirms, a prefetch of twice the threads.
"""

from __future__ import annotations

import threading

import dramatiq
from dramatiq.brokers.rabbitmq import RabbitmqBroker

from bench.peers import plain

broker = RabbitmqBroker(url=plain.broker_url())
dramatiq.set_broker(broker)
plain.configure_resend()

_local = threading.local()


def _connection():  # type: ignore[no-untyped-def]
    """This worker thread's connection, opened on its first email."""
    if getattr(_local, "connection", None) is None:
        _local.connection = plain.connect()
    return _local.connection


@dramatiq.actor(queue_name="emails")
def send_email(email_id: int) -> None:
    plain.send_email(_connection(), email_id)


def fan_out() -> int:
    return plain.fan_out(send_email.send)


if __name__ == "__main__":
    plain.command_line("dramatiq_pipeline", fan_out)
