"""The ticker: periodiq's scheduler emitting our periodic actors.

periodiq has no leader election; two tickers both emit. That is safe by design:
every periodic actor claims its work in the database (``FOR UPDATE SKIP LOCKED``),
so a doubled tick finds nothing left to do.
"""

from __future__ import annotations

import logging
import threading

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


def enqueue_due_work() -> int:
    """What the wake-up runs: the email fan-out, and the events whose message is missing."""
    return enqueue_due_emails() + enqueue_due_webhooks()


def run_ticker(current: Runtime) -> None:
    """Emit every periodic actor on its schedule until the process is stopped (main thread only).

    On PostgreSQL with EMAIL_LISTEN on, the email wake-up listens beside it (``pipeline.core.wakeup``).
    """
    if current.settings.email_listen and is_listenable(current.settings.database_url):
        WakeUp(
            current.settings.database_url,
            current.sessions,
            enqueue_due_work,
            next_probe=current.sending.outage_wait,
        ).start(threading.Event())
    actors = periodic_actors(current.broker)
    for actor in actors:
        logger.info("Scheduling %s on '%s'.", actor.actor_name, actor.options["periodic"])
    scheduler = ResilientScheduler(actors=actors)
    scheduler.schedule()
    scheduler.loop()
