"""What one email costs on the per-email path, counted: transactions, statements, pings, publishes,
log lines, row versions and index entries.

This process is bootstrapped as a worker (``Worker`` with 8 threads, in process) on a fresh
database and vhost, every setting at its default but ``EMAIL_PER_REQUEST=1``, against a fake
Resend advertising a limit far above the load (the limiter on, never binding). ``--emails``
emails are inserted in one SQL statement and fanned out as the ticker's wake-up does
(``enqueue_due_emails`` until nothing is left); once the fake has them all, every count is
divided by the number of emails:

* round trips to PostgreSQL by kind (SQLAlchemy's engine events; the pool's pre-ping ``SELECT 1``
  and psycopg2's implicit ``BEGIN`` do not pass through them and are counted apart);
* broker publishes (``Broker.enqueue``) and log lines (records at the configured level);
* from ``pg_stat_user_tables`` (read after every connection closed, so every backend flushed its
  counters): rows inserted, updated, and how many updates were HOT; the index entries written
  follow (an insert and a non-HOT update write one entry in every index of the table whose
  predicate, if it is partial, the new version meets).

The Python time by stage comes from ``bench.profile_drain --per-email`` (py-spy).

    python -m bench.per_email_costs [--emails 1000]
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import re
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg2
from dramatiq import Worker
from sqlalchemy import event

from actors.fan_out import enqueue_due_emails
from bench import contenders, runs
from bench.harness.fake_resend import FakeResend
from pipeline.bootstrap import bootstrap
from pipeline.providers.resend import ResendMailer
from storage.database import get_engine

#: The tables whose row versions and index entries are counted.
TABLES = ("email_queue", "rate_limit_slots", "sending_pauses")
_WORDS = re.compile(r"\s+")


def kind(statement: str) -> str:
    """A statement's first keyword and the table it names first: ``UPDATE email_queue``."""
    text = _WORDS.sub(" ", statement.strip())
    verb = text.split(" ", 1)[0].upper()
    if verb == "WITH":
        found = re.search(r"\)\s*(UPDATE|INSERT INTO|DELETE FROM)\s+(\w+)", text, re.IGNORECASE)
        return f"WITH … {found.group(1).upper()} {found.group(2)}" if found else "WITH …"
    found = re.search(r"\b(?:FROM|UPDATE|INTO)\s+(\w+)", text, re.IGNORECASE)
    return f"{verb} {found.group(1)}" if found else verb


@dataclasses.dataclass
class Counts:
    statements: Counter[str] = dataclasses.field(default_factory=Counter)
    events: Counter[str] = dataclasses.field(default_factory=Counter)
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)

    def add(self, what: str, *, statement: bool = False) -> None:
        with self.lock:
            (self.statements if statement else self.events)[what] += 1


class LogCounter(logging.Handler):
    def __init__(self, counts: Counts) -> None:
        super().__init__(logging.DEBUG)
        self.counts = counts

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.getLogger().getEffectiveLevel():
            self.counts.add(f"log line ({record.name})")


