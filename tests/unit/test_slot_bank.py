"""The limiter's bank (``pipeline.providers.pacing``): at a fast rate one write of the fleet's row per
ten requests, at Resend's 2/s one per request, and never a slot used after a refusal."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import event
from sqlalchemy.orm import Session, sessionmaker

from pipeline.providers.base import ProviderRateLimited, ProviderUnavailable
from pipeline.providers.pacing import BANKED_SLOT_LIFE_SECONDS, MAX_BANKED_SLOTS, SendLimiter
from storage.rate_limits import Rate


def limiter(lite: sessionmaker[Session], per_second: float) -> SendLimiter:
    return SendLimiter(lite, rate=Rate(configured=per_second), quota_pause_seconds=60)


def slot_writes(lite: sessionmaker[Session]) -> list[str]:
    """The UPDATEs of the fleet's row this engine runs from now on."""
    statements: list[str] = []
    engine = lite.kw["bind"]
    event.listen(engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    return statements


def warmed(lite: sessionmaker[Session], per_second: float) -> SendLimiter:
    """A limiter past its process's first request (which goes alone), and past its first take (which sizes the bank)."""
    sending = limiter(lite, per_second)
    for _ in range(2):
        with sending.request(transactional=True) as request:
            request.answered()
    return sending


def take_slots(sending: SendLimiter, count: int, *, transactional: bool = True) -> list[float]:
    return [sending.acquire(transactional=transactional).at for _ in range(count)]


def test_at_a_fast_rate_ten_requests_write_the_fleet_s_row_once_at_the_same_pace(
    lite: sessionmaker[Session],
) -> None:
    sending = warmed(lite, 9000.0)
    sending._empty_bank()
    writes = slot_writes(lite)

    times = take_slots(sending, 3 * MAX_BANKED_SLOTS)

    updates = [sql for sql in writes if sql.lstrip().upper().startswith("UPDATE RATE_LIMIT_SLOTS")]
    assert len(updates) == 3, updates
    gaps = [later - earlier for earlier, later in zip(times, times[1:], strict=False)]
    assert min(gaps) >= 1 / 9000.0 - 1e-6  # never faster than the rate (to the float precision of epoch seconds)


def test_at_resend_s_two_a_second_every_request_takes_its_own_slot(lite: sessionmaker[Session]) -> None:
    sending = warmed(lite, 2.0)
    writes = slot_writes(lite)

    take_slots(sending, 2)

    assert len([sql for sql in writes if sql.lstrip().upper().startswith("UPDATE RATE_LIMIT_SLOTS")]) == 2


def test_bulk_never_takes_a_slot_banked_for_a_transactional_send(lite: sessionmaker[Session]) -> None:
    sending = warmed(lite, 9000.0)
    sending._empty_bank()
    take_slots(sending, 1, transactional=True)  # banks nine transactional slots
    writes = slot_writes(lite)

    take_slots(sending, 1, transactional=False)

    assert len([sql for sql in writes if sql.lstrip().upper().startswith("UPDATE RATE_LIMIT_SLOTS")]) == 1


@pytest.mark.parametrize(
    "error",
    [ProviderRateLimited("429", retry_after=0.0), ProviderUnavailable("500")],
    ids=["429", "5xx"],
)
def test_a_refusal_or_a_failure_empties_the_bank(lite: sessionmaker[Session], error: Exception) -> None:
    sending = warmed(lite, 9000.0)
    sending._empty_bank()
    take_slots(sending, 1)  # banks nine
    assert sending._from_bank(True, time.time()) is not None

    with pytest.raises(type(error)), sending.request(transactional=True):
        raise error

    assert sending._from_bank(True, time.time()) is None


def test_a_banked_slot_left_unused_past_its_life_is_dropped(lite: sessionmaker[Session]) -> None:
    sending = warmed(lite, 9000.0)
    sending._empty_bank()
    first = take_slots(sending, 1)[0]
    deadline = time.time() + 5
    while time.time() < first + BANKED_SLOT_LIFE_SECONDS + 0.01 and time.time() < deadline:
        time.sleep(0.01)  # the slots' time passes: what is asserted is that they are not used after it
    writes = slot_writes(lite)

    later = take_slots(sending, 1)[0]

    assert later > first + BANKED_SLOT_LIFE_SECONDS
    assert len([sql for sql in writes if sql.lstrip().upper().startswith("UPDATE RATE_LIMIT_SLOTS")]) == 1
