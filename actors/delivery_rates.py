"""The tick that watches the bounce and complaint rates against Resend's thresholds.

Resend may pause an account whose bounce rate passes 4% or complaint rate 0.08%,
without warning. Every DELIVERY_RATES_SCHEDULE (15 minutes) a worker reads both
rates over the last 24 hours of sends (one index range scan) and, for each rate at
or over its limit with at least ``MIN_SENDS_FOR_ALERT`` sends, alerts through
ALERT_WEBHOOK_URL / ALERT_EMAIL, at most once per ALERT_MIN_INTERVAL_MINUTES per rate
across every worker (``delivery_rate_alerts``). Prometheus' rules (deploy/prometheus)
warn at half and fire at the limit; this alert is for shops without Alertmanager.

The alert is an ERROR log line with an ``alert`` extra, logged after the throttle's
commit: ``pipeline.core.alerts.AlertLogHandler`` sends it (actors cannot call an alerter).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from pipeline.core import runtime
from pipeline.core.declare import JobReport, periodic
from pipeline.providers.resend import WITH_DELIVERY_EVENTS
from storage import delivery_events
from storage.clock import minutes, utcnow

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Crossing:
    """A rate at or over its limit."""

    rate: str
    value: float
    limit: float
    window: str
    figures: dict[str, Any]


def crossings(rates: dict[str, dict[str, Any]], *, window: str = "24h") -> list[Crossing]:
    """The rates of ``window`` at or over Resend's limits, if enough emails were sent to tell."""
    figures = rates[window]
    if figures["sent"] < delivery_events.MIN_SENDS_FOR_ALERT:
        return []
    found = []
    for rate, limit in (
        ("bounce", delivery_events.BOUNCE_RATE_LIMIT),
        ("complaint", delivery_events.COMPLAINT_RATE_LIMIT),
    ):
        value = float(figures[f"{rate}_rate"])
        if value >= limit:
            found.append(Crossing(rate, value, limit, window, figures))
    return found


@periodic(schedule="delivery_rates_schedule", tick="delivery-rates")
def check_delivery_rates() -> JobReport:
    """Alert when the bounce or complaint rate of the last 24 hours is at Resend's limit."""
    current = runtime.current()
    now = utcnow()
    interval = minutes(current.settings.alert_min_interval_minutes)
    with current.sessions.begin() as session:
        rates = delivery_events.rates(session, providers=WITH_DELIVERY_EVENTS, now=now)
        due = [
            crossing
            for crossing in crossings(rates)
            if delivery_events.claim_rate_alert(session, crossing.rate, now=now, interval=interval)
        ]
    for crossing in due:
        logger.error(
            "The %s rate of the last %s is %.2f%%, at or over Resend's limit of %.2f%% (%s of %s emails): "
            "Resend may pause the account. Pause bulk sending and look at the addresses (suppressions list).",
            crossing.rate,
            crossing.window,
            crossing.value * 100,
            crossing.limit * 100,
            crossing.figures["bounced" if crossing.rate == "bounce" else "complained"],
            crossing.figures["sent"],
            extra={
                "alert": {
                    "subject": f"[minalesh-workers] {crossing.rate} rate at Resend's limit",
                    "key": f"minalesh-rate-{crossing.rate}-{int(now.timestamp())}",
                    "details": {"rate": crossing.rate, "value": crossing.value, "limit": crossing.limit, **rates},
                }
            },
        )
    day = rates["24h"]
    return JobReport(
        f"Last 24 h: {day['sent']} sent, bounce rate {day['bounce_rate']:.2%}, "
        f"complaint rate {day['complaint_rate']:.3%}; {len(due)} alert(s)."
    )
