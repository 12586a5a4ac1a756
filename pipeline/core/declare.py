"""Actors declared as data, bound to the process's broker by ``pipeline.bootstrap``.

``@dramatiq.actor`` binds a function to the global broker when its module is
imported, and creates a RabbitMQ broker if none is set yet: importing an actor
module would build a broker as a side effect, and the import order would decide
which broker the actors live on. Here an actor module only *declares* its actors;
``bind`` makes them real on the broker that bootstrap built, with the options the
settings give (schedules, retry policies). Until then, calling ``send`` says so.

A periodic job is one declaration: ``@periodic(schedule="email_schedule",
tick="emails", cron="process-email-queue")`` names the ``Settings`` field holding
its cron schedule, its ``minalesh-workers tick`` subcommand and, if any, the shop's
cron endpoint; the ticker, the CLI, bootstrap and ``serve`` all read it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Optional

import dramatiq
from dramatiq import Broker, Message
from periodiq import cron
from sqlalchemy.orm import Session

from pipeline.core import runtime
from pipeline.core.errors import describe
from pipeline.core.settings import RetryPolicy, Settings
from storage import periodic_runs
from storage.clock import utcnow

#: The queue of periodic ticks, apart so that a backlog of work never delays a tick.
TICKS_QUEUE = "ticks"


@dataclass(frozen=True)
class JobReport:
    """What one run of a periodic job did: a summary line, and details the CLI prints first."""

    summary: str
    details: list[str] = field(default_factory=list)
    #: How many items the run took on (claimed, expired): the cron endpoints' ``processed``.
    processed: int = 0


@dataclass(eq=False)
class DeclaredActor:
    """An actor function and its options, until ``bind`` declares it on a broker."""

    fn: Callable[..., Any]
    queue_name: str
    #: Options for the middleware (``throws``, ``item_hooks``, ``priority``…), fixed in code.
    options: dict[str, Any] = field(default_factory=dict)
    #: The retry policy, read from the settings at bind time; None: never retried.
    retries: Optional[Callable[[Settings], RetryPolicy]] = None
    #: The ``Settings`` field holding a periodic actor's cron schedule.
    schedule_setting: Optional[str] = None

    @property
    def actor_name(self) -> str:
        return self.fn.__name__

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def bound(self) -> dramatiq.Actor:
        """This actor on the process's broker (bootstrap first)."""
        return runtime.current().broker.get_actor(self.actor_name)

    def send(self, *args: Any, **kwargs: Any) -> Message:
        return self.bound().send(*args, **kwargs)

    def send_with_options(self, **options: Any) -> Message:
        return self.bound().send_with_options(**options)

    def message(self, *args: Any, **kwargs: Any) -> Message:
        return self.bound().message(*args, **kwargs)


@dataclass(eq=False)
class PeriodicJob:
    """A periodic actor and how it is run by hand: ``minalesh-workers tick <tick>``."""

    actor: DeclaredActor
    tick: str
    #: One run, returning its report; the actor logs the summary, the CLI prints it all.
    run: Callable[[], JobReport]
    #: The shop's cron endpoint running it (``/api/cron/<cron>``, ``pipeline.web.cron``); None: no endpoint.
    cron: Optional[str] = None

    def send(self) -> Message:
        """One run now, through the ticks queue (as the ticker would)."""
        return self.actor.send()

    def run_scheduled(self) -> JobReport:
        """One scheduled run in this thread (a cron call): logged and stamped in ``periodic_runs`` as the actor's."""
        return run_and_record(self.run, job=self.actor.actor_name)

    @property
    def help(self) -> str:
        """The first line of the job's docstring."""
        return (self.run.__doc__ or self.actor.actor_name).strip().splitlines()[0]


def actor(
    *,
    queue_name: str,
    retries: Optional[Callable[[Settings], RetryPolicy]] = None,
    **options: Any,
) -> Callable[[Callable[..., Any]], DeclaredActor]:
    """Declare an actor on ``queue_name``; ``retries`` picks its policy from the settings."""

    def declare(fn: Callable[..., Any]) -> DeclaredActor:
        return DeclaredActor(fn=fn, queue_name=queue_name, options=options, retries=retries)

    return declare


