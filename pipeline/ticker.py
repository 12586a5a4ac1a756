"""The ticker: periodiq's scheduler emitting our periodic actors.

periodiq has no leader election; two tickers both emit. That is safe by design:
every periodic actor claims its work in the database (``FOR UPDATE SKIP LOCKED``),
so a doubled tick finds nothing left to do.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Optional

from dramatiq import Actor
from periodiq import Scheduler

from actors.fan_out import enqueue_due_emails
from actors.webhooks import enqueue_due_webhooks
from pipeline.bootstrap import periodic_actors
from pipeline.core.runtime import Runtime
from pipeline.core.wakeup import WakeUp
from storage.notifications import is_listenable

logger = logging.getLogger(__name__)


class ResilientScheduler(Scheduler):
    """A scheduler that outlives a broker outage: a tick that cannot be sent is logged and skipped."""

    def send_actors(self, actors: list[Actor], now: object) -> None:
        for actor in actors:
            try:
                actor.send_with_options(scheduled_at=str(now))
                logger.info("Tick: %s at %s.", actor.actor_name, now)
            except Exception:
                logger.exception("Could not emit %s at %s; the next tick will cover it.", actor.actor_name, now)


#: The wake-up re-enqueues the webhook events whose message is missing at most this often (seconds).
WEBHOOK_RECHECK_SECONDS = 1.0


class DueWork:
    """What the wake-up runs: the email fan-out every time; the webhook events whose message is missing
    at most every ``WEBHOOK_RECHECK_SECONDS``.

    At a shop's peak the wake-up fans out every few milliseconds, and the webhook claim
    (a statement and a transaction, nothing due but after a broker outage) was an eighth of
    the ticker's time, in every email's pickup. A check skipped for that reason makes the
    wake-up's next wait end when it is allowed (``wait``), so an event handed back is
    re-enqueued within a second as before.
    """

    def __init__(self) -> None:
        self._checked_at = -WEBHOOK_RECHECK_SECONDS
        self._skipped = False

    def __call__(self) -> int:
        count = enqueue_due_emails()
        now = time.monotonic()
        self._skipped = now - self._checked_at < WEBHOOK_RECHECK_SECONDS
        if not self._skipped:
            self._checked_at = now
            count += enqueue_due_webhooks()
        return count

    def wait(self) -> Optional[float]:
        """Seconds until a skipped webhook check may run (None: none was skipped)."""
        if not self._skipped:
            return None
        return max(self._checked_at + WEBHOOK_RECHECK_SECONDS - time.monotonic(), 0.001)


def earliest(*waits: Optional[float]) -> Optional[float]:
    """The shortest of the waits that are given; None if none is."""
    given = [wait for wait in waits if wait is not None]
    return min(given) if given else None


def run_ticker(current: Runtime) -> None:
    """Emit every periodic actor on its schedule until the process is stopped (main thread only).

    On PostgreSQL with EMAIL_LISTEN on, the email wake-up listens beside it (``pipeline.core.wakeup``).
    """
    if current.settings.email_listen and is_listenable(current.settings.database_url):
        due = DueWork()
        WakeUp(
            current.settings.database_url,
            current.sessions,
            due,
            next_due=lambda: earliest(current.sending.outage_wait(), due.wait()),
        ).start(threading.Event())
    actors = periodic_actors(current.broker)
    for actor in actors:
        logger.info("Scheduling %s on '%s'.", actor.actor_name, actor.options["periodic"])
    scheduler = ResilientScheduler(actors=actors)
    scheduler.schedule()
    scheduler.loop()
