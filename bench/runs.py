"""What every benchmark run of real processes needs: services of its own, processes, timing.

A run gets a fresh database and RabbitMQ vhost (``bench.harness.services``) and a
watch on both: this machine's RabbitMQ and PostgreSQL are shared with other work,
which may restart them, and a drain that lived through a restart measured the
restart. The watch holds one AMQP connection (also used for passive declares) and
notes PostgreSQL's start time; if either broke during the run, the run raises
``Disturbed`` and the caller runs it again.
"""

from __future__ import annotations

import dataclasses
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pika
import pika.exceptions
import psycopg2
import pytest

from bench.harness import services
from bench.harness.fake_resend import FakeResend
from pipeline.core.settings import Settings
from storage import migrate
from storage.database import get_engine

#: The repository root: the peers are imported from here (``bench`` is not installed).
ROOT = Path(__file__).resolve().parent.parent
#: Longest a drain may take before the run is called failed (seconds).
DRAIN_TIMEOUT = 300.0
#: Longest processes may take to start consuming (seconds).
START_TIMEOUT = 60.0
#: How often waits look again (seconds).
POLL_SECONDS = 0.01


class Disturbed(RuntimeError):
    """RabbitMQ or PostgreSQL restarted during the run (another user of this machine): measure again."""


@dataclass(frozen=True)
class Drain:
    """One timed drain: ``count`` items sent, ``seconds`` timed, at ``per_second``; CPU ms per item
    of the contender's own processes and of its PostgreSQL backends, when measured."""

    count: int
    seconds: float
    per_second: float
    cpu_ms: float | None = None
    postgres_ms: float | None = None


# --- processes ------------------------------------------------------------------------------------------


def python(*args: str) -> list[str]:
    return [sys.executable, *args]


