"""``decide`` as a table: every class of failure the backoff middleware meets, at the edges of the policy.

The decision is pure (no broker, no database, no clock), so each row is one call;
``test_backoff`` checks that the middleware applies the answers.
"""

from __future__ import annotations

import pytest
from sqlalchemy.exc import IntegrityError, OperationalError

from pipeline.core.errors import (
    DEFAULT_RETRY_AFTER_SECONDS,
    Deferred,
    PermanentError,
    RateLimited,
    RetriesExhausted,
    TransientError,
)
from pipeline.core.retry_policy import (
    DATABASE_RETRY_MS,
    EXHAUSTED,
    MAX_DATABASE_RETRY_MS,
    PERMANENT,
    Decision,
    Defer,
    GiveUp,
    Policy,
    Refund,
    Retry,
    decide,
)

#: What a 429 without a retry-after waits, in the decision's milliseconds.
FALLBACK_MS = int(DEFAULT_RETRY_AFTER_SECONDS * 1000)


class Thrown(Exception):
    """A class the actor declares in ``throws``."""


class Refusal(Exception):
    """A PostgreSQL refusal's SQLSTATE, the same on every try."""

    pgcode = "22003"


#: 10 ms, doubling, capped at 25 ms; three retries; ``Thrown`` never retried.
POLICY = Policy(max_retries=3, retry_delay_ms=10, max_retry_delay_ms=25, throws=(Thrown,))
DATABASE_DOWN = OperationalError("SELECT 1", {}, Exception("connection refused"))
REFUSED_STATEMENT = OperationalError("INSERT", {}, Refusal("out of range"))

CASES: list[tuple[str, BaseException, int, Decision]] = [
    # a transient failure (or any bug) is retried, doubling up to the cap, until max_retries are made
    ("transient, first failure", TransientError("down"), 0, Retry(10, retries=1)),
    ("transient, second", TransientError("down"), 1, Retry(20, retries=2)),
    ("transient, capped", TransientError("down"), 2, Retry(25, retries=3)),
    ("transient, retries made", TransientError("down"), 3, GiveUp(EXHAUSTED)),
    ("transient, beyond (the row counted more)", TransientError("down"), 7, GiveUp(EXHAUSTED)),
    ("a bug, first failure", KeyError("x"), 0, Retry(10, retries=1)),
    ("a bug, retries made", KeyError("x"), 3, GiveUp(EXHAUSTED)),
    ("a statement the database refuses", REFUSED_STATEMENT, 0, Retry(10, retries=1)),
    ("an integrity error", IntegrityError("INSERT", {}, Exception("dup")), 3, GiveUp(EXHAUSTED)),
    # a permanent failure is never retried, whatever was made
    ("permanent, first failure", PermanentError("bad address"), 0, GiveUp(PERMANENT)),
    ("permanent, retries made", PermanentError("bad address"), 3, GiveUp(PERMANENT)),
    ("retries exhausted in the row", RetriesExhausted("4 of 3"), 0, GiveUp(PERMANENT)),
    ("the actor's throws", Thrown("no"), 0, GiveUp(PERMANENT)),
    # a rate limit waits and gives the attempt back, even with no retries left
    ("rate limited", RateLimited("429", retry_after=2.5), 0, Refund(2_500)),
    ("rate limited, retries made", RateLimited("429", retry_after=2.5), 3, Refund(2_500)),
    ("rate limited, no retry-after", RateLimited("429", retry_after=0), 0, Refund(FALLBACK_MS)),
    ("rate limited, a short one", RateLimited("429", retry_after=0.2), 0, Refund(FALLBACK_MS)),
    # deferred: runs again untouched, when it says, even with no retries left
    ("deferred", Deferred("not due", retry_after=90), 0, Defer(90_000)),
    ("deferred, retries made", Deferred("not due", retry_after=90), 3, Defer(90_000)),
    ("deferred, due now", Deferred("not due", retry_after=0), 0, Defer(1)),
    # the database down: deferred, doubling per deferral (see the table below), retries untouched
    ("database down", DATABASE_DOWN, 0, Defer(DATABASE_RETRY_MS, deferrals=1)),
    ("database down, retries made", DATABASE_DOWN, 3, Defer(DATABASE_RETRY_MS, deferrals=1)),
]


@pytest.mark.parametrize(
    ("exception", "retries_made", "expected"), [case[1:] for case in CASES], ids=[case[0] for case in CASES]
)
def test_decide(exception: BaseException, retries_made: int, expected: Decision) -> None:
    assert decide(exception, retries_made, POLICY) == expected


@pytest.mark.parametrize(
    ("deferrals_made", "delay_ms"),
    [(0, 2_000), (1, 4_000), (2, 8_000), (3, 16_000), (4, MAX_DATABASE_RETRY_MS), (9, MAX_DATABASE_RETRY_MS)],
)
def test_the_database_down_doubles_per_deferral_up_to_the_cap(deferrals_made: int, delay_ms: int) -> None:
    expected = Defer(delay_ms, deferrals=deferrals_made + 1)
    assert decide(DATABASE_DOWN, 0, POLICY, deferrals_made=deferrals_made) == expected


def test_an_actor_without_a_policy_never_retries() -> None:
    never = Policy(max_retries=0, retry_delay_ms=0, max_retry_delay_ms=0)
    assert decide(TransientError("down"), 0, never) == GiveUp(EXHAUSTED)
    assert decide(Thrown("no"), 0, never) == GiveUp(EXHAUSTED)
    assert decide(RateLimited("429", retry_after=1), 0, never) == Refund(1_000)
