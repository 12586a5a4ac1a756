"""The figures of ``minalesh-workers stats``, one section per kind of work."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from pipeline.core.runtime import Runtime
from pipeline.providers.resend import WITH_DELIVERY_EVENTS
from storage import dead_letters, delivery_events, emails, inventory, orders, periodic_runs, suppressions, webhooks


def collect(current: Runtime) -> dict[str, Any]:
    """Every figure; ``sending`` is the provider limiter's state (the rate in use, any pause).

    ``orders``: paid orders flagged short of stock (``stock_short``) and the newest of their ids.
    ``periodic``: each periodic job's last success, last failure and its error, by actor name.
    ``delivery``: the bounce and complaint rates of the last 24 hours and 7 days of sends, events
    naming no email of ours (``unmatched_events``), suppressed addresses and emails held back.
    """
    with current.sessions() as session:
        groups = dead_letters.groups(session)  # the totals below are sums of it: one read of the archive
        figures = {
            "emails": emails.count_by_status(session),
            "emails_by_priority": emails.count_by_priority(session),
            "dead_letters": sum(group["count"] for group in groups),
            "dead_letters_by_queue": dead_letters.by_queue(groups),
            "dead_letter_groups": groups,
            "reservations": inventory.reservation_stats(session),
            "orders": orders.stock_stats(session),
            "webhooks": webhooks.stats(session),
            "periodic": {runs.job: runs.as_json() for runs in periodic_runs.all_runs(session)},
            "delivery": delivery(session),
        }
    figures["sending"] = current.sending.state()
    return figures


def delivery(session: Session) -> dict[str, Any]:
    """The ``delivery`` section: rates per window, the thresholds, unmatched events, suppressions."""
    return {
        "rates": delivery_events.rates(session, providers=WITH_DELIVERY_EVENTS),
        "thresholds": {
            "bounce_rate": delivery_events.BOUNCE_RATE_LIMIT,
            "complaint_rate": delivery_events.COMPLAINT_RATE_LIMIT,
        },
        "unmatched_events": delivery_events.unmatched(session),
        "suppressed_addresses": suppressions.count(session),
        "suppressed_emails": delivery_events.suppressed_count(session),
    }
