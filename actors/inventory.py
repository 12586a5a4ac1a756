"""The reservation cleanup: expired holds give their stock back, once.

All the care (disjoint batches, the ``status = 'active'`` guard against a racing
commit or a second cleanup) lives in ``storage.inventory``; this actor only runs
it on the schedule.
"""

from __future__ import annotations

from pipeline.core import runtime
from pipeline.core.declare import JobReport, periodic
from storage import inventory


@periodic(schedule="reservation_schedule", tick="reservations", cron="cleanup-reservations")
def cleanup_reservations() -> JobReport:
    """Expire every active reservation past its expires_at, giving its stock back."""
    current = runtime.current()
    expired = inventory.expire_all_due(current.sessions, batch_size=current.settings.reservation_batch_size)
    details = [f"released reservation {r.id}: product {r.product_id}, {r.quantity} units" for r in expired]
    units = sum(r.quantity for r in expired)
    summary = f"Expired {len(expired)} reservations, {units} units back in stock."
    return JobReport(summary, details, processed=len(expired))
