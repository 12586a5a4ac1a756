"""The backoff middleware's decisions: retry when, give up when, refund when.

On Dramatiq's ``StubBroker`` with an item-hooks object that records what it is
told, and the final errors in SQLite. Whole runs go through a real ``Worker``
with delays of milliseconds; single decisions are made the way the worker asks
for them, ``after_process_message`` with the exception the actor raised. The
log lines of a run are what a worker process writes: Dramatiq's filtered as
``pipeline.core.logs.configure_logging`` does, then the message's own line.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Optional

import dramatiq
import pytest
from dramatiq import Message, Worker
from dramatiq.broker import MessageProxy
from dramatiq.brokers.stub import StubBroker
from dramatiq.common import current_millis, dq_name
from sqlalchemy.orm import Session, sessionmaker

from pipeline.core.errors import Deferred, PermanentError, RateLimited, RetriesExhausted, TransientError, describe
from pipeline.core.logs import WORKER_THREAD_LOGGER, ExpectedFailures
from pipeline.core.outcomes import Outcome, counting, report
from pipeline.middleware.backoff import Backoff
from storage.models import FinalError
from tests.support.helpers import SHIPPED_MAX_HOLD_MS

#: The actors' policy in these tests (``Pipeline.actor``): 10 ms, 20 ms, then capped at 25 ms; three retries.
BASE_MS, CAP_MS, MAX_RETRIES = 10, 25, 3
QUEUE = "items"


class RecordingHooks:
    """Item hooks that remember what the middleware told them; ``broken`` plays a database outage."""

    def __init__(self) -> None:
        self.retries: list[tuple[timedelta, bool, str]] = []
        self.failures: list[str] = []
        self.broken: Optional[Exception] = None

    def retrying(self, session: Session, message: Message, *, error: str, delay: timedelta, refund: bool) -> None:
        if self.broken is not None:
            raise self.broken
        self.retries.append((delay, refund, error))

    def given_up(self, session: Session, message: Message, *, error: str) -> None:
        if self.broken is not None:
            raise self.broken
        self.failures.append(error)


@dataclass
class Pipeline:
    broker: StubBroker
    backoff: Backoff
    hooks: RecordingHooks
    sessions: sessionmaker[Session]

    def actor(self, fn: Callable[..., Any], **options: Any) -> dramatiq.Actor:  # type: ignore[type-arg]
        """``fn`` with the tests' retry policy, as ``pipeline.core.declare.bind`` gives one from the settings."""
        policy = {"max_retries": MAX_RETRIES, "retry_delay": BASE_MS, "max_retry_delay": CAP_MS}
        return dramatiq.actor(fn, broker=self.broker, queue_name=QUEUE, item_hooks=self.hooks, **{**policy, **options})

    def run(self, actor: dramatiq.Actor, *args: Any) -> None:  # type: ignore[type-arg]
        """Send one message and work until nothing is left, retries included."""
        worker = Worker(self.broker, worker_threads=1, worker_timeout=10)
        worker.start()
        try:
            actor.send(*args)
            self.broker.join(QUEUE, fail_fast=False, timeout=10_000)  # a regression fails, never hangs
            worker.join()
        finally:
            worker.stop()

    def decide(self, actor: dramatiq.Actor, exception: Exception, **options: Any) -> MessageProxy:  # type: ignore[type-arg]
        """One failed delivery of ``actor(1)``, handed to the middleware as the worker does."""
        proxy = MessageProxy(actor.message_with_options(args=(1,), **options))
        try:
            raise exception
        except Exception as raised:
            self.backoff.after_process_message(self.broker, proxy, exception=raised)
        return proxy

    def delayed(self) -> list[Message]:  # type: ignore[type-arg]
        """The messages waiting in the delay queue."""
        return [Message.decode(body) for body in list(self.broker.queues[dq_name(QUEUE)].queue)]

    def final_error(self, message_id: str) -> Optional[FinalError]:
        with self.sessions() as session:
            return session.get(FinalError, message_id)


@pytest.fixture
def pipeline(lite: sessionmaker[Session]) -> Iterator[Pipeline]:
    broker = StubBroker(middleware=[])
    backoff = Backoff(lite, max_hold_ms=SHIPPED_MAX_HOLD_MS)
    broker.add_middleware(backoff)
    yield Pipeline(broker, backoff, RecordingHooks(), lite)
    broker.close()


