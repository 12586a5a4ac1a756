"""Sub-second pickup: the fan-out runs when an email is inserted, not at the next tick.

The ticker runs ``WakeUp`` in a thread: it LISTENs for the ``email_queue``
insert trigger's notifications and fans out as soon as one arrives, when the
earliest scheduled email comes due, when a paused provider's probe (or other work
the fan-out put off) is due, every second while a drain goes on (a fan-out claims
only what the provider's rate sends within part of a lease) and every
``IDLE_SECONDS`` otherwise. Notifications are hints, never the only
path: every (re)connect is followed by one fan-out (anything inserted while the
listener was away), and the cron tick (EMAIL_SCHEDULE) stays the safety net. A
PostgreSQL restart costs the listener its connection; it reconnects by itself,
backing off to ``MAX_RECONNECT_SECONDS``.

The fan-out also re-enqueues payment webhook events whose message is missing (one
the intake or a retry could not send while RabbitMQ was away hands its claim back
at once), at most once a second (``pipeline.ticker.DueWork``), so those wait a
second too, not their lease and ``WEBHOOK_SCHEDULE``.

Turn it off with EMAIL_LISTEN=false (for a transaction-pooling PgBouncer, which
cannot carry LISTEN); emails then wait for the cron tick.
"""

from __future__ import annotations

import enum
import logging
import threading
from collections.abc import Callable
from typing import Optional

from sqlalchemy.orm import Session, sessionmaker

from pipeline.core.connection_errors import Address, database_failure, in_words
from storage.clock import utcnow
from storage.notifications import Listener, next_scheduled_at

logger = logging.getLogger(__name__)


class _Outcome(enum.Enum):
    IDLE = "nothing was due"
    ENQUEUED = "emails were enqueued"
    FAILED = "the fan-out failed"


#: Longest wait without a notification: the connection is pinged, and a fan-out polls (a
#: notification lost while the listener reconnected is picked up within this long).
IDLE_SECONDS = 10.0
#: After a fan-out that failed (the broker was away) or claimed emails, the next one comes this soon.
AGAIN_SECONDS = 1.0
#: The wake-up comes this long after known work (a paused provider's probe) is due (so it finds it due).
PROBE_MARGIN_SECONDS = 0.05
#: Backoff of a failed (re)connect, doubling up to the maximum.
FIRST_RECONNECT_SECONDS = 0.5
MAX_RECONNECT_SECONDS = 10.0


class WakeUp:
    """Runs ``fan_out`` on every insert notification, on each (re)connect, and when a scheduled email is due."""

    def __init__(
        self,
        database_url: str,
        sessions: sessionmaker[Session],
        fan_out: Callable[[], int],
        *,
        connect: Callable[[str], Listener] = Listener,
        next_due: Callable[[], Optional[float]] = lambda: None,
    ) -> None:
        self.database_url = database_url
        self.sessions = sessions
        self.fan_out = fan_out
        self.connect = connect
        #: Seconds until work the fan-out knows of is due (a paused provider's probe, a check it
        #: put off; None: none), so the fan-out that does it comes then, not at the next poll.
        self.next_due = next_due

    def start(self, stop: threading.Event) -> threading.Thread:
        thread = threading.Thread(target=self.run, args=(stop,), name="email-wakeup", daemon=True)
        thread.start()
        return thread

    def run(self, stop: threading.Event) -> None:
        """Listen until ``stop`` is set, reconnecting after any failure."""
        backoff = FIRST_RECONNECT_SECONDS
        while not stop.is_set():
            try:
                listener = self.connect(self.database_url)
            except Exception as exc:
                cause = database_failure(exc, Address.of_database(self.database_url)).reason
                logger.warning("Wake-up cannot listen: %s; again in %.1fs.", cause, backoff)
                stop.wait(backoff)
                backoff = min(backoff * 2, MAX_RECONNECT_SECONDS)
                continue
            backoff = FIRST_RECONNECT_SECONDS
            logger.info("Wake-up listening for new emails.")
            try:
                self._listen(listener, stop)
            except Exception as exc:
                logger.warning("Wake-up lost its connection (%s); reconnecting.", in_words(exc))
            finally:
                listener.close()

    def _listen(self, listener: Listener, stop: threading.Event) -> None:
        """Fan out on connect, then on every notification and at the end of every wait."""
        outcome = self._fan_out("connected")  # whatever was inserted while nobody listened
        while not stop.is_set():
            # Inserts notified during the last fan-out are fanned out at once: at a shop's peak one
            # comes every few milliseconds, and the wait's timeout costs two reads of the database.
            notified = listener.pending()
            if not notified:
                timeout = self._timeout()
                if outcome is not _Outcome.IDLE:
                    timeout = min(timeout, AGAIN_SECONDS)
                notified = listener.wait(timeout)
            outcome = self._fan_out(f"{notified} notification(s)" if notified else "poll")

    def _timeout(self) -> float:
        """Until the next scheduled email comes due, at most ``IDLE_SECONDS``."""
        now = utcnow()
        with self.sessions() as session:
            scheduled = next_scheduled_at(session, after=now)
        timeout = IDLE_SECONDS
        if scheduled is not None:
            timeout = min(max((scheduled - now).total_seconds(), 0.0), IDLE_SECONDS)
        due = self.next_due()
        if due is not None and due > 0:
            timeout = min(timeout, due + PROBE_MARGIN_SECONDS)
        return timeout

    def _fan_out(self, why: str) -> _Outcome:
        """One fan-out. A failed one (RabbitMQ away), or one that claimed emails (its budget
        may have left some behind), is followed by another after ``AGAIN_SECONDS``."""
        try:
            count = self.fan_out()
        except Exception as exc:
            logger.warning("Wake-up could not fan out (%s); again in %.0fs.", in_words(exc), AGAIN_SECONDS)
            return _Outcome.FAILED
        if not count:
            return _Outcome.IDLE
        logger.info("Wake-up (%s): enqueued %d messages.", why, count)
        return _Outcome.ENQUEUED
