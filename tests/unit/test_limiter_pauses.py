"""The limiter under an operator's pause, on the dev mode's SQLite: paced and unpaced sends."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

import pytest
from sqlalchemy import event
from sqlalchemy.orm import Session, sessionmaker

from bench.harness.waiting import wait_until
from pipeline.core.errors import DEFAULT_RETRY_AFTER_SECONDS, RateLimited
from pipeline.core.operator_pauses import HELD_RECHECK_SECONDS, OPERATOR_PAUSE_RECHECK_SECONDS, held_wait
from pipeline.providers.base import KeyInFlight, ProviderRateLimited, QuotaExhausted
from pipeline.providers.pacing import SendLimiter, fleet_pause_seconds
from storage import rate_limits
from storage.database import get_engine, get_sessionmaker
from storage.migrate import upgrade
from storage.rate_limits import Rate, Slot


@pytest.fixture
def lite(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    url = f"sqlite:///{tmp_path / 'pauses.sqlite3'}"
    upgrade(url)
    yield get_sessionmaker(url)
    get_engine(url).dispose()


def limiter(lite: sessionmaker[Session], per_second: float) -> SendLimiter:
    return SendLimiter(lite, rate=Rate(configured=per_second), quota_pause_seconds=60)


@pytest.mark.parametrize("per_second", [0.0, 100.0], ids=["unpaced", "paced"])
def test_a_bulk_pause_holds_bulk_sends_and_lets_transactional_ones_go(
    lite: sessionmaker[Session], per_second: float
) -> None:
    sending = limiter(lite, per_second)
    sending.pause("bulk", minutes=None, reason="check", by="admin")
    with pytest.raises(RateLimited, match="paused by an operator"):
        sending.acquire(transactional=False)
    assert sending.acquire(transactional=True) is not None


def test_unpaced_sends_read_the_pauses_once_a_second_not_once_per_email(
    lite: sessionmaker[Session], tmp_path: Path
) -> None:
    sending = limiter(lite, 0.0)
    statements: list[str] = []
    engine = get_engine(f"sqlite:///{tmp_path / 'pauses.sqlite3'}")
    event.listen(engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    for _ in range(50):
        sending.acquire(transactional=True)
    reads = [sql for sql in statements if "sending_pauses" in sql]
    assert len(reads) == 1, f"{len(reads)} reads of the pauses for 50 sends"
    sending.pause("all", minutes=None, reason=None, by="admin")
    # The cached answer says "not held" for at most HELD_RECHECK_SECONDS; then the pause is seen.
    wait_until(lambda: held(sending), timeout=5 * HELD_RECHECK_SECONDS, what="the pause seen by an unpaced send")


def held(sending: SendLimiter) -> bool:
    try:
        sending.acquire(transactional=True)
    except RateLimited:
        return True
    return False


def test_each_process_s_first_request_goes_alone_and_paces_the_fleet_from_its_answer(
    lite: sessionmaker[Session],
) -> None:
    first, second = limiter(lite, 2.0), limiter(lite, 2.0)
    with first.request(transactional=True) as request:
        assert request.slot.warming_until is not None
        with lite() as session:
            assert rate_limits.current(session, "resend", now=time.time()).warming_until is not None
    answered = time.time()
    with lite() as session:
        state = rate_limits.current(session, "resend", now=answered)
    assert state.warming_until is None
    assert state.next_slot >= answered + 0.5 - 0.01, "the next slot is not paced from the first answer"
    with first.request(transactional=True) as request:
        assert request.slot.warming_until is None, "a warm process warmed up again"
    with second.request(transactional=True) as request:
        assert request.slot.warming_until is not None, "another process's first request did not go alone"


# --- the pure decisions: how long a held send waits, how long a refusal pauses the fleet ----------


@pytest.mark.parametrize(
    ("until", "now", "wait"),
    [
        (None, 100.0, None),
        (100.0, 100.0, None),
        (90.0, 100.0, None),
        (105.0, 100.0, 5.0),
        (float("inf"), 100.0, OPERATOR_PAUSE_RECHECK_SECONDS),
        (100.0 + 10 * OPERATOR_PAUSE_RECHECK_SECONDS, 100.0, OPERATOR_PAUSE_RECHECK_SECONDS),
    ],
)
def test_held_wait(until: Optional[float], now: float, wait: Optional[float]) -> None:
    assert held_wait(until, now) == wait


@pytest.mark.parametrize(
    ("kind", "retry_after", "pause"),
    [
        (ProviderRateLimited, 2.0, 2.0),
        (ProviderRateLimited, 0.0, DEFAULT_RETRY_AFTER_SECONDS),
        (QuotaExhausted, 3600.0, 3600.0),
        (QuotaExhausted, 0.0, 600.0),
        (KeyInFlight, 5.0, None),
        (RateLimited, 5.0, None),
    ],
)
def test_fleet_pause_seconds(kind: type[RateLimited], retry_after: float, pause: Optional[float]) -> None:
    error = kind("refused", retry_after=retry_after, reason="any")
    assert fleet_pause_seconds(error, quota_pause_seconds=600.0) == pause
    assert error.retry_after == retry_after


def test_a_refusal_that_pauses_the_fleet_says_how_long_and_leaves_the_error_alone(lite: sessionmaker[Session]) -> None:
    sending = limiter(lite, 10.0)
    error = ProviderRateLimited("429", retry_after=0.0, reason="rate_limit_exceeded")
    slot = Slot(at=0.0, probe=False)
    assert sending.refused(error, slot) == DEFAULT_RETRY_AFTER_SECONDS
    assert error.retry_after == 0.0
    assert limiter(lite, 0.0).refused(error, slot) is None