def ms(*values: int) -> list[timedelta]:
    return [timedelta(milliseconds=value) for value in values]


def counted(retries_made: int, exception: Exception) -> Exception:
    """``exception`` as an actor raises it from inside ``counting``: the row's retry count on it."""
    try:
        with counting(retries_made):
            raise exception
    except Exception as stamped:
        return stamped
    raise AssertionError("unreachable")


# --- whole runs through a worker ------------------------------------------------------------------


def test_a_transient_error_is_retried_doubling_up_to_the_cap_then_given_up_with_its_final_error(
    pipeline: Pipeline,
) -> None:
    runs: list[int] = []

    def always_down(item_id: int) -> None:
        runs.append(item_id)
        raise TransientError("provider down")

    pipeline.run(pipeline.actor(always_down), 7)

    assert runs == [7] * (1 + MAX_RETRIES)
    assert [(delay, refund) for delay, refund, _ in pipeline.hooks.retries] == [(d, False) for d in ms(10, 20, 25)]
    assert pipeline.hooks.failures == ["TransientError: provider down"]
    (dead,) = pipeline.broker.dead_letters
    final = pipeline.final_error(dead.message_id)
    assert final is not None and (final.error, final.retries) == ("TransientError: provider down", MAX_RETRIES)
    assert "TransientError: provider down" in (final.traceback or "")


def test_an_item_that_recovers_is_not_given_up(pipeline: Pipeline) -> None:
    runs: list[int] = []

    def down_twice(item_id: int) -> None:
        runs.append(item_id)
        if len(runs) <= 2:
            raise TransientError(f"down, answer {len(runs)}")

    pipeline.run(pipeline.actor(down_twice), 3)

    assert runs == [3, 3, 3]
    assert [delay for delay, _, _ in pipeline.hooks.retries] == ms(10, 20)
    errors = [error for _, _, error in pipeline.hooks.retries]
    assert errors == ["TransientError: down, answer 1", "TransientError: down, answer 2"]
    assert pipeline.hooks.failures == [] and pipeline.broker.dead_letters == []


@pytest.mark.parametrize(
    ("exception", "throws", "runs_expected"),
    [
        (PermanentError("Resend 422: refused"), (), 1),
        (RetriesExhausted("email 3: attempt 5 started, 4 allowed"), (), 1),
        (ValueError("bad data"), (ValueError,), 1),  # the actor's ``throws``
        (KeyError("missing"), (ValueError,), 1 + MAX_RETRIES),  # not in ``throws``: retried
    ],
)
def test_permanent_errors_and_the_actors_throws_are_given_up_at_once(
    pipeline: Pipeline, exception: Exception, throws: tuple[type[Exception], ...], runs_expected: int
) -> None:
    runs: list[int] = []

    def failing(item_id: int) -> None:
        runs.append(item_id)
        raise exception

    pipeline.run(pipeline.actor(failing, throws=throws) if throws else pipeline.actor(failing), 1)

    assert len(runs) == runs_expected
    assert len(pipeline.hooks.retries) == runs_expected - 1
    assert len(pipeline.hooks.failures) == 1 and len(pipeline.broker.dead_letters) == 1
    final = pipeline.final_error(pipeline.broker.dead_letters[0].message_id)
    assert final is not None and final.retries == runs_expected - 1


# --- single decisions -----------------------------------------------------------------------------


def noop(item_id: int) -> None:
    """An actor for single decisions: only its options matter."""


@pytest.mark.parametrize(("retry_after", "delay_ms"), [(2.5, 2500), (0.2, 1000), (0, 1000)])
def test_a_rate_limit_waits_for_retry_after_at_least_a_second_and_spends_no_retry(
    pipeline: Pipeline, retry_after: float, delay_ms: int
) -> None:
    actor = pipeline.actor(noop)
    before = current_millis()

    proxy = pipeline.decide(actor, RateLimited("429", retry_after=retry_after), retries=MAX_RETRIES)

    assert pipeline.hooks.retries == [(timedelta(milliseconds=delay_ms), True, "RateLimited: 429")]
    assert not proxy.failed and pipeline.hooks.failures == []  # a spent budget does not matter
    (again,) = pipeline.delayed()
    assert again.message_id == proxy.message_id and again.options["retries"] == MAX_RETRIES
    assert before + delay_ms <= again.options["eta"] <= current_millis() + delay_ms