def periodic(
    *, schedule: str, tick: str, cron: Optional[str] = None
) -> Callable[[Callable[[], JobReport]], PeriodicJob]:
    """Declare a periodic job on the ticks queue, scheduled by the ``Settings`` field ``schedule``.

    ``cron``: the shop's cron endpoint that runs it too (``/api/cron/<cron>``).
    """
    if schedule not in Settings.__dataclass_fields__:
        raise TypeError(f"@periodic(schedule={schedule!r}): Settings has no such field")

    def declare(run: Callable[[], JobReport]) -> PeriodicJob:
        def job() -> None:
            run_and_record(run, job=run.__name__)

        job.__name__ = run.__name__
        job.__doc__ = run.__doc__
        declared = DeclaredActor(fn=job, queue_name=TICKS_QUEUE, schedule_setting=schedule)
        return PeriodicJob(actor=declared, tick=tick, run=run, cron=cron)

    return declare


def run_and_log(run: Callable[[], JobReport]) -> JobReport:
    """One run of a periodic job, its summary logged under the job's own module."""
    report = run()
    logging.getLogger(run.__module__).info("%s", report.summary)
    return report


def run_and_record(run: Callable[[], JobReport], *, job: str) -> JobReport:
    """A scheduled run (the ticker's, a cron call's): logged, its success or failure stamped in ``periodic_runs``.

    The one place every periodic actor passes through, so a job that stops running
    (no ticker, no worker on ``ticks``, failing every time) shows in the metrics as a
    last success that grows old. A stamp that cannot be written is logged and skipped:
    the run itself is done, and the next run writes it.
    """
    try:
        report = run_and_log(run)
    except Exception as exc:
        error = describe(exc)
        _stamp(job, lambda session: periodic_runs.record_failure(session, job, at=utcnow(), error=error))
        raise
    _stamp(job, lambda session: periodic_runs.record_success(session, job, at=utcnow()))
    return report


def _stamp(job: str, write: Callable[[Session], None]) -> None:
    try:
        with runtime.current().sessions.begin() as session:
            write(session)
    except Exception as exc:
        logging.getLogger(__name__).warning("Could not record the run of %s (%s).", job, describe(exc))


def actors_in(namespaces: Iterable[object]) -> list[DeclaredActor]:
    """Every actor declared in these modules, periodic jobs' included, each once."""
    found: dict[str, DeclaredActor] = {}
    for namespace in namespaces:
        for value in vars(namespace).values():
            declared = value.actor if isinstance(value, PeriodicJob) else value
            if isinstance(declared, DeclaredActor):
                found.setdefault(declared.actor_name, declared)
    return list(found.values())


def jobs_in(namespaces: Iterable[object]) -> list[PeriodicJob]:
    """Every periodic job declared in these modules, each once."""
    found: dict[str, PeriodicJob] = {}
    for namespace in namespaces:
        for value in vars(namespace).values():
            if isinstance(value, PeriodicJob):
                found.setdefault(value.tick, value)
    return list(found.values())


def bind(declared: DeclaredActor, broker: Broker, settings: Settings) -> dramatiq.Actor:
    """Declare ``declared`` on ``broker`` with the options its settings give."""
    options = dict(declared.options)
    if declared.retries is not None:
        policy = declared.retries(settings)
        options.update(
            max_retries=policy.max_retries,
            retry_delay=minutes_ms(policy.delay_minutes),
            max_retry_delay=minutes_ms(policy.max_delay_minutes),
        )
    else:
        options["max_retries"] = 0
    if declared.schedule_setting is not None:
        options["periodic"] = cron(getattr(settings, declared.schedule_setting))
    declare = dramatiq.actor(actor_name=declared.actor_name, queue_name=declared.queue_name, broker=broker, **options)
    return declare(declared.fn)


def minutes_ms(minutes: float) -> int:
    """Minutes as Dramatiq's milliseconds, at least 1."""
    return max(int(minutes * 60_000), 1)
