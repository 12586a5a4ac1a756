"""Housekeeping ticks: the dead-letter archive's retention.

``dead_letters`` keeps every message that died, with its arguments, so it grows
with every incident; after DEAD_LETTER_RETENTION_DAYS (180) a dead letter has been
seen, replayed or written off, and is deleted, in bounded batches (see
``pipeline.dlq.purge_older_than``). ``minalesh-workers dlq purge --older-than``
does the same by hand.
"""

from __future__ import annotations

import logging

import dramatiq
from periodiq import cron

from actors.emails import TICKS_QUEUE
from pipeline import dlq
from pipeline.core import runtime

logger = logging.getLogger(__name__)

#: Daily at 03:17 (DEAD_LETTER_PRUNE_SCHEDULE overrides it), off the top of the hour.
DEFAULT_PRUNE_SCHEDULE = "17 3 * * *"


@dramatiq.actor(queue_name=TICKS_QUEUE, periodic=cron(DEFAULT_PRUNE_SCHEDULE), max_retries=0)
def prune_dead_letters() -> None:
    """Delete dead letters older than DEAD_LETTER_RETENTION_DAYS."""
    current = runtime.current()
    days = current.settings.dead_letter_retention_days
    deleted = dlq.prune(current.sessions, retention_days=days)
    logger.info("Pruned %d dead letters older than %d days.", deleted, days)
