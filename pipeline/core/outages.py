"""One log line per reconnect attempt while RabbitMQ is away, instead of a traceback per queue.

A worker process (``-p 1``, eight queues with their delay queues) on a closed broker
port logged about a hundred lines every 3 s: each consumer thread Dramatiq's CRITICAL
"Consumer encountered a connection error" and its INFO "Restarting consumer in 3.00
seconds", and pika seven ERROR lines and a traceback per attempt. The reconnecting is
Dramatiq's and pika's and is left exactly as it is; only what reaches the log changes:

* pika's loggers are raised to CRITICAL (``PIKA_LEVEL``): every failure pika logs
  reaches its caller as an exception too, and the callers log it (Dramatiq's consumers
  and publishers, the archiver, the ticker);
* ``OneLinePerAttempt``, a handler filter: of the consumers' connection errors with the
  same cause, the first of each round is logged, with the cause in words
  (``pipeline.core.connection_errors.in_words``) and when the consumers try again, and the
  others of the round are dropped, as is each consumer's "Restarting consumer" line that
  follows one. A round is two thirds of Dramatiq's restart delay: the consumers of a
  process fail together and retry together, a delay apart. Each process logs its own
  attempts, so ``worker -p 2`` logs two lines a round.
* Any other record whose exception is a lost RabbitMQ connection (a failed ack, a tick
  that could not be sent) keeps its message, on one line, with the cause in words, and
  loses its traceback: the traceback only shows where the connection was in use.

Levels are not changed: what is logged at CRITICAL or WARNING stays so.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from dramatiq import worker as dramatiq_worker

from pipeline.core.connection_errors import in_words, is_lost_connection

#: pika's loggers log nothing below this (see the module's docstring).
PIKA_LEVEL = logging.CRITICAL
#: Dramatiq's consumer threads log as ``dramatiq.worker.ConsumerThread(<queue>)``.
CONSUMER_LOGGER = "dramatiq.worker.ConsumerThread"
#: The messages of Dramatiq's consumer thread this filter knows (``dramatiq.worker._ConsumerThread.run``).
CONNECTION_ERROR = "Consumer encountered a connection error: %s"
RESTARTING = "Restarting consumer in %0.2f seconds."
#: A round of consumers' attempts lasts this share of Dramatiq's restart delay.
ROUND_SHARE = 2 / 3


def quiet_pika() -> None:
    """pika logs nothing below ``PIKA_LEVEL``."""
    logging.getLogger("pika").setLevel(PIKA_LEVEL)


class OneLinePerAttempt(logging.Filter):
    """Consumers' connection errors, one line a round; other lost-connection records without their traceback."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.clock = clock
        self.lock = threading.Lock()
        #: When the last line of each cause was let through.
        self.logged_at: dict[str, float] = {}
        #: The consumers whose next "Restarting consumer" line follows a connection error.
        self.restarting: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith(CONSUMER_LOGGER):
            if record.msg == CONNECTION_ERROR and record.args:
                return self._connection_error(record)
            if record.msg == RESTARTING:
                with self.lock:
                    if record.name in self.restarting:
                        self.restarting.discard(record.name)
                        return False
        if record.exc_info and record.exc_info[1] is not None and is_lost_connection(record.exc_info[1]):
            _without_traceback(record, in_words(record.exc_info[1]))
        elif isinstance(record.msg, str) and "\n" in record.msg and _carries_lost_connection(record):
            _one_line(record, record.getMessage())
        return True

    def _connection_error(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else (record.args,)
        error = args[0]
        cause = in_words(error) if isinstance(error, BaseException) else str(error)
        delay = dramatiq_worker.CONSUMER_RESTART_DELAY_SECS
        now = self.clock()
        with self.lock:
            self.restarting.add(record.name)
            last = self.logged_at.get(cause)
            if last is not None and now - last < delay * ROUND_SHARE:
                return False
            self.logged_at[cause] = now
        _one_line(record, f"Consumers lost RabbitMQ ({cause}); they try again every {delay:g}s.")
        return True


def _carries_lost_connection(record: logging.LogRecord) -> bool:
    args = record.args if isinstance(record.args, tuple) else (record.args,)
    return any(isinstance(arg, BaseException) and is_lost_connection(arg) for arg in args)


def _without_traceback(record: logging.LogRecord, cause: str) -> None:
    _one_line(record, f"{record.getMessage()} ({cause})")
    record.exc_info, record.exc_text = None, None


def _one_line(record: logging.LogRecord, message: str) -> None:
    record.msg, record.args = " ".join(message.split("\n")), None
