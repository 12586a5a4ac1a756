"""The faults of issue 11, each applied once in the middle of the load by ``tests.chaos.runner``.

A fault returns when it is over: the service back, the process started again, the
storm calmed, the commands finished. What it promises beyond the common verdict
(a backlog archived once, every poison body dead-lettered, no 5xx from the intake)
is its ``check``; what it must wait for before judging is its ``settled``.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from dramatiq import Message
from dramatiq.common import xq_name
from sqlalchemy import text

from bench.harness.processes import run_cli
from bench.harness.shipped import WORKER
from bench.harness.waiting import wait_until
from pipeline.providers.resend import REQUEST_TIMEOUT_SECONDS
from storage.dead_letters import storable
from tests.chaos import fuzz as fuzz_
from tests.chaos import load, poison
from tests.chaos.runner import Chaos, Fault
from tests.support.dlq_support import publish

#: Dead messages put in ``emails.XQ`` before the archiver is killed.
BACKLOG = 500
#: Poison bodies of each kind, dealt round the four queues and their four XQs.
POISON_PER_KIND = 100
POISON_WAVES = 8
#: Generated requests the intake is fuzzed with.
FUZZ_EXAMPLES = 10_000


def _archived(chaos: Chaos, message_ids: list[str]) -> int:
    with chaos.sessions() as session:
        statement = text("SELECT COUNT(*) FROM dead_letters WHERE message_id = ANY(:ids)")
        return int(session.execute(statement, {"ids": message_ids}).scalar_one())


# --- kill -9 of every worker process -------------------------------------------------------


def _kill_workers(chaos: Chaos) -> None:
    chaos.fleet.kill("worker-0")
    chaos.in_effect()
    chaos.fleet.start("worker-1", *WORKER)


KILL_WORKERS = Fault("kill -9 workers", "`kill -9` of every worker process (`worker -p 2 -t 8`), then a new one",
                     _kill_workers)


# --- SIGTERM of the workers, then start again ---------------------------------------------


def _sigterm_workers(chaos: Chaos) -> None:
    chaos.figures["worker exit status"] = chaos.fleet.terminate("worker-0", timeout=60)
    chaos.in_effect()
    chaos.fleet.start("worker-1", *WORKER)


SIGTERM_WORKERS = Fault("SIGTERM workers", "SIGTERM of the worker command (graceful stop), then start it again",
                        _sigterm_workers)


# --- kill -9 of the archiver in the middle of a backlog ---------------------------------------


def _dead_messages(count: int) -> list[tuple[str, bytes]]:
    """Given-up ``send_email`` messages, as a worker nacks them, for emails no row has."""
    messages = []
    for n in range(count):
        message: Message[Any] = Message(
            queue_name="emails", actor_name="send_email", args=(poison.NO_SUCH_ITEM + n,), kwargs={},
            options={"retries": 3, "traceback": "Traceback (most recent call last):\nTransientError: chaos backlog"},
            message_id=str(uuid.uuid4()),
        )
        messages.append((message.message_id, message.encode()))
    return messages


def _kill_archiver(chaos: Chaos) -> None:
    messages = _dead_messages(BACKLOG)
    ids = [message_id for message_id, _ in messages]
    chaos.figures["backlog ids"] = ids
    publish(chaos.endpoints.broker_url, "emails.XQ", [body for _, body in messages])
    wait_until(lambda: _archived(chaos, ids) >= 10, timeout=60, what="the archiver working on the backlog",
               interval=0.005)
    chaos.fleet.kill("archiver")
    chaos.in_effect()
    chaos.figures["backlog archived at the kill"] = _archived(chaos, ids)
    chaos.fleet.start("archiver-2", "archiver")


def _backlog_done(chaos: Chaos) -> bool:
    return _archived(chaos, chaos.figures["backlog ids"]) == BACKLOG and _xq_empty(chaos, "emails.XQ")


def _xq_empty(chaos: Chaos, queue: str) -> bool:
    return chaos.private.rabbitmq.messages(chaos.vhost, queue) == 0


def _backlog_check(chaos: Chaos) -> list[str]:
    broken = []
    archived = _archived(chaos, chaos.figures.pop("backlog ids"))
    chaos.figures["backlog archived"] = archived
    if archived != BACKLOG:
        broken.append(f"{archived} of the {BACKLOG} backlog messages archived")
    left = chaos.private.rabbitmq.messages(chaos.vhost, "emails.XQ")
    if left:
        broken.append(f"{left} messages left in emails.XQ")
    if chaos.figures["backlog archived at the kill"] >= BACKLOG:
        broken.append("the archiver had archived the whole backlog before it was killed: no kill in the middle")
    return broken


KILL_ARCHIVER = Fault(
    "kill -9 archiver",
    f"{BACKLOG} dead messages published into `emails.XQ`; `kill -9` of the archiver in the middle, then a new one",
    _kill_archiver, settled=_backlog_done, check=_backlog_check,
)


# --- RabbitMQ and PostgreSQL ------------------------------------------------------------------


#: Events the intake answers while RabbitMQ is stopped, before it is started again.
EVENTS_DURING_OUTAGE = 20


def _restart_rabbitmq(chaos: Chaos) -> None:
    """Down long enough for payment providers to post while it is: the outage meets the webhooks in flight."""
    chaos.private.rabbitmq.stop_app()
    answered = chaos.events_answered()
    chaos.in_effect()
    wait_until(lambda: chaos.events_answered() >= answered + EVENTS_DURING_OUTAGE or chaos.poster.done(),
               timeout=60, what="events posted while RabbitMQ is down")
    chaos.figures["events answered while RabbitMQ was down"] = chaos.events_answered() - answered
    chaos.private.rabbitmq.start_app()


def _restart_postgresql(chaos: Chaos) -> None:
    chaos.in_effect()  # posts meet the restart: 503s, retried by the provider
    chaos.private.postgres.restart()


RABBITMQ_RESTART = Fault(
    "RabbitMQ restart",
    f"RabbitMQ `stop_app`, {EVENTS_DURING_OUTAGE} webhook events posted while it is down, `start_app`",
    _restart_rabbitmq,
)
POSTGRESQL_RESTART = Fault("PostgreSQL restart", "PostgreSQL `pg_ctl restart` (fast)", _restart_postgresql)


# --- a poison storm ---------------------------------------------------------------------------


def _poison_storm(chaos: Chaos) -> None:
    bodies = poison.storm(POISON_PER_KIND)
    chaos.figures["poison"] = bodies
    chaos.in_effect()
    stalled = []
    for number, wave in enumerate(poison.waves(bodies, POISON_WAVES)):
        for queue in poison.QUEUES:
            publish(chaos.endpoints.broker_url, queue, [item.body for item in wave if item.queue == queue])
        before = chaos.provider.delivery_count()
        if before >= load.EMAILS - load.REFUSED_EMAILS - 20:
            continue  # the good emails are all out: there is nothing left to stall
        try:  # the good traffic goes on between waves; a stall is reported, not waited out
            wait_until(lambda b=before: chaos.provider.delivery_count() >= b + 20, timeout=10, what="good traffic")
        except AssertionError:
            stalled.append(number)
    chaos.figures["waves after which good traffic stalled"] = stalled


def _unmatched_poison(chaos: Chaos) -> tuple[list[poison.Poison], int]:
    """The poison bodies no dead letter stands for, and how many undecodable ones lost their raw body.

    A body that decoded is found by its message id; one kept raw by its text on its
    dead-letter queue (its id hashes the queue, the body and its death, which a test
    cannot know), each dead letter standing for one body.
    """
    with chaos.sessions() as session:
        rows = session.execute(text("SELECT message_id, queue, raw_body FROM dead_letters")).all()
    ids = {row.message_id for row in rows}
    raw = Counter((row.queue, row.raw_body) for row in rows if row.raw_body is not None)
    missing: list[poison.Poison] = []
    not_raw = 0
    for item in chaos.figures["poison"]:
        kept_raw = (_dead_letter_queue(item.queue), storable(item.body.decode("utf-8", "replace")))
        if raw[kept_raw] > 0:
            raw[kept_raw] -= 1
        elif any(message_id in ids for message_id in item.acceptable_ids):
            not_raw += item.undecodable
        else:
            missing.append(item)
    return missing, not_raw


def _dead_letter_queue(queue: str) -> str:
    return queue if queue.endswith(".XQ") else xq_name(queue)


def _poison_archived(chaos: Chaos) -> bool:
    return not _unmatched_poison(chaos)[0]


def _poison_check(chaos: Chaos) -> list[str]:
    missing_items, not_raw = _unmatched_poison(chaos)
    bodies: list[poison.Poison] = chaos.figures.pop("poison")
    missing: dict[str, dict[str, int]] = {}
    for item in missing_items:
        by_queue = missing.setdefault(item.kind, {})
        by_queue[item.queue] = by_queue.get(item.queue, 0) + 1
    chaos.figures["poison bodies"] = len(bodies)
    chaos.figures["poison dead-lettered"] = len(bodies) - len(missing_items)
    broken = [
        f"{kind}: {sum(queues.values())} of {POISON_PER_KIND} not in dead_letters "
        f"({', '.join(f'{queue} {count}' for queue, count in sorted(queues.items()))})"
        for kind, queues in missing.items()
    ]
    if not_raw:
        broken.append(f"{not_raw} undecodable bodies archived without their raw body")
    return broken


POISON_STORM = Fault(
    "poison storm",
    f"{POISON_PER_KIND} malformed bodies of each of {len(poison.KINDS)} kinds, in {POISON_WAVES} waves among the "
    "good messages, on `emails`, `emails_bulk`, `webhooks`, `ticks` and their XQs",
    _poison_storm, settled=_poison_archived, check=_poison_check,
)


# --- a provider storm -------------------------------------------------------------------------

#: Requests the provider sees between two bursts of 429.
STORM_STRETCH = 150


def _provider_storm(chaos: Chaos) -> None:
    provider = chaos.provider
    provider.storm(server_errors=0.3, timeouts=0.1, hold_seconds=REQUEST_TIMEOUT_SECONDS + 1, seed=11)
    chaos.in_effect()
    for _ in range(3):
        provider.rate_limit_next(40, retry_after=1)
        seen = len(provider.requests)
        wait_until(lambda s=seen: len(provider.requests) >= s + STORM_STRETCH, timeout=120, what="the storm's traffic")
    provider.calm()
    statuses = [request.status for request in provider.requests]
    chaos.figures["provider answers"] = {str(code): statuses.count(code) for code in sorted(set(statuses), key=str)}


PROVIDER_STORM = Fault(
    "provider storm",
    f"fake Resend: 30% 500s, 10% answers held {REQUEST_TIMEOUT_SECONDS + 1}s (past the client's "
    f"{REQUEST_TIMEOUT_SECONDS}s timeout, delivered), 3 bursts of 40 × 429, over {3 * STORM_STRETCH} requests",
    _provider_storm, emails_may_fail=True,
)


# --- the provider down for longer than the retry schedule (#18) ---------------------------------

#: Far longer than the scaled retry schedule (0.6 + 1.2 + 2.4 s): before #18, every email
#: whose attempts fell in it failed, with its dead letter.
PROVIDER_DOWN_SECONDS = 30.0
#: The outage pause's promise: at most this many requests a second reach the dead provider.
MOST_REQUESTS_PER_SECOND_WHILE_DOWN = 2.0


def _provider_down(chaos: Chaos) -> None:
    provider = chaos.provider
    provider.go_down()
    chaos.in_effect()
    down_at = time.monotonic()
    time.sleep(PROVIDER_DOWN_SECONDS)  # the fault's length (the load), not a synchronisation
    back_at = time.monotonic()
    provider.come_back()
    chaos.figures["requests/s while down"] = round(provider.requests_between(down_at, back_at) / (back_at - down_at), 2)


def _provider_down_check(chaos: Chaos) -> list[str]:
    broken = []
    per_second = chaos.figures.get("requests/s while down", 0.0)
    if per_second > MOST_REQUESTS_PER_SECOND_WHILE_DOWN:
        broken.append(f"{per_second} requests/s reached the dead provider")
    logs = "".join(log.read_text(errors="replace") for log in chaos.cwd.glob("worker*.log"))
    if "fails as a whole" not in logs or "accepts requests again" not in logs:
        broken.append("no outage pause began and ended in the workers' logs")
    return broken


PROVIDER_DOWN = Fault(
    "provider down",
    f"fake Resend answers every request 500 for {PROVIDER_DOWN_SECONDS:.0f}s, far longer than the retry schedule "
    "(no email may fail)",
    _provider_down, check=_provider_down_check,
)


# --- two tickers and manual ticks ------------------------------------------------------------

TICKS = ("emails", "webhooks", "reservations")


def _many_tickers(chaos: Chaos) -> None:
    chaos.fleet.start("ticker-2", "ticker")
    wait_until(lambda: "listening" in (chaos.cwd / "ticker-2.log").read_text(), timeout=60, what="the second ticker")
    chaos.in_effect()
    failures = []
    with ThreadPoolExecutor(max_workers=len(TICKS) * 2) as pool:
        for _ in range(3):
            runs = [pool.submit(run_cli, "tick", tick, env=chaos.env, cwd=chaos.cwd) for tick in TICKS * 2]
            failures += [f"{r.args[1:]}: {r.stderr[-300:]}" for r in (run.result() for run in runs) if r.returncode]
    chaos.figures["manual ticks failed"] = failures


def _ticks_check(chaos: Chaos) -> list[str]:
    return [f"a manual tick failed: {failure}" for failure in chaos.figures["manual ticks failed"]]


TWO_TICKERS = Fault(
    "two tickers + manual ticks",
    "a second `ticker`, and 3 rounds of `tick emails|webhooks|reservations`, each twice at once",
    _many_tickers, check=_ticks_check,
)


# --- the intake fuzzed ----------------------------------------------------------------------


def _fuzz_intake(chaos: Chaos) -> None:
    chaos.in_effect()
    result = fuzz_.fuzz(chaos.intake, FUZZ_EXAMPLES)
    chaos.figures["fuzz"] = result
    chaos.figures["fuzz answers"] = dict(sorted(result.by_status.items()))


def _fuzz_check(chaos: Chaos) -> list[str]:
    result: fuzz_.FuzzResult = chaos.figures.pop("fuzz")
    broken = []
    if result.sent != FUZZ_EXAMPLES:
        broken.append(f"{result.sent} fuzz requests sent of {FUZZ_EXAMPLES}")
    if result.server_errors:
        broken.append(f"{len(result.server_errors)} answers of 5xx (or none) while PostgreSQL was up, e.g. "
                      + "; ".join(result.server_errors[:5]))
    stored = _stored_event_ids(chaos)
    expected = {event["event_id"] for event in chaos.load.events}
    unsigned = sorted(stored - expected - result.signed_event_ids)
    if unsigned:
        broken.append(f"{len(unsigned)} events stored that were not validly signed: {unsigned[:5]}")
    chaos.figures["fuzz events stored (validly signed)"] = len(stored - expected)
    return broken


def _stored_event_ids(chaos: Chaos) -> set[str]:
    with chaos.sessions() as session:
        return set(session.scalars(text("SELECT event_id FROM webhook_events")))


FUZZ_INTAKE = Fault(
    "intake fuzz",
    f"{FUZZ_EXAMPLES:,} generated bodies, headers and providers (hypothesis) posted to `serve` during the load",
    _fuzz_intake, check=_fuzz_check,
)


#: Every scenario of the suite, in the order it runs.
ALL = [
    KILL_WORKERS,
    KILL_ARCHIVER,
    RABBITMQ_RESTART,
    POSTGRESQL_RESTART,
    SIGTERM_WORKERS,
    POISON_STORM,
    PROVIDER_STORM,
    PROVIDER_DOWN,
    TWO_TICKERS,
    FUZZ_INTAKE,
]

