"""One drain of each contender of ``bench.throughput``, each on services of its own.

Every run gets a fresh database (migrated as a deploy does) and RabbitMQ vhost, and
a fresh fake Resend in this process; its processes are started, awaited until they
consume, and stopped (SIGTERM, as an operator stops them) before the next run.

* ``this_project``: the README's ``worker --processes 2 --threads 8``, ``ticker`` and
  ``archiver`` (``bench.harness.shipped``), every setting at its default but
  ``EMAIL_RATE_LIMIT_PER_SECOND=0`` (no pacing), against a fake with no limit. The
  emails are inserted by SQL; the ticker's wake-up (NOTIFY) fans them out.
* ``plain_celery`` and ``plain_dramatiq``: ``bench.peers``, the same pipeline written
  plainly; their fan-out runs as a process of its own once the emails are inserted.
* ``noop``: the queue is filled first, then drained by ``dramatiq --processes 2
  --threads 8`` on an actor that does nothing.

Emails/s are counted at the fake, from the first accepted request to the last, so
start-up and fan-out latency before the first send are not in the figure.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from bench.harness import shipped
from bench.harness.fake_resend import FakeResend
from bench.runs import (
    DRAIN_TIMEOUT,
    CpuMeter,
    Drain,
    Run,
    children,
    command,
    finished,
    fresh_run,
    insert_emails,
    python,
    rss_kib,
    run_to_end,
    wait_deliveries,
    wait_ticker_listening,
)
from storage import migrate

#: Plain Celery's worker: prefork, 16 children (see ``bench.peers.celery_pipeline`` for why).
CELERY_WORKER = python(
    "-m", "celery", "-A", "bench.peers.celery_pipeline", "worker",
    "--pool", "prefork", "--concurrency", "16", "--loglevel", "WARNING", "--hostname", "bench@%h",
)  # fmt: skip
#: The Dramatiq command line of the plain pipeline and of the no-op, as the README runs ours.
DRAMATIQ_SHAPE = ("--processes", "2", "--threads", "8")
#: "A limit far above the load": the ``ratelimit-limit`` the fake answers in the per-email runs
#: (enforcing nothing), so the limiter paces at 90% of it and never binds.
FAR_ABOVE_THE_LOAD = 10_000


def this_project(emails: int, folder: Path) -> Drain:
    """The shipped processes, no pacing, a fake with no limit."""
    with fresh_run() as run, FakeResend(api_key="re_bench") as provider:
        env = shipped.default_environment(run.services, provider, EMAIL_RATE_LIMIT_PER_SECOND="0")
        return shipped_drain(run, env, provider, emails, folder)


def this_project_per_email(emails: int, folder: Path) -> Drain:
    """The shipped processes, one email per request (``EMAIL_PER_REQUEST=1``), the limiter on.

    Every setting at its default but ``EMAIL_PER_REQUEST``: the path of SMTP, attachments
    and ``scheduled_at``. The fake advertises a limit far above the load and enforces none,
    so every request takes its slot of the shared rate and none waits for one.
    """
    with fresh_run() as run, FakeResend(api_key="re_bench", advertised_limit=FAR_ABOVE_THE_LOAD) as provider:
        env = shipped.default_environment(run.services, provider, EMAIL_PER_REQUEST="1")
        return shipped_drain(run, env, provider, emails, folder)


def shipped_drain(run: Run, env: dict[str, str], provider: FakeResend, emails: int, folder: Path) -> Drain:
    """The shipped processes under ``env``: wait until they listen, insert ``emails``, time their delivery."""
    with shipped.fleet(env, folder) as fleet:
        wait_ticker_listening(folder)
        run.queues.wait_consumers("emails", 2)
        meter = CpuMeter([process.pid for process in fleet.processes.values()], run.database_url)
        insert_emails(run.database_url, emails)
        wait_deliveries(provider, emails)
        return finished(provider, meter)


def plain_peer(module: str, worker: list[str], consumers: int, emails: int, folder: Path) -> Drain:
    """A plain pipeline of ``bench.peers``: its workers, then the emails, then its fan-out."""
    with fresh_run() as run, FakeResend(api_key="re_bench") as provider:
        migrate.upgrade(run.database_url)
        env = shipped.default_environment(run.services, provider)
        with command(worker, env=env, log=folder / f"{module}.log") as process:
            run.queues.wait_consumers("emails", consumers)
            meter = CpuMeter([process.pid], run.database_url)
            insert_emails(run.database_url, emails)
            fanned = int(run_to_end(python("-m", f"bench.peers.{module}", "fan-out"), env=env).strip())
            assert fanned == emails, f"{module} fanned out {fanned} of {emails}"
            wait_deliveries(provider, emails)
            return finished(provider, meter)


def plain_celery(emails: int, folder: Path) -> Drain:
    return plain_peer("celery_pipeline", CELERY_WORKER, 1, emails, folder)


def plain_dramatiq(emails: int, folder: Path) -> Drain:
    worker = python("-m", "dramatiq", "bench.peers.dramatiq_pipeline", *DRAMATIQ_SHAPE)
    return plain_peer("dramatiq_pipeline", worker, 2, emails, folder)


def noop(messages: int, folder: Path) -> Drain:
    """Fill the queue, then time its drain from the first message taken to an empty queue.

    The queue is watched by passive declares (ready messages only): at the start the
    workers' prefetch (16 a process) leaves it at once, and at the end as many may
    still be in flight; the two roughly cancel, and are about 1% of 3,000.
    """
    with fresh_run() as run:
        env = {**os.environ, "BROKER_URL": run.broker_url}
        run_to_end(python("-m", "bench.peers.noop", "publish", str(messages)), env=env)
        worker = python("-m", "dramatiq", "bench.peers.noop", *DRAMATIQ_SHAPE)
        with command(worker, env=env, log=folder / "noop.log") as process:
            meter = CpuMeter([process.pid], run.database_url)
            deadline = time.monotonic() + DRAIN_TIMEOUT
            started = ended = None
            while ended is None:
                state = run.queues.state("noop")
                now = time.monotonic()
                ready = state[0] if state is not None else messages
                if started is None and ready < messages:
                    started = now
                if ready == 0:
                    ended = now
                if now > deadline:
                    raise RuntimeError(f"noop: {ready} of {messages} messages left after {DRAIN_TIMEOUT}s")
                time.sleep(0.002)
            cpu, _ = meter.per_email_ms(messages)
    assert started is not None
    return Drain(messages, ended - started, messages / (ended - started), cpu_ms=cpu)


# --- this project at the provider's limit, and its memory ----------------------------------------------


@dataclass(frozen=True)
class Limited:
    """Bulk emails through this project against a fake enforcing a rate: what got through, and how."""

    emails: int
    delivered: int
    seconds: float
    requests: int
    refused_429: int

    @property
    def per_second(self) -> float:
        return self.delivered / self.seconds if self.seconds > 0 else 0.0


def at_provider_limit(emails: int, folder: Path, *, limit: float, window: float) -> Limited:
    """``emails`` bulk emails inserted by SQL, every setting at its default, a fake enforcing ``limit``/s.

    Timed from the INSERT's commit to the last accepted request, or to the end of
    ``window`` seconds if they are not all sent by then.
    """
    with fresh_run() as run, FakeResend(api_key="re_bench", max_requests_per_second=limit) as provider:
        env = shipped.default_environment(run.services, provider)
        with shipped.fleet(env, folder):
            wait_ticker_listening(folder)
            run.queues.wait_consumers("emails_bulk", 2)
            insert_emails(run.database_url, emails, priority="bulk")
            started = time.monotonic()
            try:
                wait_deliveries(provider, emails, timeout=window)
                ended = max(r.arrived_at for r in provider.requests if r.status == 200)
            except RuntimeError:
                ended = time.monotonic()
            delivered = provider.delivery_count()
            requests = sum(1 for r in provider.requests if r.method == "POST")
            refused = provider.count_429()
            provider.stop()
    return Limited(emails, delivered, ended - started, requests, refused)


@dataclass(frozen=True)
class Memory:
    """Summed VmRSS (KiB) of the worker command's processes after so many emails."""

    processes: int
    samples: dict[int, int]


