"""One lifecycle for the rows the pipeline leases and counts attempts on.

An email (``email_queue``) and a payment webhook event (``webhook_events``) live the
same life: a periodic job *claims* it under a lease and sends its message; a
worker *starts a counted attempt* (the count lives in the row, not the message, so
a worker that dies mid-way still uses one up) under a lease; the attempt ends
done, *retrying* (with the next attempt's time, and the lease running until then
plus the lease, so nobody claims it while its retry message waits), or *given up*;
an operator's replay *revives* a given-up row with a fresh budget. A lease that
runs out means the message carrying the row was lost, and the next claim takes it.

The two tables spell the states differently (``status = 'sending'`` against
``attempt_started_at``, ``retrying`` against ``failed`` with ``next_retry_at``,
``failed`` against ``archived``), and the shop's monitoring queries read those
columns, so each table describes its spelling in a ``LeasedTable`` and every
statement of the lifecycle is written here, once.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Generic, Optional, TypeVar, Union

from sqlalchemy import (
    ColumnExpressionArgument,
    Integer,
    Text,
    and_,
    bindparam,
    case,
    false,
    not_,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.orm import InstrumentedAttribute, Session
from sqlalchemy.sql import ColumnElement

from storage.clock import utcnow
from storage.rowcount import rows_affected

T = TypeVar("T")
#: One row id, or several (a batch's members): the statement applies to all of them.
Rows = Union[int, Sequence[int]]
#: A statement's ``now``: a time, or the parameter of a statement built once and run many times.
Now = Union[datetime, ColumnElement[Any]]
#: Values of an UPDATE, computed from the statement's ``now``.
Values = Callable[[Now], dict[str, Any]]
#: A WHERE condition, computed from the statement's ``now``.
Condition = Callable[[Now], ColumnElement[bool]]


class AttemptOutcome(enum.Enum):
    """What ``start_attempt`` decided."""

    #: Go ahead: the attempt is counted and the item is leased to this worker.
    GO = "go"
    #: Nothing to do: done already, not due yet, or another worker holds it.
    SKIP = "skip"
    #: More attempts were started than allowed (workers died mid-way): give up.
    EXHAUSTED = "exhausted"
    #: This message holds the row's retry, which is not due yet: come back at ``due_at``.
    NOT_DUE = "not due"
    #: This message gave the row up, and came back: the nack that should have dead-lettered
    #: it was lost (its worker died, its connection dropped). Dead-letter it again.
    GIVEN_UP = "given up"


@dataclass(frozen=True)
class Attempt(Generic[T]):
    outcome: AttemptOutcome
    #: The item as the attempt sees it; None when skipped.
    item: Optional[T] = None
    #: With ``NOT_DUE``: when the retry is due.
    due_at: Optional[datetime] = None


@dataclass(frozen=True, kw_only=True)
class LeasedTable(Generic[T]):
    """How one table spells the lifecycle; the statements are this module's."""

    model: Any
    #: Still to be done: neither done nor given up.
    open: ColumnElement[bool]
    #: An attempt was started and has not ended (its lease tells whether its worker lives).
    running: ColumnElement[bool]
    #: When the next attempt is due after a failure (NULL: at once).
    next_attempt_at: InstrumentedAttribute[Optional[datetime]]
    #: Further conditions for an attempt to start (an email's ``scheduled_at``).
    startable: Condition
    #: Due for a claim: its message is needed (first time) or was lost (lease ran out).
    claimable: Condition
    #: The order claims take rows in.
    claim_order: tuple[ColumnExpressionArgument[Any], ...]
    #: Claimed but no attempt started: what ``release_claims`` may hand back.
    unstarted: ColumnElement[bool]
    #: Given up, and so revivable by a replay.
    given_up: ColumnElement[bool]
    claimed_values: dict[str, Any]
    released_values: dict[str, Any]
    attempt_values: Values
    retry_values: dict[str, Any]
    given_up_values: dict[str, Any]
    revived_values: Values
    #: The row as an attempt sees it.
    snapshot: Callable[[Any], T]
    #: More the attempt's UPDATE returns with the row, each labelled (what the snapshot reads besides the columns).
    also_returning: tuple[ColumnElement[Any], ...] = ()


