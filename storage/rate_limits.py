"""A provider's request rate, shared by every worker host, kept in one row.

An email provider allows a few requests a second (Resend: 2 per team); workers on several hosts must share
that budget, and RabbitMQ has no notion of it. The row holds the next free slot,
what the provider told us (its limit; a pause and why) and the precedence of a
waiting transactional send. Times are epoch seconds as floats, so each statement
is portable to the SQLite of ``dev`` (no interval arithmetic).

A slot is taken only by a request that will be made: ``take_slot`` hands out a
slot at most ``horizon`` seconds ahead, atomically, or nothing; the caller then
sleeps until its slot and sends. A request that cannot have one now takes nothing,
so no slot is reserved and abandoned (which once let the line of reserved slots
run ahead of the clock for ever). The one exception is bounded: at a rate far
above two a second, a caller may take the slots of the next few milliseconds
together (``slots``), of which it may leave a few unused.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Optional

from sqlalchemy import Float, Text, bindparam, case, false, literal, or_, select, true, update
from sqlalchemy.orm import Session

from storage import sending_pauses
from storage.dialect import insert_ignoring_conflicts
from storage.models import RateLimitSlot
from storage.rowcount import rows_affected


@dataclass(frozen=True, kw_only=True)
class Rate:
    """How fast to go: the provider's limit when it told one, else ``configured``, never above ``cap``."""

    #: EMAIL_RATE_LIMIT_PER_SECOND: used until the provider tells its own.
    configured: float
    #: EMAIL_RATE_LIMIT_CAP: the fleet's share of the team's limit; None: all of it.
    cap: Optional[float] = None
    #: Below the provider's own number by this factor, for network jitter.
    headroom: float = 0.9

    def per_second(self, provider_limit: Optional[float]) -> float:
        base = provider_limit * self.headroom if provider_limit else self.configured
        return min(base, self.cap) if self.cap else base


@dataclass(frozen=True)
class Slot:
    """A slot taken: when its request may go, and whether it is the probe after a quota pause.

    ``warming_until`` is set on a process's first request (``take_slot(warm_up=True)``):
    the fleet holds every other slot until ``end_warm_up`` is called with it.
    """

    at: float
    probe: bool
    warming_until: Optional[float] = None
    #: How many slots were taken with this one (``take_slot``'s ``slots``), one ``interval`` apart from ``at``.
    taken: int = 1
    interval: float = 0.0


@dataclass(frozen=True, kw_only=True)
class SlotState:
    """The row as it is now, for a caller that got no slot, and for ``stats``."""

    next_slot: float
    provider_limit: Optional[float]
    priority_until: Optional[float]
    paused_until: Optional[float]
    pause_reason: Optional[str]
    paused_since: Optional[float]
    warming_until: Optional[float] = None

    def per_second(self, rate: Rate) -> float:
        """The requests per second the fleet uses now."""
        return rate.per_second(self.provider_limit)


def _per_second(rate: Rate) -> Any:
    """``SlotState.per_second`` as SQL, so a slot is taken in one statement."""
    base = case(
        (RateLimitSlot.provider_limit > 0, RateLimitSlot.provider_limit * rate.headroom),
        else_=literal(rate.configured),
    )
    if rate.cap:
        return case((base > rate.cap, literal(rate.cap)), else_=base)
    return base


def _later(a: Any, b: Any) -> Any:
    return case((a > b, a), else_=b)


def take_slot(
    session: Session,
    name: str,
    *,
    now: float,
    rate: Rate,
    horizon: float,
    transactional: bool,
    probe_window: float,
    warm_up: Optional[float] = None,
    slots: int = 1,
) -> Optional[Slot]:
    """Take the next slot if it is at most ``horizon`` seconds ahead, or None.

    ``slots``: take that many consecutive slots at once (the returned one is the
    first; ``Slot.taken`` and ``Slot.interval`` give the rest), for a caller that
    makes many requests at a rate so fast that one write per request to this one
    row would cost more than the request.

    None when the provider or an operator paused us (``storage.sending_pauses``;
    an operator's bulk pause holds bulk sends only), while another process's first
    request is in flight (``warming_until``), when the next slot is further than
    ``horizon``, or (for a bulk send) while a transactional send waits. After a
    quota pause the first taker is the probe: the pause is extended by
    ``probe_window`` until its answer (``resume`` or ``pause``) comes back.

    ``warm_up`` (seconds): this is a process's first request; hold every other slot
    until ``end_warm_up``, or for ``warm_up`` seconds after the slot if it never comes.
    """
    statement = _take_slot_statement(rate, transactional=transactional, warm_up=warm_up is not None)
    parameters = {
        "slot_name": name,
        "now": now,
        "latest": now + horizon,
        "probe_until": now + probe_window,
        "slots": float(slots),
    }
    if warm_up is not None:
        parameters["warm_up"] = warm_up
    taken = session.execute(statement, parameters).one_or_none()
    if taken is None:
        return None
    interval = 1.0 / rate.per_second(taken.provider_limit)
    at = max(float(taken.next_slot) - slots * interval, now)
    return Slot(
        at=at,
        probe=taken.paused_until is not None,
        warming_until=taken.warming_until,
        taken=slots,
        interval=interval,
    )


