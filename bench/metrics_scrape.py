"""How long a ``/metrics`` scrape takes on big tables: a million emails, and what goes with them.

Fills a database of its own (one INSERT … SELECT generate_series per table: 1,000,000
emails, 95% sent; 200,000 webhook events; 200,000 reservations; 50,000 dead letters),
VACUUM ANALYZE as autovacuum would, then times the first scrape (which counts the
settled rows too), the scrapes after it (every gauge: PostgreSQL, the dead-letter
queues' depths in RabbitMQ, the limiter's row; the settled counts from the cache of
``pipeline.web.metrics.Recounted``) and each storage query alone, and prints p50/p95/max.
5% of the emails are pending and due: a backlog of 50,000.

    python -m bench.metrics_scrape [--emails 1000000] [--scrapes 20]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import generate_latest
from sqlalchemy import text

from bench.harness import services
from bench.sending import percentile
from pipeline.bootstrap import bootstrap
from pipeline.core.settings import Settings
from pipeline.web.depths import QueueDepths
from pipeline.web.metrics import metrics_registry
from storage import gauges, migrate
from storage.clock import utcnow
from storage.database import get_engine

#: Each table's rows, as shares of the emails.
FILL = (
    """INSERT INTO email_queue (recipient, subject, html, status, priority, scheduled_at, sent_at)
       SELECT 'user' || n || '@example.com', 'Order ' || n, '<p>hi</p>',
              CASE WHEN n % 20 = 0 THEN 'pending' WHEN n % 97 = 0 THEN 'failed' ELSE 'sent' END,
              CASE WHEN n % 3 = 0 THEN 'bulk' ELSE 'transactional' END,
              now() - (n % 1000) * interval '1 minute', now()
         FROM generate_series(1, :emails) AS n""",
    """INSERT INTO webhook_events (provider, event_id, type, order_id, payload, status, archived)
       SELECT 'generic', 'evt-' || n, 'payment.succeeded', 'MN-' || n, '{}'::jsonb,
              CASE WHEN n % 50 = 0 THEN 'failed' ELSE 'processed' END, n % 500 = 0
         FROM generate_series(1, :emails / 5) AS n""",
    """INSERT INTO products (sku, name, stock) VALUES ('bench', 'Bench', 1000000)""",
    """INSERT INTO inventory_reservations (product_id, order_id, quantity, status, expires_at)
       SELECT (SELECT min(id) FROM products), 'MN-' || n, 1,
              CASE WHEN n % 10 = 0 THEN 'active' ELSE 'committed' END, now() + (n % 30 - 15) * interval '1 minute'
         FROM generate_series(1, :emails / 5) AS n""",
    """INSERT INTO dead_letters (message_id, queue, actor, error)
       SELECT 'msg-' || n, CASE WHEN n % 4 = 0 THEN 'webhooks.XQ' ELSE 'emails.XQ' END,
              CASE WHEN n % 4 = 0 THEN 'process_webhook_event' ELSE 'send_email' END, 'TransientError: bench'
         FROM generate_series(1, :emails / 20) AS n""",
)


def timed(work: Callable[[], Any], times: int) -> list[float]:
    durations = []
    for _ in range(times):
        started = time.perf_counter()
        work()
        durations.append(time.perf_counter() - started)
    return durations


def summary(durations: list[float]) -> str:
    p50, p95 = statistics.median(durations), percentile(durations, 0.95)
    return f"p50 {p50 * 1000:7.1f} ms   p95 {p95 * 1000:7.1f} ms   max {max(durations) * 1000:7.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--emails", type=int, default=1_000_000)
    parser.add_argument("--scrapes", type=int, default=20)
    options = parser.parse_args()
    created = services.create()
    try:
        migrate.upgrade(created.database_url)
        engine = get_engine(created.database_url)
        started = time.perf_counter()
        with engine.begin() as connection:
            for statement in FILL:
                connection.execute(text(statement), {"emails": options.emails})
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.execute(text("VACUUM ANALYZE"))
        print(f"filled {options.emails:,} emails and the rest in {time.perf_counter() - started:.1f} s")
        settings = Settings.from_env({"DATABASE_URL": created.database_url, "BROKER_URL": created.broker_url})
        current = bootstrap(settings)
        for actor in current.broker.actors.values():
            current.broker.declare_queue(actor.queue_name, ensure=True)
        registry = metrics_registry(current, QueueDepths(current.broker))
        started = time.perf_counter()
        exposition = generate_latest(registry).decode()
        print(f"first scrape (settled rows counted too): {(time.perf_counter() - started) * 1000:.1f} ms")
        assert 'minalesh_up{source="postgres"} 1.0' in exposition, exposition
        scrapes = timed(lambda: generate_latest(registry), options.scrapes)
        print(f"whole scrape ({len(exposition.splitlines())} lines): {summary(scrapes)}")
        with current.sessions() as session:
            queries: dict[str, Callable[[], Any]] = {
                "emails unsent (every scrape)": lambda: gauges.emails_by_status_and_priority(session, gauges.UNSENT),
                "emails settled (recounted)": lambda: gauges.emails_by_status_and_priority(session, gauges.SETTLED),
                "oldest due email": lambda: gauges.oldest_due_email_since(session, now=utcnow()),
                "events open (every scrape)": lambda: gauges.webhook_events_by_status(session, settled=False),
                "events settled (recounted)": lambda: gauges.webhook_events_by_status(session, settled=True),
                "reservations": lambda: gauges.reservations(session, now=utcnow()),
                "dead letters": lambda: gauges.dead_letters_by_queue_and_actor(session),
            }
            for name, query in queries.items():
                print(f"  {name:28s} {summary(timed(query, options.scrapes))}")
        current.broker.close()
        engine.dispose()
    finally:
        services.destroy(created)


if __name__ == "__main__":
    main()