def claim_due(
    table: LeasedTable[Any],
    session: Session,
    *,
    lease: timedelta,
    limit: int,
    only: Optional[ColumnElement[bool]] = None,
    also: Optional[dict[str, Any]] = None,
) -> list[int]:
    """Claim up to ``limit`` due rows (of those matching ``only``) in one statement; return their ids.

    ``also``: more values the claim writes (an email's ``sent_alone``), in the same row version.

    ``FOR UPDATE SKIP LOCKED`` makes concurrent claimers (two tickers, a tick and a
    manual tick) take disjoint sets; the lease keeps a claimed row from being
    claimed again until its message had every chance to arrive. The locking select
    is a MATERIALIZED CTE: as ``WHERE id IN (subquery)`` PostgreSQL may run the
    subquery once per row and claim more than ``limit``.
    """
    if limit <= 0:
        return []
    now = utcnow()
    model = table.model
    claimable = and_(table.claimable(now), only if only is not None else true())
    due = (
        select(model.id)
        .where(claimable)
        .order_by(*table.claim_order)
        .limit(limit)
        .with_for_update(skip_locked=True)
        .cte("due")
        .prefix_with("MATERIALIZED")
    )
    statement = (
        update(model)
        .where(model.id == due.c.id, claimable)
        .values(**table.claimed_values, **(also or {}), locked_until=now + lease, updated_at=now)
        .returning(model.id)
        .execution_options(synchronize_session=False)
    )
    return sorted(session.scalars(statement))