def worker_memory(checkpoints: list[int], folder: Path, *, settle: float = 1.0) -> Memory:
    """Real emails through this project (no pacing, a fake with no limit), RSS read at each checkpoint.

    The emails are inserted by SQL in one statement per checkpoint (up to it), sent
    like any other; RSS is read ``settle`` seconds after the checkpoint's last
    delivery, once the workers are idle. Checkpoint 0 is the idle, fresh worker.
    """
    with fresh_run() as run, FakeResend(api_key="re_bench") as provider:
        env = shipped.default_environment(run.services, provider, EMAIL_RATE_LIMIT_PER_SECOND="0")
        with shipped.fleet(env, folder) as fleet:
            wait_ticker_listening(folder)
            run.queues.wait_consumers("emails", 2)
            workers = children(fleet.processes["worker-0"].pid)
            samples = {}
            sent = 0
            for checkpoint in checkpoints:
                if checkpoint > sent:
                    insert_emails(run.database_url, checkpoint - sent, tag=f"memory{checkpoint}-")
                    wait_deliveries(provider, checkpoint, timeout=DRAIN_TIMEOUT * 3)
                    sent = checkpoint
                time.sleep(settle)
                samples[checkpoint] = sum(rss_kib(pid) for pid in workers)
            provider.stop()
    return Memory(processes=len(workers), samples=samples)
