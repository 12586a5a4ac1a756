"""The shared send rate's statements, on the dev mode's SQLite: slots, precedence, pauses, probes."""

from __future__ import annotations

import pytest
from sqlalchemy.orm import Session, sessionmaker

from storage import rate_limits
from storage.rate_limits import Rate

NAME = "resend"
RATE = Rate(configured=2.0)


def take(lite: sessionmaker[Session], now: float, *, transactional: bool = True, horizon: float = 1.0) -> object:
    with lite.begin() as session:
        rate_limits.current(session, NAME, now=now)  # the row exists from the first look on
        return rate_limits.take_slot(
            session, NAME, now=now, rate=RATE, horizon=horizon, transactional=transactional, probe_window=30
        )


def quota_pause(session: Session, *, until: float, now: float) -> bool:
    return rate_limits.pause(session, NAME, until=until, reason="daily_quota_exceeded", quota=True, now=now)


def test_slots_are_handed_out_in_order_and_never_beyond_the_horizon(lite: sessionmaker[Session]) -> None:
    now = 1000.0
    slots = [take(lite, now) for _ in range(4)]
    # At 2/s: now, +0.5, +1.0 (the horizon), and then nothing: no slot is reserved to be abandoned.
    assert [getattr(slot, "at", None) for slot in slots] == [1000.0, 1000.5, 1001.0, None]
    later = take(lite, now + 0.6)
    assert getattr(later, "at", None) == 1001.5


def test_the_provider_limit_replaces_the_configured_rate_less_the_headroom(lite: sessionmaker[Session]) -> None:
    with lite.begin() as session:
        rate_limits.record_limit(session, NAME, limit=10, now=0.0)
        state = rate_limits.current(session, NAME, now=0.0)
    assert state.per_second(RATE) == pytest.approx(9.0)
    assert state.per_second(Rate(configured=2.0, cap=4.0)) == 4.0
    first, second = take(lite, 50.0), take(lite, 50.0)
    assert second.at - first.at == pytest.approx(1 / 9.0)


def test_bulk_takes_no_slot_while_a_transactional_send_claims_precedence(lite: sessionmaker[Session]) -> None:
    with lite.begin() as session:
        rate_limits.current(session, NAME, now=100.0)
        rate_limits.claim_precedence(session, NAME, until=101.0)
    assert take(lite, 100.0, transactional=False) is None
    assert take(lite, 100.0, transactional=True) is not None
    assert take(lite, 101.5, transactional=False) is not None


def test_a_quota_pause_starts_once_lets_one_probe_through_and_ends_on_its_success(
    lite: sessionmaker[Session],
) -> None:
    with lite.begin() as session:
        assert quota_pause(session, until=200.0, now=100.0) is True
        assert quota_pause(session, until=210.0, now=101.0) is False
    assert take(lite, 150.0) is None  # paused
    probe = take(lite, 211.0)
    assert probe is not None and probe.probe is True
    assert take(lite, 212.0) is None  # the probe's answer is awaited
    with lite.begin() as session:
        assert rate_limits.resume(session, NAME) is True
        state = rate_limits.current(session, NAME, now=213.0)
    assert state.paused_until is None and state.paused_since is None
    after = take(lite, 213.0)
    assert after is not None and after.probe is False


def test_a_rate_429_holds_the_fleet_without_a_probe(lite: sessionmaker[Session]) -> None:
    with lite.begin() as session:
        began = rate_limits.pause(session, NAME, until=101.0, reason="rate_limit_exceeded", quota=False, now=100.0)
        assert began is False
    assert take(lite, 100.5) is None
    slot = take(lite, 101.0)
    assert slot is not None and slot.probe is False


def test_a_first_request_holds_every_other_slot_until_its_answer(lite: sessionmaker[Session]) -> None:
    """The flake of the bulk drain: a cold process's first request arrived 0.16 s after its slot."""
    now = 1000.0
    with lite.begin() as session:
        rate_limits.current(session, NAME, now=now)
        first = rate_limits.take_slot(
            session, NAME, now=now, rate=RATE, horizon=1.0, transactional=True, probe_window=30, warm_up=15
        )
    assert first is not None and first.warming_until == 1015.0
    assert take(lite, now + 0.5) is None, "a slot went out while the first request was in flight"
    answered = now + 0.2
    with lite.begin() as session:
        rate_limits.end_warm_up(session, NAME, warming_until=first.warming_until, now=answered, rate=RATE)
    following = take(lite, answered)
    # Paced from the answer (the latest the first request can have arrived), not from its slot.
    assert getattr(following, "at", None) == pytest.approx(answered + 0.5)


def test_a_first_request_whose_process_died_holds_the_fleet_only_until_its_hold_ends(
    lite: sessionmaker[Session],
) -> None:
    now = 1000.0
    with lite.begin() as session:
        rate_limits.current(session, NAME, now=now)
        lost = rate_limits.take_slot(
            session, NAME, now=now, rate=RATE, horizon=1.0, transactional=True, probe_window=30, warm_up=15
        )
    assert lost is not None and lost.warming_until is not None
    assert take(lite, now + 14.9) is None
    assert take(lite, now + 15.0) is not None
    with lite.begin() as session:  # the late answer of a hold that ended changes nothing
        rate_limits.end_warm_up(session, NAME, warming_until=lost.warming_until, now=now + 15.0, rate=RATE)
        assert rate_limits.current(session, NAME, now=now + 15.0).next_slot == pytest.approx(now + 15.5)
