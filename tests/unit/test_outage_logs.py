"""A lost RabbitMQ in the log: one line per round of reconnect attempts, no traceback.

The consumers are Dramatiq's own threads, failing as they do when RabbitMQ refuses
connections (a broker whose ``consume`` raises ``ConnectionClosed``), with Dramatiq's
restart delay shortened; the log is the one every process configures.
"""

from __future__ import annotations

import io
import logging
import threading
from collections.abc import Iterator

import dramatiq
import pytest
from dramatiq import Worker
from dramatiq import worker as dramatiq_worker
from dramatiq.brokers.stub import StubBroker
from dramatiq.errors import ConnectionClosed

from pipeline.core import outages
from pipeline.core.logs import configure_logging
from pipeline.core.settings import Settings
from tests.support.connection_support import refused_consumer
from tests.support.helpers import wait_until

#: Dramatiq's consumers wait this long before trying again (3 s in production).
RESTART_DELAY_SECONDS = 0.6
QUEUES = ("emails", "emails_bulk", "webhooks", "ticks")


class UnreachableBroker(StubBroker):
    """Every consumer it opens fails to connect, and it counts them."""

    def __init__(self) -> None:
        super().__init__(middleware=[])
        self.attempts = 0
        self.lock = threading.Lock()

    def consume(self, queue_name: str, prefetch: int = 1, timeout: int = 100) -> dramatiq.Consumer:
        with self.lock:
            self.attempts += 1
        raise refused_consumer()


@pytest.fixture
def log() -> Iterator[io.StringIO]:
    """The root logger as a process configures it (INFO, text), writing to a buffer; restored afterwards."""
    root = logging.getLogger()
    saved_handlers, saved_level, saved_pika = root.handlers[:], root.level, logging.getLogger("pika").level
    stream = io.StringIO()
    configure_logging(Settings.from_env({"LOG_LEVEL": "INFO"}))
    (handler,) = root.handlers
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(stream)
    yield stream
    root.handlers[:] = saved_handlers
    root.setLevel(saved_level)
    logging.getLogger("pika").setLevel(saved_pika)


def test_consumers_that_cannot_reach_rabbitmq_log_one_line_a_round(
    log: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dramatiq_worker, "CONSUMER_RESTART_DELAY_SECS", RESTART_DELAY_SECONDS)
    broker = UnreachableBroker()
    for queue in QUEUES:
        broker.declare_queue(queue)  # and its delay queue: eight consumers
    consumers = 2 * len(QUEUES)
    worker = Worker(broker, worker_threads=1, worker_timeout=100)
    worker.start()
    try:
        wait_until(lambda: broker.attempts >= 3 * consumers, timeout=20, what="three rounds of attempts")
    finally:
        worker.stop()
    rounds = -(-broker.attempts // consumers)
    lines = [line for line in log.getvalue().splitlines() if "ConsumerThread" in line]
    assert "Traceback" not in log.getvalue()
    assert not [line for line in lines if "Restarting consumer" in line]
    expected = f"Consumers lost RabbitMQ (connection refused); they try again every {RESTART_DELAY_SECONDS:g}s."
    assert lines and all(line.endswith(expected) and " CRITICAL " in line for line in lines), lines
    assert len(lines) <= rounds, f"{len(lines)} lines for {rounds} rounds of {consumers} consumers:\n" + "\n".join(
        lines
    )


def test_a_lost_connection_loses_its_traceback_and_keeps_its_message(log: io.StringIO) -> None:
    logger = logging.getLogger("dramatiq.brokers.rabbitmq")
    try:
        raise refused_consumer()
    except ConnectionClosed:
        logger.warning("Failed to ack message.", exc_info=True)
    try:
        raise ValueError("a bug")
    except ValueError:
        logger.exception("Something else failed.")
    written = log.getvalue()
    assert "Failed to ack message. (connection refused)\n" in written
    assert written.count("Traceback") == 1 and "ValueError: a bug" in written


def test_dramatiqs_three_line_warning_of_a_lost_connection_is_one_line(log: io.StringIO) -> None:
    logging.getLogger("dramatiq.worker.WorkerThread").warning(
        "Failed to post_process_message(%s) due to a connection error: %s\nThe operation will be retried in %s "
        "seconds until the connection recovers.\nIf you restart this worker before this operation succeeds, the "
        "message will be re-processed later.",
        "send_email(1)",
        refused_consumer(),
        5,
    )
    (line,) = log.getvalue().splitlines()
    assert "retried in 5 seconds" in line and "re-processed later" in line


def test_pika_logs_nothing_below_critical(log: io.StringIO) -> None:
    logging.getLogger("pika.adapters.blocking_connection").error("Connection workflow failed: %r", refused_consumer())
    assert log.getvalue() == "" and logging.getLogger("pika").level == outages.PIKA_LEVEL
