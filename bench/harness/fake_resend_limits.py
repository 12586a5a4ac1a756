"""Resend's per-team limits as the fake enforces and advertises them.

Why a separate module: the rate window and the sending quota are small state
machines with their own arithmetic (whole seconds, at least one) and their
own headers; keeping them here keeps ``fake_resend.py`` about routing,
scripting and recording.  Nothing here locks: the one ``FakeResend`` lock
guards these objects, so a test sees one consistent state.
"""

from __future__ import annotations

import bisect
import math
from collections import deque

from bench.harness.fake_resend_rules import ApiError

RATE_WINDOW_SECONDS = 1.0
DEFAULT_RATE_LIMIT = 2


def rate_limit_message(limit: float) -> str:
    """Resend's wording, naming the team's limit."""
    return (
        f"Too many requests. You can only make {limit:g} requests per second. See rate "
        "limit response headers for more information. Or contact support to "
        "increase rate limit."
    )


def whole_seconds(seconds: float) -> int:
    """Seconds as the headers give them: rounded up, never below 1, so "wait this long" is always enough."""
    return max(1, math.ceil(seconds))


def rate_headers(limit: float, remaining: int, reset: int) -> dict[str, str]:
    """The three headers Resend puts on every answer (IETF draft 6 names)."""
    return {
        "ratelimit-limit": f"{limit:g}",
        "ratelimit-remaining": str(max(0, remaining)),
        "ratelimit-reset": str(reset),
    }


class RateWindow:
    """Sliding one-second window of the requests the team's limiter let through.

    Why sliding rather than fixed: it is the strictest reading of "n per
    second", so a client that passes against it passes against Resend.  Slots
    taken by another app of the same team live here too, because the limit
    is per team, not per API key.
    """

    def __init__(self) -> None:
        self._stamps: deque[float] = deque()

    def _prune(self, now: float) -> None:
        """Forget requests older than the window."""
        while self._stamps and self._stamps[0] <= now - RATE_WINDOW_SECONDS:
            self._stamps.popleft()

    def used(self, now: float) -> int:
        """Slots taken in the window ending ``now``."""
        self._prune(now)
        return len(self._stamps)

    def occupy(self, now: float, n: int = 1) -> None:
        """Take ``n`` slots at ``now``; each frees one window later (kept in time order)."""
        self._prune(now)
        for _ in range(n):
            bisect.insort(self._stamps, now)

    def reset_seconds(self, now: float) -> int:
        """Whole seconds until the oldest slot frees (1 when the window is empty)."""
        self._prune(now)
        if not self._stamps:
            return 1
        return whole_seconds(self._stamps[0] + RATE_WINDOW_SECONDS - now)


def rate_limit_error(limit: float, retry_after: int) -> ApiError:
    """429 ``rate_limit_exceeded`` with the headers client back-off code reads."""
    headers = {**rate_headers(limit, 0, retry_after), "retry-after": str(retry_after)}
    return ApiError(429, "rate_limit_exceeded", rate_limit_message(limit), headers)


QUOTA_PERIODS = {"daily_quota_exceeded": "daily", "monthly_quota_exceeded": "monthly"}
"""The 429 names Resend gives a used-up sending quota, and the period each names."""


class Quota:
    """A used-up daily or monthly sending quota, until a moment on ``time.monotonic()``.

    Why it differs from the rate window: a quota 429 lasts hours, not a
    second, so a sender must read ``retry-after`` rather than retry blindly.
    """

    def __init__(self, kind: str, until: float) -> None:
        if kind not in QUOTA_PERIODS:
            raise ValueError(f"unknown quota kind {kind!r}; expected one of {sorted(QUOTA_PERIODS)}")
        self.kind = kind
        self.until = until

    def seconds_left(self, now: float) -> float:
        """Seconds until the quota resets; zero or less once it has."""
        return self.until - now

    def error(self, now: float, rate: dict[str, str]) -> ApiError:
        """429 named after the quota, with ``retry-after`` and ``ratelimit-reset`` at the quota's reset."""
        reset = str(whole_seconds(self.seconds_left(now)))
        headers = {**rate, "ratelimit-reset": reset, "retry-after": reset}
        message = f"You have reached your {QUOTA_PERIODS[self.kind]} email sending quota."
        return ApiError(429, self.kind, message, headers)