def test_the_retry_count_the_database_gives_wins_over_the_messages(pipeline: Pipeline) -> None:
    """Attempts of workers that died mid-way count: the actor says how many retries its row has seen."""
    actor = pipeline.actor(noop, max_retry_delay=1000)

    pipeline.decide(actor, counted(2, TransientError("down")), retries=0)
    given_up = pipeline.decide(actor, counted(MAX_RETRIES, TransientError("down")), retries=0)

    assert [delay for delay, _, _ in pipeline.hooks.retries] == ms(40)  # 10 ms * 2**2
    assert [m.options["retries"] for m in pipeline.delayed()] == [3]
    assert given_up.failed and pipeline.hooks.failures == ["TransientError: down"]
    final = pipeline.final_error(given_up.message_id)
    assert final is not None and final.retries == MAX_RETRIES


@pytest.mark.parametrize(
    ("actor_options", "message_options", "decision"),
    [
        ({}, {}, BASE_MS),  # the actor's policy
        ({"retry_delay": 50, "max_retry_delay": 1000}, {}, 50),  # the actor's
        ({"retry_delay": 50, "max_retry_delay": 1000}, {"retry_delay": 7}, 7),  # the message's first
        ({"retry_delay": 50, "max_retry_delay": 30}, {}, 30),  # the cap holds from the first retry
        ({}, {"retries": 2}, 25),  # 10 ms * 2**2 = 40, capped
        ({"max_retries": 1}, {"retries": 1}, None),  # the actor's budget is spent
        ({"max_retries": 5}, {"max_retries": 0}, None),  # the message's budget first
        ({}, {"retries": MAX_RETRIES}, None),  # the actor's budget
    ],
)
def test_options_resolve_message_then_actor(
    pipeline: Pipeline, actor_options: dict[str, Any], message_options: dict[str, Any], decision: Optional[int]
) -> None:
    proxy = pipeline.decide(pipeline.actor(noop, **actor_options), TransientError("down"), **message_options)

    if decision is None:
        assert proxy.failed and pipeline.hooks.retries == [] and pipeline.delayed() == []
        assert pipeline.hooks.failures == ["TransientError: down"]
    else:
        assert not proxy.failed and pipeline.hooks.failures == []
        assert [delay for delay, _, _ in pipeline.hooks.retries] == ms(decision)
        (again,) = pipeline.delayed()
        assert again.options["retries"] == message_options.get("retries", 0) + 1
        assert "TransientError: down" in again.options["traceback"]


def test_an_actor_without_a_policy_is_never_retried(pipeline: Pipeline) -> None:
    """Retry policies live in the settings; the middleware has none of its own to fall back on."""
    bare = dramatiq.actor(noop, broker=pipeline.broker, queue_name=QUEUE, item_hooks=pipeline.hooks)

    proxy = pipeline.decide(bare, TransientError("down"))

    assert proxy.failed and pipeline.hooks.retries == [] and pipeline.hooks.failures == ["TransientError: down"]


def test_a_database_outage_never_holds_a_message_back(pipeline: Pipeline, caplog: pytest.LogCaptureFixture) -> None:
    """The item's row cannot be told: the message is retried or failed all the same, and the outage logged."""
    actor = pipeline.actor(noop)
    pipeline.hooks.broken = RuntimeError("database is down")

    with caplog.at_level(logging.ERROR):
        retried = pipeline.decide(actor, TransientError("down"))
        given_up = pipeline.decide(actor, PermanentError("refused"))

    assert not retried.failed and [m.message_id for m in pipeline.delayed()] == [retried.message_id]
    assert given_up.failed
    assert pipeline.final_error(given_up.message_id) is None  # one transaction with the hooks: rolled back
    assert caplog.text.count("Could not record the outcome of a message in the database.") == 2


# --- the one line per message ---------------------------------------------------------------------


def outcome_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [
        {name: getattr(record, name) for name in ("item", "actor", "attempt", "outcome")}
        for record in caplog.records
        if record.name == "pipeline.middleware.item_log"
    ]