@contextmanager
def command(argv: list[str], *, env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A long-running process (a session of its own), stopped cleanly at the end of the block."""
    with log.open("wb") as output:
        process = subprocess.Popen(
            argv, env=env, cwd=ROOT, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            yield process
        finally:
            stop_cleanly(process)


def stop_cleanly(process: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """SIGTERM to the main process only (Dramatiq and Celery stop their children); kill if stuck."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def run_to_end(argv: list[str], *, env: dict[str, str], timeout: float = 120.0) -> str:
    done = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {done.stderr[-2000:]}")
    return done.stdout


def children(pid: int) -> list[int]:
    """The direct children of ``pid`` (the worker processes a ``dramatiq`` command forked)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid …: comm may hold spaces, so split after its closing parenthesis.
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return sorted(found)


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            parents.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(parents.get(current, []))
    return found


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int) -> int:
    """VmRSS of ``pid`` in KiB, from ``/proc/<pid>/status``."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


# --- services and the watch on them ---------------------------------------------------------------------


class Queues:
    """Passive declares on one AMQP connection: a queue's ready messages and consumers, untouched."""

    def __init__(self, broker_url: str) -> None:
        parameters = pika.URLParameters(broker_url)
        parameters.heartbeat = 0  # polled now and then: no heartbeat to miss while a drain goes on
        self.connection = pika.BlockingConnection(parameters)
        self.channel = self.connection.channel()

    def state(self, queue: str) -> tuple[int, int] | None:
        """(ready messages, consumers), or None while the queue is not declared yet."""
        try:
            declared = self.channel.queue_declare(queue, passive=True)
        except pika.exceptions.ChannelClosedByBroker:
            self.channel = self.connection.channel()
            return None
        return declared.method.message_count, declared.method.consumer_count

    def wait_consumers(self, queue: str, count: int, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while True:
            state = self.state(queue)
            if state is not None and state[1] >= count:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{queue}: {count} consumers expected within {timeout}s, saw {state}")
            time.sleep(0.05)

    def intact(self) -> bool:
        """Whether the connection lived through the run (a broker restart closes it)."""
        try:
            self.connection.process_data_events(time_limit=0)
        except pika.exceptions.AMQPError:
            return False
        return self.connection.is_open

    def close(self) -> None:
        try:
            self.connection.close()
        except pika.exceptions.AMQPError:
            pass


def postgres_started() -> object:
    connection = psycopg2.connect(services.POSTGRES_ADMIN_URL)
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_postmaster_start_time()")
            return cursor.fetchone()[0]
    finally:
        connection.close()


def create_services(tries: int = 3) -> services.RunServices:
    """A database and vhost of their own; ``rabbitmqctl`` on a machine shared with other runs
    sometimes fails a step, so a failed creation (cleaned up by ``create``) is tried again."""
    for attempt in range(1, tries + 1):
        try:
            return services.create()
        except (Exception, pytest.skip.Exception) as exc:  # services.create skips outside CI
            if attempt == tries:
                raise RuntimeError(f"could not create a database and vhost: {exc}") from None
            time.sleep(1.0)
    raise AssertionError("unreachable")


@contextmanager
def in_process(fake: FakeResend, **overrides: Any) -> Iterator[tuple[services.RunServices, Settings]]:
    """A migrated database and a vhost of their own, and settings that send to ``fake``; dropped after.

    For the benchmarks that run the pipeline inside their own process (``bootstrap`` and a
    Dramatiq ``Worker``) rather than as the shipped processes (``fresh_run``).
    """
    created = services.create()
    try:
        migrate.upgrade(created.database_url)
        yield created, dataclasses.replace(
            Settings.from_env({}),
            database_url=created.database_url,
            broker_url=created.broker_url,
            resend_api_key=fake.api_key,
            resend_api_url=fake.url,
            **overrides,
        )
    finally:
        get_engine(created.database_url).dispose()
        services.destroy(created)


@dataclass(frozen=True)
class Run:
    services: services.RunServices
    queues: Queues

    @property
    def database_url(self) -> str:
        return self.services.database_url

    @property
    def broker_url(self) -> str:
        return self.services.broker_url


@contextmanager
def fresh_run() -> Iterator[Run]:
    """Services of its own, watched; ``Disturbed`` if RabbitMQ or PostgreSQL restarted meanwhile."""
    created = create_services()
    queues: Queues | None = None
    try:
        postgres_since = postgres_started()
        queues = Queues(created.broker_url)
        failure: BaseException | None = None
        try:
            yield Run(created, queues)
        except Exception as exc:
            failure = exc
        broker_ok = queues.intact()
        try:
            postgres_ok = postgres_started() == postgres_since
        except psycopg2.Error:
            postgres_ok = False
        if not (broker_ok and postgres_ok):
            which = " and ".join(n for n, ok in (("RabbitMQ", broker_ok), ("PostgreSQL", postgres_ok)) if not ok)
            raise Disturbed(f"{which} restarted during the run") from failure
        if failure is not None:
            raise failure
    finally:
        if queues is not None:
            queues.close()
        get_engine(created.database_url).dispose()
        services.destroy(created)


def insert_emails(database_url: str, count: int, *, priority: str = "transactional", tag: str = "bench") -> None:
    """One INSERT of ``count`` due emails, as a host's SQL would queue them."""
    connection = psycopg2.connect(database_url)
    try:
        with connection, connection.cursor() as cursor:
            cursor.execute(
                "INSERT INTO email_queue (recipient, subject, html, priority) "
                "SELECT %s || n || '@example.com', 'Bench ' || n, '<p>Hello, this is a bench email.</p>', %s "
                "FROM generate_series(1, %s) AS n",
                (tag, priority, count),
            )
    finally:
        connection.close()


def backends(database_url: str) -> list[int]:
    """The PostgreSQL server processes serving ``database_url``'s database now."""
    connection = psycopg2.connect(database_url)
    try:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            return [row[0] for row in cursor.fetchall()]
    finally:
        connection.close()


class CpuMeter:
    """CPU seconds spent during a drain by the contender's processes and by its PostgreSQL backends.

    ``roots`` are the long-running commands (their children included, read at each
    reading); commands that run to an end meanwhile (a fan-out) are counted through
    ``resource.getrusage(RUSAGE_CHILDREN)`` once they have been waited for.
    """

    def __init__(self, roots: list[int], database_url: str) -> None:
        self.roots = roots
        self.database_url = database_url
        self.before = self._read()

    def _read(self) -> tuple[float, float, dict[int, float]]:
        processes = sum(cpu_seconds(pid) for root in self.roots for pid in descendants(root))
        reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
        postgres = {pid: cpu_seconds(pid) for pid in backends(self.database_url)}
        return processes, reaped.ru_utime + reaped.ru_stime, postgres

    def per_email_ms(self, emails: int) -> tuple[float, float]:
        """(the contender's processes, PostgreSQL) in CPU milliseconds per email since the start."""
        processes, reaped, postgres = self._read()
        before_processes, before_reaped, before_postgres = self.before
        ours = (processes - before_processes) + (reaped - before_reaped)
        database = sum(seconds - before_postgres.get(pid, 0.0) for pid, seconds in postgres.items())
        return ours * 1000.0 / emails, database * 1000.0 / emails


# --- timing at the fake ---------------------------------------------------------------------------------


def wait_deliveries(provider: FakeResend, count: int, timeout: float = DRAIN_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while provider.delivery_count() < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{provider.delivery_count()} of {count} emails delivered after {timeout}s")
        time.sleep(POLL_SECONDS)


def accepted_span(provider: FakeResend) -> Drain:
    """Emails of accepted sends, from the first request's arrival at the fake to the last one's.

    The first request starts the clock, so its emails (one, or a batch's) are not
    counted in the rate: the others arrived within the span.
    """
    accepted = sorted(
        (r.arrived_at, len(r.body) if r.path.startswith("/emails/batch") else 1)
        for r in provider.requests
        if r.method == "POST" and r.status == 200
    )
    emails = sum(count for _, count in accepted)
    span = accepted[-1][0] - accepted[0][0]
    return Drain(count=emails, seconds=span, per_second=(emails - accepted[0][1]) / span)


def finished(provider: FakeResend, meter: CpuMeter | None = None) -> Drain:
    """The drain's figures; the fake stops first, so the workers' kept-alive connections close quietly."""
    drain = accepted_span(provider)
    if meter is not None:
        cpu, postgres = meter.per_email_ms(drain.count)
        drain = dataclasses.replace(drain, cpu_ms=cpu, postgres_ms=postgres)
    provider.stop()
    return drain


def wait_ticker_listening(folder: Path, timeout: float = START_TIMEOUT) -> None:
    """The shipped ticker's wake-up LISTENs: an INSERT from now on is fanned out at once."""
    deadline = time.monotonic() + timeout
    while "listening" not in (folder / "ticker.log").read_text(errors="replace"):
        if time.monotonic() > deadline:
            raise RuntimeError("the ticker's wake-up did not start listening")
        time.sleep(0.05)
