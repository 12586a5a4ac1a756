"""The attempt lifecycle's decision: what an actor does with what ``start_attempt`` said."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Optional

import pytest

from pipeline.core.attempts import ComeBack, DeadLetterAgain, GivenUpEarlier, Go, Skip, Step, counted_attempt, step
from pipeline.core.errors import Deferred, RetriesExhausted
from pipeline.core.outcomes import Outcome, clear, retries_counted, take_report
from storage.leases import Attempt, AttemptOutcome

NOW = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Item:
    retry_count: int = 2
    attempts: int = 3


ITEM = Item()


@pytest.mark.parametrize(
    ("attempt", "expected"),
    [
        (Attempt(AttemptOutcome.GO, ITEM), Go()),
        (Attempt(AttemptOutcome.EXHAUSTED, ITEM), Go(exhausted=True)),
        (Attempt(AttemptOutcome.SKIP), Skip()),
        (Attempt(AttemptOutcome.GO), Skip()),
        (Attempt(AttemptOutcome.NOT_DUE, due_at=NOW + timedelta(seconds=90)), ComeBack(wait=90.0)),
        (Attempt(AttemptOutcome.NOT_DUE, due_at=NOW - timedelta(seconds=5)), ComeBack(wait=0.0)),
        (Attempt(AttemptOutcome.NOT_DUE), Skip()),
        (Attempt(AttemptOutcome.GIVEN_UP), DeadLetterAgain()),
    ],
)
def test_step_decides_from_the_rows_answer_alone(attempt: Attempt[Any], expected: Step) -> None:
    assert step(attempt, now=NOW) == expected


def run(attempt: Attempt[Item]) -> Optional[Item]:
    with counted_attempt(attempt, label="item 1", max_attempts=3) as item:
        return item


def test_nothing_to_do_yields_no_item_and_reports_skipped() -> None:
    clear()
    assert run(Attempt(AttemptOutcome.SKIP)) is None
    assert take_report() == (Outcome.SKIPPED, {})


def test_an_early_return_is_deferred_and_a_given_up_one_dead_lettered_again() -> None:
    with pytest.raises(Deferred):
        run(Attempt(AttemptOutcome.NOT_DUE, due_at=datetime.now(UTC) + timedelta(minutes=1)))
    with pytest.raises(GivenUpEarlier):
        run(Attempt(AttemptOutcome.GIVEN_UP))


def test_a_failure_inside_carries_the_rows_retry_count_and_an_exhausted_item_is_refused() -> None:
    assert run(Attempt(AttemptOutcome.GO, ITEM)) == ITEM
    with pytest.raises(RetriesExhausted) as refused:
        run(Attempt(AttemptOutcome.EXHAUSTED, ITEM))
    assert retries_counted(refused.value) == ITEM.retry_count
    failure = RuntimeError("provider down")
    with pytest.raises(RuntimeError):
        with counted_attempt(Attempt(AttemptOutcome.GO, ITEM), label="item 1", max_attempts=3):
            raise failure
    assert retries_counted(failure) == ITEM.retry_count
    assert retries_counted(RuntimeError("another")) is None