def release_claims(table: LeasedTable[Any], session: Session, row_ids: list[int]) -> int:
    """Hand claimed rows whose message could not be sent back to the next claim, at once."""
    if not row_ids:
        return 0
    model = table.model
    statement = (
        update(model)
        .where(model.id.in_(row_ids), table.unstarted)
        .values(**table.released_values, locked_until=None, updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    return rows_affected(session, statement)


def start_attempt(
    table: LeasedTable[T],
    session: Session,
    row_id: int,
    *,
    lease: timedelta,
    max_attempts: int,
    holder: Optional[str] = None,
) -> Attempt[T]:
    """Count one attempt at ``row_id`` by the message ``holder`` unless there is nothing to do.

    No attempt starts while another message's attempt runs under a live lease, nor
    before the next attempt's time, so a stray duplicate message cannot jump the
    schedule. The lease belongs to its message: the same message coming back (a
    redelivery after its worker died, a retry after the database came back) takes
    it over at once instead of waiting it out.
    """
    started = start_attempts(table, session, [row_id], lease=lease, max_attempts=max_attempts, holder=holder)
    if not started:
        return not_started(table, session, row_id, holder=holder, now=utcnow())
    return started[0]


def start_attempts(
    table: LeasedTable[T],
    session: Session,
    row_ids: Sequence[int],
    *,
    lease: timedelta,
    max_attempts: int,
    holder: Optional[str] = None,
) -> list[Attempt[T]]:
    """``start_attempt`` on several rows in one statement (a batch's members); the started ones, by id."""
    now = utcnow()
    statement = _start_statement(table, holder is not None)
    parameters = {"ids": list(row_ids), "now": now, "locked_until": now + lease, "max_attempts": max_attempts}
    if holder is not None:
        parameters["holder"] = holder
    rows = sorted(session.execute(statement, parameters), key=lambda row: row.id)
    return [
        Attempt(AttemptOutcome.EXHAUSTED if row.attempts > max_attempts else AttemptOutcome.GO, table.snapshot(row))
        for row in rows
    ]


#: ``start_attempts``'s statement of each table (by id: tables are module constants), with and without a holder.
_START_STATEMENTS: dict[tuple[int, bool], Any] = {}


def _start_statement(table: LeasedTable[Any], held: bool) -> Any:
    """The attempt's UPDATE … RETURNING, built once: every value is a parameter.

    Built for every attempt, the expression and its cache key cost more CPU than the
    round trip; and on the table (Core), not the mapped class, so the ORM's bulk-UPDATE
    path and its entities stay out of it: the rows come back as named tuples, whose
    attributes are the columns the snapshot reads.
    """
    key = (id(table), held)
    found = _START_STATEMENTS.get(key)
    if found is not None:
        return found
    model = table.model
    columns = model.__table__.c
    now = bindparam("now", type_=model.locked_until.type)
    max_attempts = bindparam("max_attempts", type_=Integer)
    mine = model.lease_holder == bindparam("holder", type_=Text) if held else false()
    startable = and_(
        model.id.in_(bindparam("ids", expanding=True)),
        table.open,
        or_(not_(table.running), model.locked_until < now, mine),
        or_(table.next_attempt_at.is_(None), table.next_attempt_at <= now),
        table.startable(now),
    )
    attempts = columns.attempts + 1
    values = {
        **table.attempt_values(now),
        "lease_holder": bindparam("holder", type_=Text) if held else None,
        "attempts": attempts,
        "retry_count": case((attempts > max_attempts, max_attempts - 1), else_=attempts - 1),
        "locked_until": bindparam("locked_until", type_=model.locked_until.type),
        "updated_at": now,
    }
    statement = update(model.__table__).where(startable).values(**values).returning(*columns, *table.also_returning)
    _START_STATEMENTS[key] = statement
    return statement


def not_started(
    table: LeasedTable[T], session: Session, row_id: int, *, holder: Optional[str], now: datetime
) -> Attempt[T]:
    """SKIP, or what the row's own message must do when it comes back.

    NOT_DUE: it carries the row's retry and came back early (RabbitMQ redelivered it
    because its delayed retry could not be enqueued while the broker restarted); acking
    it would leave the row to its lease. GIVEN_UP: it gave the row up and came back;
    acking it would leave a failed row without its dead letter.
    """
    if holder is None:
        return Attempt(AttemptOutcome.SKIP)
    model = table.model
    row = session.execute(
        select(table.next_attempt_at, table.open, table.given_up).where(
            model.id == row_id, model.lease_holder == holder
        )
    ).one_or_none()
    if row is None:
        return Attempt(AttemptOutcome.SKIP)
    due_at, is_open, given_up = row
    if given_up:
        return Attempt(AttemptOutcome.GIVEN_UP)
    if is_open and due_at is not None and due_at > now:
        return Attempt(AttemptOutcome.NOT_DUE, due_at=due_at)
    return Attempt(AttemptOutcome.SKIP)


def running_under(table: LeasedTable[Any], session: Session, row_ids: Sequence[int], *, holder: str) -> dict[int, int]:
    """The rows among ``row_ids`` in an attempt that ``holder`` started and never ended: {id: retry count}.

    Found when a message that carries several rows comes back (its worker died, or a
    failure of the database cut it short): what it left unfinished.
    """
    model = table.model
    statement = select(model.id, model.retry_count).where(
        model.id.in_(list(row_ids)), table.running, model.lease_holder == holder
    )
    return {int(row_id): int(retry_count) for row_id, retry_count in session.execute(statement)}


def pass_lease(table: LeasedTable[Any], session: Session, row_id: int, *, holder: Optional[str], to: str) -> bool:
    """The running attempt of ``row_id``, ``holder``'s, is ``to``'s from now on (its message takes it over at once)."""
    model = table.model
    statement = (
        update(model)
        .where(model.id == row_id, table.running, model.lease_holder == holder)
        .values(lease_holder=to, updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    return rows_affected(session, statement) == 1


def schedule_retry(
    table: LeasedTable[Any],
    session: Session,
    row_id: Rows,
    *,
    error: str,
    delay: timedelta,
    lease: timedelta,
    refund: bool,
    holder: Optional[str] = None,
) -> bool:
    """Record a failed attempt and when the next one is due.

    ``refund`` gives the attempt back (it failed for a reason that was not the
    row's, such as the provider's rate limit). The lease runs until the retry is
    due plus ``lease``, so no claim takes a row whose retry message merely waits.
    ``holder``: the message that carries the retry, when it is not the one that
    held the attempt (a group's member retried by its own message): it holds the
    lease from now on, so it may come back early (deferred, not skipped) and the
    group's message, should it come back, finds the row no longer its own.
    """
    now = utcnow()
    model = table.model
    values: dict[str, Any] = {
        **table.retry_values,
        table.next_attempt_at.key: now + delay,
        "last_error": error,
        "locked_until": now + delay + lease,
        "updated_at": now,
    }
    if refund:
        values["attempts"] = case((model.attempts > 0, model.attempts - 1), else_=0)
        values["retry_count"] = case((model.attempts > 1, model.attempts - 2), else_=0)
    if holder is not None:
        values["lease_holder"] = holder
    statement = (
        update(model)
        .where(_which(model, row_id), table.open)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    return rows_affected(session, statement) >= 1


def hand_back(table: LeasedTable[Any], session: Session, row_id: Rows, *, holder: Optional[str]) -> int:
    """An attempt that made no request (its provider is paused): given back, the row to the next claim at once.

    Unlike ``schedule_retry``'s refund, the row is not left to its own message: it is
    released (``released_values``, no lease, no retry time), so the next claim takes
    it with whatever else is due. Only rows whose running attempt is ``holder``'s.
    """
    now = utcnow()
    model = table.model
    mine = model.lease_holder == holder if holder is not None else true()
    statement = (
        update(model)
        .where(_which(model, row_id), table.open, table.running, mine)
        .values(
            **table.released_values,
            **{table.next_attempt_at.key: None},
            attempts=case((model.attempts > 0, model.attempts - 1), else_=0),
            retry_count=case((model.attempts > 1, model.attempts - 2), else_=0),
            locked_until=None,
            updated_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    return rows_affected(session, statement)


def give_up(
    table: LeasedTable[Any], session: Session, row_id: Rows, *, error: str, holder: Optional[str] = None
) -> bool:
    """No more attempts (idempotent: a done row stays done, a given-up one is left as it is).

    ``holder``: the message whose dead letter records this failure, when it is not the
    one that held the attempt (a group's member): the group's message, should it come
    back, must not take the row for one it gave up itself (``not_started``).
    """
    now = utcnow()
    model = table.model
    held = {"lease_holder": holder} if holder is not None else {}
    statement = (
        update(model)
        .where(_which(model, row_id), table.open)
        .values(
            **table.given_up_values,
            **{table.next_attempt_at.key: None},
            **held,
            last_error=error,
            locked_until=None,
            updated_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    return rows_affected(session, statement) >= 1


def revive(table: LeasedTable[Any], session: Session, row_id: Rows, *, lease: timedelta) -> bool:
    """Put a given-up row back in play for a replayed message; False unless it was given up.

    It starts over with a fresh attempt budget (``attempts`` and ``retry_count`` 0)
    and no ``last_error``, leased for ``lease``: the replayed message should start
    it within the lease, and if that message is never enqueued, the lease runs out
    and the next claim takes it. A done row is left alone: nothing is done twice.
    """
    now = utcnow()
    model = table.model
    statement = (
        update(model)
        .where(_which(model, row_id), table.given_up)
        .values(
            **table.revived_values(now),
            attempts=0,
            retry_count=0,
            last_error=None,
            locked_until=now + lease,
            updated_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    return rows_affected(session, statement) >= 1


def _which(model: Any, rows: Rows) -> ColumnElement[bool]:
    return model.id.in_(rows) if isinstance(rows, Sequence) else model.id == rows
