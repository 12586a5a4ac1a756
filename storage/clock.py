"""Time as the workers see it: timezone-aware UTC from this host's clock.

Times are computed here and passed as parameters rather than with the database's
``now()``: interval arithmetic is not portable to the embedded SQLite mode. Worker
hosts therefore need synchronised clocks (NTP), as any distributed job system does.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


def minutes(value: float) -> timedelta:
    """A duration of ``value`` minutes (fractions allowed, so tests run fast)."""
    return timedelta(minutes=value)