@contextmanager
def counting(database_url: str, broker: Any, counts: Counts) -> Iterator[None]:
    engine = get_engine(database_url)
    dialect = engine.dialect
    original_ping, original_enqueue = dialect.do_ping, broker.enqueue

    def ping(dbapi_connection: Any) -> bool:
        counts.add("pool pre-ping SELECT 1 (round trip)")
        return bool(original_ping(dbapi_connection))

    def enqueue(message: Any, **options: Any) -> Any:
        counts.add(f"broker publish ({message.actor_name})")
        return original_enqueue(message, **options)

    def executed(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        counts.add(kind(statement), statement=True)

    def autocommit(conn: Any) -> bool:
        return bool(conn.get_execution_options().get("isolation_level") == "AUTOCOMMIT")

    def begun(conn: Any) -> None:
        if autocommit(conn):
            counts.add("block statement by statement (AUTOCOMMIT: no BEGIN, no COMMIT round trip)")
        else:
            counts.add("transaction (BEGIN round trip)")

    def committed(conn: Any) -> None:
        if not autocommit(conn):
            counts.add("COMMIT (round trip, WAL flush if it wrote)")

    def rolled_back(_conn: Any) -> None:
        counts.add("ROLLBACK (round trip)")

    handler = LogCounter(counts)
    listeners = (
        ("before_cursor_execute", executed),
        ("begin", begun),
        ("commit", committed),
        ("rollback", rolled_back),
    )
    dialect.do_ping = ping  # type: ignore[method-assign]
    broker.enqueue = enqueue
    for name, listener in listeners:
        event.listen(engine, name, listener)
    logging.getLogger().addHandler(handler)
    try:
        yield
    finally:
        logging.getLogger().removeHandler(handler)
        for name, listener in listeners:
            event.remove(engine, name, listener)
        dialect.do_ping = original_ping  # type: ignore[method-assign]
        broker.enqueue = original_enqueue


def table_counters(database_url: str) -> dict[str, dict[str, int]]:
    """Per table: rows inserted, updated, HOT-updated, and its number of indexes."""
    connection = psycopg2.connect(database_url)
    try:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT relname, n_tup_ins, n_tup_upd, n_tup_hot_upd, "
                "(SELECT count(*) FROM pg_index WHERE indrelid = relid), "
                "(SELECT count(*) FROM pg_index WHERE indrelid = relid AND indpred IS NOT NULL) "
                "FROM pg_stat_user_tables WHERE relname = ANY(%s)",
                (list(TABLES),),
            )
            return {
                name: {"inserted": ins, "updated": upd, "hot": hot, "indexes": indexes, "partial": partial}
                for name, ins, upd, hot, indexes, partial in cursor.fetchall()
            }
    finally:
        connection.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--emails", type=int, default=1000)
    options = parser.parse_args()
    fake_resend = FakeResend(api_key="re_bench", advertised_limit=contenders.FAR_ABOVE_THE_LOAD)
    with fake_resend as fake, runs.in_process(fake, email_per_request=1) as (created, settings):
        logging.basicConfig(level=logging.INFO, filename="/dev/null")
        runtime = bootstrap(settings, mailer=ResendMailer(api_key=fake.api_key, api_url=fake.url))
        for actor in runtime.broker.actors.values():
            runtime.broker.declare_queue(actor.queue_name, ensure=True)
        worker = Worker(runtime.broker, worker_threads=8)
        worker.start()
        try:
            # Warm: the limiter's row, each connection, the provider's limit recorded.
            runs.insert_emails(created.database_url, 20, tag="warm")
            enqueue_due_emails()
            runs.wait_deliveries(fake, 20)
            time.sleep(0.5)
            get_engine(created.database_url).dispose()
            time.sleep(1.0)
            before = table_counters(created.database_url)
            counts = Counts()
            with counting(created.database_url, runtime.broker, counts):
                started = time.monotonic()
                runs.insert_emails(created.database_url, options.emails, tag="count")
                while enqueue_due_emails():
                    pass
                runs.wait_deliveries(fake, 20 + options.emails)
                elapsed = time.monotonic() - started
                time.sleep(0.5)  # the last mark_sent commits after the provider's answer
        finally:
            worker.stop()
            runtime.broker.close()
        get_engine(created.database_url).dispose()
        time.sleep(1.0)
        after = table_counters(created.database_url)
    report(options.emails, elapsed, counts, before, after)


def report(
    emails: int, elapsed: float, counts: Counts, before: dict[str, dict[str, int]], after: dict[str, dict[str, int]]
) -> None:
    """Print the per-email costs counted over ``emails`` emails."""
    print(f"{emails} emails, one per request, limiter on; {elapsed:.1f}s in process (8 threads)")
    print("\nper email, round trips and events:")
    for what, count in sorted(counts.events.items(), key=lambda item: -item[1]):
        print(f"  {count / emails:6.2f}  {what}")
    print("per email, statements (engine events):")
    for what, count in sorted(counts.statements.items(), key=lambda item: -item[1]):
        print(f"  {count / emails:6.2f}  {what}")
    print("per email, rows and index entries written:")
    for table in TABLES:
        b, a = before.get(table), after.get(table)
        if a is None or b is None:
            continue
        inserted, updated = a["inserted"] - b["inserted"], a["updated"] - b["updated"]
        hot = a["hot"] - b["hot"]
        versions = inserted + updated - hot
        print(
            f"  {table}: {inserted / emails:.2f} inserted, {updated / emails:.2f} updated "
            f"({hot / emails:.2f} HOT): {versions / emails:.2f} row versions into {a['indexes']} indexes "
            f"({a['partial']} partial, which take an entry only for the versions they cover)"
        )


if __name__ == "__main__":
    main()
