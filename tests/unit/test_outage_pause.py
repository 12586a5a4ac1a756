"""The outage pause's rule, on the dev mode's SQLite, on a clock the test moves: two processes, one row.

The chaos tier's provider storm (30% 500s, bursts of 429) found both bugs fixed here:
five 500s among successes started an outage pause, and a probe answered with a 429
held the fleet for the probe's 30-second window, once per 429 of the burst.
"""

from __future__ import annotations

import random

import pytest
from sqlalchemy.orm import Session, sessionmaker

from pipeline.providers import pacing
from pipeline.providers.base import EmailRefused, OutcomeUnknown, ProviderPaused, ProviderRateLimited
from pipeline.providers.pacing import OUTAGE_BURST_FAILURES, OUTAGE_FAILURES, OUTAGE_MIN_SECONDS, SendLimiter
from storage.rate_limits import Rate

PROBE_SECONDS = 3.0


class Clock:
    """``pacing``'s ``time``: the test's clock, which only a sleep moves."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += max(seconds, 0.0)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(pacing, "time", fake)
    return fake


def process(lite: sessionmaker[Session]) -> SendLimiter:
    """One worker process's limiter on the fleet's row (paced well above what the tests send)."""
    return SendLimiter(lite, rate=Rate(configured=100.0), quota_pause_seconds=60, probe_interval=PROBE_SECONDS)


def succeed(limiter: SendLimiter) -> None:
    with limiter.request(transactional=True) as request:
        request.answered()


def fail(limiter: SendLimiter) -> None:
    """One 500; ``ProviderPaused`` out of it when the outage pause is on."""
    with pytest.raises((OutcomeUnknown, ProviderPaused)):
        with limiter.request(transactional=True):
            raise OutcomeUnknown("Resend 500 application_error")


def in_outage(limiter: SendLimiter) -> bool:
    return bool(limiter.state()["outage"])


@pytest.mark.parametrize("per_second", [20, 200])
def test_a_storm_of_500s_among_successes_of_two_processes_is_no_outage(
    lite: sessionmaker[Session], clock: Clock, per_second: int
) -> None:
    """30% 500s, 400 answers alternating between two processes: no pause, whatever the order."""
    processes = [process(lite), process(lite)]
    draws = random.Random(11)
    for step in range(400):
        clock.sleep(1.0 / per_second)
        limiter = processes[step % 2]
        if draws.random() < 0.3:
            fail(limiter)
        else:
            succeed(limiter)
        assert not in_outage(limiter), f"an outage pause after {step + 1} answers of a 30% storm"


def test_a_few_failures_at_once_are_no_outage_until_they_span_the_minimum(
    lite: sessionmaker[Session], clock: Clock
) -> None:
    limiter = process(lite)
    for _ in range(OUTAGE_FAILURES * 2):
        fail(limiter)
        clock.sleep(0.05)
    assert not in_outage(limiter), "ten failures in half a second started an outage pause"
    clock.sleep(OUTAGE_MIN_SECONDS)
    fail(limiter)
    assert in_outage(limiter)


def test_a_fast_fleet_pauses_a_dead_provider_within_a_second(lite: sessionmaker[Session], clock: Clock) -> None:
    limiter = process(lite)
    for _ in range(OUTAGE_BURST_FAILURES):
        fail(limiter)
        clock.sleep(0.01)
    assert in_outage(limiter)


def down(limiter: SendLimiter, clock: Clock) -> None:
    """The provider fails everything until the outage pause is on."""
    while not in_outage(limiter):
        fail(limiter)
        clock.sleep(0.5)


def test_a_provider_down_is_paused_and_probed_every_interval(lite: sessionmaker[Session], clock: Clock) -> None:
    limiter = process(lite)
    started = clock.now
    down(limiter, clock)
    assert clock.now - started <= OUTAGE_MIN_SECONDS + 1.0
    with pytest.raises(ProviderPaused):
        limiter.acquire(transactional=True)
    clock.sleep(PROBE_SECONDS)
    fail(limiter)  # the probe fails: the next one is an interval away
    assert in_outage(limiter)
    clock.sleep(PROBE_SECONDS)
    succeed(limiter)
    assert not in_outage(limiter)


def test_a_probe_answered_with_a_429_ends_the_outage_and_holds_only_for_its_retry_after(
    lite: sessionmaker[Session], clock: Clock
) -> None:
    """Before: the pause kept the probe's 30 s window, so a burst of 40 × 429 held the fleet 20 minutes."""
    limiter = process(lite)
    down(limiter, clock)
    clock.sleep(PROBE_SECONDS)
    with pytest.raises(ProviderRateLimited):
        with limiter.request(transactional=True):
            raise ProviderRateLimited("Resend 429", retry_after=1.0, reason="rate_limit_exceeded")
    state = limiter.state()
    assert not state["outage"] and state["paused_since"] is None
    assert state["paused_until"] == pytest.approx(clock.now + 1.0)
    clock.sleep(1.0)
    slot = limiter.acquire(transactional=True)
    assert slot.probe is False


def test_a_probe_answered_with_a_refused_email_ends_the_outage(lite: sessionmaker[Session], clock: Clock) -> None:
    limiter = process(lite)
    down(limiter, clock)
    clock.sleep(PROBE_SECONDS)
    with pytest.raises(EmailRefused):
        with limiter.request(transactional=True):
            raise EmailRefused("Resend 422 validation_error: invalid `to`")
    assert not in_outage(limiter)
