"""The email pipeline written plainly on Celery: one task, a connection per pool process.

Worker (prefork: one task at a time per child process)::

    celery -A bench.peers.celery_pipeline worker --pool prefork --concurrency 16

Fan-out (claims every due email and sends one task per email)::

    python -m bench.peers.celery_pipeline fan-out

Reads DATABASE_URL, BROKER_URL (RabbitMQ), RESEND_API_KEY and RESEND_API_URL.

Concurrency: Dramatiq runs ``--processes 2 --threads 8``, 16 messages at once in two
processes. Celery's prefork pool has no threads inside its processes: one child runs
one task at a time, so 16 tasks at once take ``--concurrency 16`` (16 children, fed by
one parent that holds the AMQP connection). That is the closest Celery gets to the
same 16 slots; its threads pool would match the shape better but is not what Celery
users run for this work. Like Dramatiq's, acks come after the task (``acks_late``),
and each child reserves one task ahead (``worker_prefetch_multiplier=1``).
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from bench.peers import plain

app = Celery("celery_pipeline", broker=plain.broker_url())
app.conf.update(
    task_acks_late=True,
    worker_prefetch_multiplier=1,
    task_ignore_result=True,
    result_backend=None,
    task_default_queue="emails",
    broker_connection_retry_on_startup=True,
)
plain.configure_resend()

#: This pool process's connection, opened on its first task (after the fork).
_connection: Any = None


@app.task(name="send_email")
def send_email(email_id: int) -> None:
    global _connection
    if _connection is None:
        _connection = plain.connect()
    plain.send_email(_connection, email_id)


def fan_out() -> int:
    return plain.fan_out(send_email.delay)


if __name__ == "__main__":
    plain.command_line("celery_pipeline", fan_out)
