"""Housekeeping ticks: the dead-letter archive's retention.

``dead_letters`` keeps every message that died, with its arguments, so it grows
with every incident; after DEAD_LETTER_RETENTION_DAYS (180) a dead letter has been
seen, replayed or written off, and is deleted, in bounded batches (see
``storage.dead_letters.purge_older_than``). ``minalesh-workers dlq purge
--older-than`` does the same by hand.
"""

from __future__ import annotations

from pipeline.core import runtime
from pipeline.core.declare import JobReport, periodic
from storage import dead_letters


@periodic(schedule="dead_letter_prune_schedule", tick="dead-letters")
def prune_dead_letters() -> JobReport:
    """Delete dead letters older than DEAD_LETTER_RETENTION_DAYS."""
    current = runtime.current()
    days = current.settings.dead_letter_retention_days
    deleted = dead_letters.prune(current.sessions, retention_days=days)
    return JobReport(f"Pruned {deleted} dead letters older than {days} days.")
