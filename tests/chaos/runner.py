"""The one chaos scenario runner: the production shape under load, one fault in the middle, a verdict.

Every scenario runs the same way, only the fault differs (``tests.chaos.faults``):

1. the README's production processes (``worker --processes 2 --threads 8``, ``ticker``,
   ``archiver``, ``serve``) on default settings, retry delays scaled down, on a
   database and vhost of the run's private PostgreSQL and RabbitMQ, against a fake
   Resend advertising a raised limit (200 requests/s) that the defaults follow;
2. the load (``tests.chaos.load``) in flight: 1,000 emails inserted, 200 events posted;
3. once a quarter of the deliveries are made, the fault, which says when it has hit (the rest of
   the events are posted from then on) and returns when it is over;
4. a wait, up to a deadline, until every item is final and every failure archived;
5. the verdict (``tests.chaos.verdict``), the fault's own checks, and the processes alive.

The result of each run is kept for ``docs/RELIABILITY.md`` (written when the run asks); the test asserts after.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

from sqlalchemy.orm import Session, sessionmaker

from bench.harness.fake_resend import FakeResend
from bench.harness.private import Endpoints, PrivateServices, free_port
from bench.harness.shipped import Fleet, default_environment, fleet, sessions_of
from bench.harness.waiting import wait_until
from tests.chaos import load as load_
from tests.chaos.load import Load, Poster
from tests.chaos.verdict import Verdict, judge, settled

#: The fake provider's advertised (and enforced) team limit; the defaults follow it, less 10%.
PROVIDER_LIMIT = 200
#: The retry delays scaled down (the defaults are 1 minute, doubling); everything else is a default.
SCALED_DELAYS = {"EMAIL_RETRY_DELAY_MINUTES": "0.01", "WEBHOOK_INITIAL_RETRY_DELAY_MINUTES": "0.005"}
#: The fault comes once this many deliveries are made (of about 1,180).
FAULT_AFTER_DELIVERIES = 300
#: The contract: the last item is done this soon after the fault ends.
RECOVERY_SECONDS = 60.0
#: How long past the fault's end the run waits before it calls unfinished items stuck.
DEADLINE_SECONDS = 90.0
#: How often the run asks the database whether it is over (the rows' own timestamps time the recovery).
SETTLE_POLL_SECONDS = 0.5
#: Log lines worth showing in a report: errors and what killed a thread or a process.
_WORTH_SHOWING = re.compile(r"\b(ERROR|CRITICAL|Traceback|exited|killed)\b|\w+(Error|Exception):")


@dataclass
class Chaos:
    """What a fault may act on, and where it leaves figures and broken promises of its own."""

    private: PrivateServices
    endpoints: Endpoints
    fleet: Fleet
    provider: FakeResend
    sessions: sessionmaker[Session]
    env: dict[str, str]
    cwd: Path
    intake: str
    load: Load
    poster: Poster
    figures: dict[str, Any] = field(default_factory=dict)

    def in_effect(self) -> None:
        """Called by a fault once it has hit (a process killed, a service down): the second half of
        the events is posted from then on, so it meets the fault rather than racing a slow command."""
        self.poster.fault_started.set()

    def events_answered(self) -> int:
        return len(self.load.answers)

    @property
    def vhost(self) -> str:
        return self.endpoints.broker_url.rsplit("/", 1)[1]


@dataclass(frozen=True)
class Fault:
    """One scenario: what is done in the middle of the load, and what else it promises."""

    id: str
    #: What was done, for the report's table.
    what: str
    #: Applies the fault and returns once it is over (services back, processes restarted).
    apply: Callable[[Chaos], None]
    #: More to wait for before judging (a backlog archived, …).
    settled: Callable[[Chaos], bool] = lambda chaos: True
    #: The fault's own promises; returns what it found broken.
    check: Callable[[Chaos], list[str]] = lambda chaos: []
    #: A good email may be given up (with its dead letter): a provider storm outlasts its retries.
    emails_may_fail: bool = False


@dataclass
class Outcome:
    """One run: the verdict and everything a report or an assertion message needs."""

    fault: Fault
    verdict: Verdict
    broken: list[str]
    figures: dict[str, Any]
    seconds: float
    log_lines: list[str]

    @property
    def passed(self) -> bool:
        recovered = self.verdict.recovery_seconds is not None and self.verdict.recovery_seconds <= RECOVERY_SECONDS
        return not (self.verdict.lost or self.verdict.twice or self.verdict.stuck or self.broken) and recovered

    def explain(self) -> str:
        lines = [f"{self.fault.id}: {self.verdict.summary()}"]
        if self.verdict.breakdown():
            lines.append(f"  {self.verdict.breakdown()}")
        lines += [f"  broken: {item}" for item in self.broken[:20]]
        if self.verdict.problems():
            lines.append(f"  {self.verdict.problems()}")
        lines += [f"  figures: {self.figures}"]
        lines += ["  log:"] + [f"    {line}" for line in self.log_lines[:40]]
        return "\n".join(lines)


def environment(endpoints: Endpoints, provider: FakeResend) -> dict[str, str]:
    return default_environment(
        endpoints, provider, PAYMENT_WEBHOOK_SECRET=load_.WEBHOOK_SECRET, **SCALED_DELAYS
    )


def run(fault: Fault, private: PrivateServices, endpoints: Endpoints, cwd: Path) -> Outcome:
    """Run ``fault`` in the middle of the load; never raises for a broken promise, only reports it."""
    started = time.monotonic()
    with FakeResend(api_key="re_chaos", max_requests_per_second=PROVIDER_LIMIT) as provider:
        env = environment(endpoints, provider)
        sessions = sessions_of(endpoints)
        with fleet(env, cwd) as running:
            port = free_port()
            running.start("serve", "serve", "--host", "127.0.0.1", "--port", str(port))
            intake = f"http://127.0.0.1:{port}"
            load_.wait_for_intake(intake)
            wait_until(lambda: "listening" in (cwd / "ticker.log").read_text(), timeout=60, what="the wake-up")
            load = load_.prepare(sessions, provider)
            chaos = Chaos(private, endpoints, running, provider, sessions, env, cwd, intake, load, Poster(intake, load))
            verdict, broken = _under_load(fault, chaos)
            broken += _dead_processes(running)
    return Outcome(fault, verdict, broken, chaos.figures, time.monotonic() - started, _log_lines(cwd))


def _under_load(fault: Fault, chaos: Chaos) -> tuple[Verdict, list[str]]:
    broken: list[str] = []
    poster = chaos.poster
    load_.insert(chaos.sessions, chaos.load)
    poster.start()
    wait_until(poster.first_half_posted.is_set, timeout=120, what="the first half of the events posted")
    wait_until(lambda: chaos.provider.delivery_count() >= FAULT_AFTER_DELIVERIES, timeout=120,
               what=f"{FAULT_AFTER_DELIVERIES} deliveries before the fault\n{chaos.fleet.logs()}")
    fault_started = time.monotonic()
    try:
        fault.apply(chaos)
    except Exception as exc:  # a fault whose own step failed or timed out says so in the report
        broken.append(f"the fault did not complete: {type(exc).__name__}: {str(exc)[:500]}")
    chaos.in_effect()  # for a fault that did not say
    fault_ended = datetime.now(timezone.utc)
    chaos.figures["fault seconds"] = round(time.monotonic() - fault_started, 1)
    try:
        wait_until(lambda: poster.done() and settled(chaos.sessions, chaos.load) and fault.settled(chaos),
                   timeout=DEADLINE_SECONDS, what="every item final", interval=SETTLE_POLL_SECONDS)
    except AssertionError:
        broken.append(f"not settled {DEADLINE_SECONDS:.0f}s after the fault")
    if poster.error is not None:
        broken.append(f"the poster failed: {poster.error!r}")
    verdict = judge(chaos.sessions, chaos.provider, chaos.load, fault_ended=fault_ended,
                    emails_may_fail=fault.emails_may_fail)
    broken += fault.check(chaos)
    return verdict, broken


def _dead_processes(running: Fleet) -> list[str]:
    return [f"{name} is not running at the end" for name, alive in running.alive().items() if not alive]


def _log_lines(cwd: Path, limit: int = 60) -> list[str]:
    """Distinct error lines of every process's log (numbers blurred so repeats collapse), with a count."""
    seen: dict[str, tuple[str, int]] = {}
    for log in sorted(cwd.glob("*.log")):
        for line in log.read_text(errors="replace").splitlines():
            if not _WORTH_SHOWING.search(line):
                continue
            key = log.stem + re.sub(r"[0-9a-f]{8,}|\d+", "#", line[24:160])
            first, count = seen.get(key, (f"{log.stem}: {line[:300]}", 0))
            seen[key] = (first, count + 1)
    return [f"{first}  (x{count})" if count > 1 else first for first, count in list(seen.values())[:limit]]


def optional_float(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.1f}"
