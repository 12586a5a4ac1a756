"""A provider storm: failures at a rate, not for the next n requests.

Why beside ``fail_next``/``delay_next``: those script a known number of requests,
which suits a test that knows its traffic. A chaos run does not: a thousand emails
from sixteen threads meet a provider that fails a share of whatever arrives, for as
long as the storm lasts. The draw is seeded, so a run can be repeated; it is made
under the fake's lock, so concurrent requests share one sequence.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Optional

from bench.harness.fake_resend_rules import ApiError


@dataclass(frozen=True)
class StormDraw:
    """What one request meets: an error answered at once, a held answer, or nothing (normal handling)."""

    error: Optional[ApiError] = None
    hold_seconds: float = 0.0


@dataclass
class Storm:
    """Each request meets a 500 with probability ``server_errors``, a held answer with ``timeouts``.

    A held answer is delivered after ``hold_seconds`` (the provider sent it, the client
    gave up first): only the Idempotency-Key keeps the client's retry from sending twice.
    """

    server_errors: float = 0.0
    timeouts: float = 0.0
    hold_seconds: float = 0.0
    seed: int = 0
    _random: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not (0 <= self.server_errors and 0 <= self.timeouts and self.server_errors + self.timeouts <= 1):
            raise ValueError("server_errors and timeouts are fractions that add up to 1 at most")
        self._random = random.Random(self.seed)

    def draw(self) -> StormDraw:
        roll = self._random.random()
        if roll < self.server_errors:
            return StormDraw(error=ApiError(500, "application_error", "An unexpected error occurred (storm)."))
        if roll < self.server_errors + self.timeouts:
            return StormDraw(hold_seconds=self.hold_seconds)
        return StormDraw()
