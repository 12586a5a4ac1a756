"""Sub-second pickup: the email fan-out runs when an email is inserted, not at the next tick.

The ticker runs ``EmailWakeUp`` in a thread: it LISTENs for the ``email_queue``
insert trigger's notifications and fans out as soon as one arrives, and again when
the earliest scheduled email comes due. Notifications are hints, never the only
path: every (re)connect is followed by one fan-out (anything inserted while the
listener was away), and the cron tick (EMAIL_SCHEDULE) stays the safety net. A
PostgreSQL restart costs the listener its connection; it reconnects by itself,
backing off to ``MAX_RECONNECT_SECONDS``.

Turn it off with EMAIL_LISTEN=false (for a transaction-pooling PgBouncer, which
cannot carry LISTEN); emails then wait for the cron tick.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime
from typing import Optional

from sqlalchemy.orm import Session, sessionmaker

from storage.clock import utcnow
from storage.notifications import Listener, next_scheduled_at

logger = logging.getLogger(__name__)

#: Longest wait without a notification: the connection is pinged and scheduled emails looked up.
IDLE_SECONDS = 10.0
#: A fan-out that failed (the broker was away) is tried again after this long.
FAN_OUT_RETRY_SECONDS = 2.0
#: Backoff of a failed (re)connect, doubling up to the maximum.
FIRST_RECONNECT_SECONDS = 0.5
MAX_RECONNECT_SECONDS = 10.0


class EmailWakeUp:
    """Runs ``fan_out`` on every insert notification, on each (re)connect, and when a scheduled email is due."""

    def __init__(
        self,
        database_url: str,
        sessions: sessionmaker[Session],
        fan_out: Callable[[], int],
        *,
        connect: Callable[[str], Listener] = Listener,
    ) -> None:
        self.database_url = database_url
        self.sessions = sessions
        self.fan_out = fan_out
        self.connect = connect

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
                logger.warning("Email wake-up cannot listen (%s); again in %.1fs.", type(exc).__name__, backoff)
                stop.wait(backoff)
                backoff = min(backoff * 2, MAX_RECONNECT_SECONDS)
                continue
            backoff = FIRST_RECONNECT_SECONDS
            logger.info("Email wake-up listening for new emails.")
            try:
                self._listen(listener, stop)
            except Exception as exc:
                logger.warning("Email wake-up lost its connection (%s); reconnecting.", type(exc).__name__)
            finally:
                listener.close()

    def _listen(self, listener: Listener, stop: threading.Event) -> None:
        owed = not self._fan_out("connected")  # whatever was inserted while nobody listened
        while not stop.is_set():
            timeout, scheduled = self._timeout()
            notified = listener.wait(FAN_OUT_RETRY_SECONDS if owed else timeout)
            if notified:
                owed = not self._fan_out(f"{notified} notification(s)")
            elif owed:
                owed = not self._fan_out("retrying a failed fan-out")
            elif scheduled is not None and scheduled <= utcnow():
                owed = not self._fan_out("a scheduled email is due")

    def _timeout(self) -> tuple[float, Optional[datetime]]:
        """Until the next scheduled email (if sooner than ``IDLE_SECONDS``), and that time."""
        now = utcnow()
        with self.sessions() as session:
            scheduled = next_scheduled_at(session, after=now)
        if scheduled is None:
            return IDLE_SECONDS, None
        return min(max((scheduled - now).total_seconds(), 0.0), IDLE_SECONDS), scheduled

    def _fan_out(self, why: str) -> bool:
        """One fan-out; False when it failed (RabbitMQ away): it is tried again shortly."""
        try:
            count = self.fan_out()
        except Exception as exc:
            logger.warning(
                "Email wake-up could not fan out (%s); again in %.0fs.", type(exc).__name__, FAN_OUT_RETRY_SECONDS
            )
            return False
        if count:
            logger.info("Email wake-up (%s): enqueued %d emails.", why, count)
        return True