def test_each_message_gets_one_line_with_its_item_actor_attempt_and_outcome(
    pipeline: Pipeline, caplog: pytest.LogCaptureFixture
) -> None:
    def flaky(item_id: int) -> None:
        if len(outcome_lines(caplog)) < 2:
            raise TransientError("provider down")
        report(Outcome.SENT)

    with caplog.at_level(logging.INFO, logger="pipeline.middleware.item_log"):
        pipeline.run(pipeline.actor(flaky), 7)

    assert outcome_lines(caplog) == [
        {"item": 7, "actor": "flaky", "attempt": 1, "outcome": "retrying"},
        {"item": 7, "actor": "flaky", "attempt": 2, "outcome": "retrying"},
        {"item": 7, "actor": "flaky", "attempt": 3, "outcome": "sent"},
    ]
    assert "item=7 actor=flaky attempt=1 outcome=retrying delay_ms=10 error=TransientError: provider down" in (
        caplog.text
    )


def test_a_given_up_or_deferred_message_says_so_and_an_unreported_success_is_done(
    pipeline: Pipeline, caplog: pytest.LogCaptureFixture
) -> None:
    actor = pipeline.actor(noop)
    with caplog.at_level(logging.INFO, logger="pipeline.middleware.item_log"):
        pipeline.decide(actor, PermanentError("refused"))
        pipeline.decide(actor, Deferred("later", retry_after=1))
        pipeline.run(actor, 3)

    # the deferred message comes back a second later and runs to the end: a line of its own
    assert sorted((line["item"], line["outcome"]) for line in outcome_lines(caplog)) == [
        (1, "deferred"),
        (1, "done"),
        (1, "given_up"),
        (3, "done"),
    ]


# --- expected failures against bugs in the log ----------------------------------------------------


@pytest.fixture
def worker_logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Every record of a run, Dramatiq's worker threads filtered as a worker process's are."""
    worker_threads = logging.getLogger(WORKER_THREAD_LOGGER)
    installed = ExpectedFailures()
    worker_threads.addFilter(installed)
    with caplog.at_level(logging.DEBUG):
        yield caplog
    worker_threads.removeFilter(installed)


def fails_first(exception: Exception) -> Callable[[int], None]:
    """An actor that raises ``exception`` on its first run and sends on the next."""
    runs: list[int] = []

    def fails_once(item_id: int) -> None:
        runs.append(item_id)
        if len(runs) == 1:
            raise exception
        report(Outcome.SENT)

    return fails_once


@pytest.mark.parametrize(
    ("exception", "throws", "outcome"),
    [
        (TransientError("Resend 500 application_error: down"), (), "retrying"),
        (PermanentError("Resend 422 validation_error: refused"), (PermanentError,), "given_up"),  # the email actors
        (PermanentError("order MN-1 does not match"), (), "given_up"),  # the webhook actor
        (Deferred("email 7: its retry is due later", retry_after=0.01), (), "deferred"),
        (ValueError("bad data"), (ValueError,), "given_up"),  # declared by the actor
    ],
)
def test_an_expected_failure_is_one_warning_line_with_its_cause_and_no_traceback(
    pipeline: Pipeline,
    worker_logs: pytest.LogCaptureFixture,
    exception: Exception,
    throws: tuple[type[Exception], ...],
    outcome: str,
) -> None:
    pipeline.run(pipeline.actor(fails_first(exception), throws=throws), 7)

    (line,) = [record for record in worker_logs.records if record.levelno >= logging.WARNING]
    assert (line.name, line.levelname, line.exc_info) == ("pipeline.middleware.item_log", "WARNING", None)
    text = line.getMessage()
    assert text.startswith(f"item=7 actor=fails_once attempt=1 outcome={outcome} ") and text.endswith(
        f" error={describe(exception)}"
    )
    assert not [record for record in worker_logs.records if record.exc_info]
    assert "unhandled exception" not in worker_logs.text and "expected exception" not in worker_logs.text


def test_a_bug_keeps_dramatiqs_error_with_its_traceback_and_the_retry_line(
    pipeline: Pipeline, worker_logs: pytest.LogCaptureFixture
) -> None:
    pipeline.run(pipeline.actor(fails_first(ValueError("bad data"))), 7)

    error, retrying = [record for record in worker_logs.records if record.levelno >= logging.WARNING]
    assert (error.name, error.levelname) == (WORKER_THREAD_LOGGER, "ERROR")
    assert "unhandled exception" in error.getMessage()
    assert error.exc_info is not None and isinstance(error.exc_info[1], ValueError)
    assert (retrying.name, retrying.levelname, retrying.exc_info) == ("pipeline.middleware.item_log", "WARNING", None)
    expected_line = "item=7 actor=fails_once attempt=1 outcome=retrying delay_ms=10 error=ValueError: bad data"
    assert retrying.getMessage() == expected_line