@functools.lru_cache(maxsize=64)
def _take_slot_statement(rate: Rate, *, transactional: bool, warm_up: bool) -> Any:
    """``take_slot``'s UPDATE, built once per rate and kind: every time and name is a parameter.

    Every request of the fleet runs it; rebuilt each time, its ``CASE``\\ s and the
    ``EXISTS`` on ``sending_pauses`` and their cache key cost more CPU than the round trip.
    It is built on the table (Core), so the ORM's bulk-UPDATE path stays out of it.
    """
    slots = RateLimitSlot.__table__.c
    now = bindparam("now", type_=Float)
    start = _later(slots.next_slot, now)
    not_paused = or_(slots.paused_until.is_(None), slots.paused_until <= now)
    not_warming = or_(slots.warming_until.is_(None), slots.warming_until <= now)
    may_go = true() if transactional else or_(slots.priority_until.is_(None), slots.priority_until <= now)
    probing = slots.paused_since.is_not(None)
    return (
        update(RateLimitSlot.__table__)
        .where(slots.name == bindparam("slot_name", type_=Text), not_paused, not_warming, may_go)
        .where(start <= bindparam("latest", type_=Float))
        .where(~sending_pauses.holds(transactional=transactional, now=now))
        .values(
            next_slot=start + bindparam("slots", type_=Float) / _per_second(rate),
            paused_until=case((probing, bindparam("probe_until", type_=Float)), else_=None),
            warming_until=start + bindparam("warm_up", type_=Float) if warm_up else None,
        )
        .returning(slots.next_slot, slots.provider_limit, slots.paused_until, slots.warming_until)
    )


def end_warm_up(session: Session, name: str, *, warming_until: float, now: float, rate: Rate) -> None:
    """A process's first request was answered: let the others go, paced from ``now``.

    The request may have reached the provider as late as ``now``, so the next slot is
    one interval after it rather than after its slot. A hold that is no longer the
    one this request set (it expired and another process took its own) is left alone.
    """
    statement = (
        update(RateLimitSlot)
        .where(RateLimitSlot.name == name, RateLimitSlot.warming_until == warming_until)
        .values(
            warming_until=None,
            next_slot=_later(RateLimitSlot.next_slot, literal(now) + 1.0 / _per_second(rate)),
        )
        .execution_options(synchronize_session=False)
    )
    session.execute(statement)


def claim_precedence(session: Session, name: str, *, until: float) -> None:
    """A transactional send waits: bulk sends take no slot before ``until``."""
    statement = (
        update(RateLimitSlot)
        .where(RateLimitSlot.name == name)
        .values(priority_until=_later(RateLimitSlot.priority_until, literal(until)))
        .execution_options(synchronize_session=False)
    )
    session.execute(statement)


def current(session: Session, name: str, *, now: float) -> SlotState:
    """The row's state; the row is created on the first call (``take_slot`` needs it)."""
    row = session.get(RateLimitSlot, name, populate_existing=True)
    if row is None:
        _ensure_row(session, name, now)
        row = session.get(RateLimitSlot, name, populate_existing=True)
        assert row is not None
    return SlotState(
        next_slot=row.next_slot,
        provider_limit=row.provider_limit,
        priority_until=row.priority_until,
        paused_until=row.paused_until,
        pause_reason=row.pause_reason,
        paused_since=row.paused_since,
        warming_until=row.warming_until,
    )


def record_limit(session: Session, name: str, *, limit: float, now: float) -> None:
    """The provider's ``ratelimit-limit`` (requests a second): used from now on, raised or lowered."""
    _ensure_row(session, name, now)
    statement = (
        update(RateLimitSlot)
        .where(RateLimitSlot.name == name)
        .values(provider_limit=limit)
        .execution_options(synchronize_session=False)
    )
    session.execute(statement)


