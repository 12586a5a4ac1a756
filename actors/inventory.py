"""The reservation cleanup: expired holds give their stock back, once.

All the care (disjoint batches, the ``status = 'active'`` guard against a racing
commit or a second cleanup) lives in ``storage.inventory``; this actor only runs
it on the schedule.
"""

from __future__ import annotations

import logging

import dramatiq
from periodiq import cron

from actors.emails import TICKS_QUEUE
from pipeline.core import runtime
from storage import inventory
from storage.inventory import ExpiredReservation

logger = logging.getLogger(__name__)


@dramatiq.actor(queue_name=TICKS_QUEUE, periodic=cron("*/5 * * * *"), max_retries=0)
def cleanup_reservations() -> None:
    """Expire every active reservation past its ``expires_at``."""
    expired = release_expired_reservations()
    logger.info("Cleanup expired %d reservations (%d units).", len(expired), sum(r.quantity for r in expired))


def release_expired_reservations() -> list[ExpiredReservation]:
    """One cleanup, callable from the CLI: bounded batches, each its own transaction."""
    current = runtime.current()
    return inventory.expire_all_due(current.sessions, batch_size=current.settings.reservation_batch_size)