def hold_until(session: Session, name: str, *, until: float, now: float) -> None:
    """No slot before ``until`` (the provider said ``remaining: 0`` until its reset)."""
    _ensure_row(session, name, now)
    statement = (
        update(RateLimitSlot)
        .where(RateLimitSlot.name == name)
        .values(next_slot=_later(RateLimitSlot.next_slot, literal(until)))
        .execution_options(synchronize_session=False)
    )
    session.execute(statement)


def pause(
    session: Session, name: str, *, until: float, reason: str, quota: bool, now: float, replace: bool = False
) -> bool:
    """Stop every request until ``until``; True when this starts a new quota (or outage) pause.

    ``reason`` is the provider's word, kept for display. A pause that is not a
    ``quota`` is a short hold; a quota pause lasts until the provider's reset,
    remembers when it began (an alert goes out once per quota pause) and is ended
    by ``resume`` once a probe gets through. An outage pause is a quota pause whose
    probe comes every few seconds: ``replace`` sets ``until`` even when it is sooner
    than the pause in force (the probe's window, after its failure).
    """
    _ensure_row(session, name, now)
    paused_until = literal(until) if replace else _later(_or_now(RateLimitSlot.paused_until, now), literal(until))
    statement = (
        update(RateLimitSlot)
        .where(RateLimitSlot.name == name)
        .values(
            paused_until=paused_until,
            next_slot=_later(RateLimitSlot.next_slot, literal(until)),
            pause_reason=reason,
            paused_since=case(
                (RateLimitSlot.paused_since.is_not(None), RateLimitSlot.paused_since),
                else_=literal(now) if quota else None,
            ),
        )
        .returning(RateLimitSlot.paused_since)
        .execution_options(synchronize_session=False)
    )
    before = current(session, name, now=now).paused_since
    after = session.execute(statement).scalar_one_or_none()
    return quota and before is None and after is not None


def resume(session: Session, name: str) -> bool:
    """A request got through: end a quota pause; True if one was ended."""
    statement = (
        update(RateLimitSlot)
        .where(RateLimitSlot.name == name, RateLimitSlot.paused_since.is_not(None))
        .values(paused_until=None, pause_reason=None, paused_since=None)
        .execution_options(synchronize_session=False)
    )
    return rows_affected(session, statement) == 1


def record_failure(session: Session, name: str, *, now: float, window: float) -> tuple[int, float]:
    """The provider failed as a whole once more: how many times since the first within ``window``, and when that was."""
    _ensure_row(session, name, now)
    fresh = RateLimitSlot.failing_since.is_not(None) & (RateLimitSlot.failing_since > now - window)
    statement = (
        update(RateLimitSlot)
        .where(RateLimitSlot.name == name)
        .values(
            failures=case((fresh, RateLimitSlot.failures + 1), else_=literal(1)),
            failing_since=case((fresh, RateLimitSlot.failing_since), else_=literal(now)),
        )
        .returning(RateLimitSlot.failures, RateLimitSlot.failing_since)
        .execution_options(synchronize_session=False)
    )
    failures, failing_since = session.execute(statement).one()
    return int(failures), float(failing_since if failing_since is not None else now)


def clear_failures(session: Session, name: str) -> None:
    """A request got through: the count of the provider's failures starts again (no write if it is 0)."""
    statement = (
        update(RateLimitSlot)
        .where(RateLimitSlot.name == name, RateLimitSlot.failures > 0)
        .values(failures=0, failing_since=None)
        .execution_options(synchronize_session=False)
    )
    session.execute(statement)


def is_quota_paused(session: Session, name: str) -> bool:
    """Whether a quota pause is on (cheap enough to ask after every success)."""
    statement = select(RateLimitSlot.paused_since.is_not(None)).where(RateLimitSlot.name == name)
    return bool(session.scalar(statement) or false())


def _or_now(column: Any, now: float) -> Any:
    return case((column.is_(None), literal(now)), else_=column)


def _ensure_row(session: Session, name: str, now: float) -> None:
    exists = session.scalar(select(RateLimitSlot.name).where(RateLimitSlot.name == name))
    if exists is None:
        insert_ignoring_conflicts(
            session,
            RateLimitSlot.__table__,
            {"name": name, "next_slot": now},
            key="name",
        )
