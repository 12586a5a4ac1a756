"""The ops API's latency on a million emails: lists, search, a deep page, stats, activity, dead-letter search.

Fills a fresh database (and vhost) with 1,000,000 emails in one ``generate_series``
INSERT, then VACUUM ANALYZE (90% sent over the last 30 days, the last hour busy; 4% failed, 3% pending,
3% retrying; a fifth bulk; 200,000 recipients of 5 emails each), and 100,000 dead letters
(``send_email`` of every tenth email, a third refused by the provider, the rest 503s), serves the real
app (``pipeline.web.app``) under uvicorn in this process, and prints the median and
p95 of each request over HTTP, after a warm-up.

    python -m bench.ops_api [--emails 1000000] [--dead-letters 100000] [--samples 50]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from collections.abc import Callable

import requests
from sqlalchemy import text

from bench.harness import services
from bench.harness.serving import serving
from pipeline.bootstrap import bootstrap
from pipeline.core.settings import Settings
from pipeline.web.app import server_config
from storage import migrate
from storage.database import get_engine, get_sessionmaker

TOKEN = "bench-cron-secret-0123456789abcdefghij"
WARM_UP = 5

#: One INSERT of ``:n`` emails; ids ascend with ``created_at``, as a live table's do.
FILL = """
INSERT INTO email_queue (recipient, subject, html, status, priority, retry_count, attempts, created_at,
                         sent_at, updated_at, last_error, scheduled_at)
SELECT 'user' || (i % 200000) || '@example' || (i % 50) || '.com',
       'Order MN-' || i || ' confirmed', '<p>Thank you</p>',
       CASE WHEN i % 100 < 90 THEN 'sent' WHEN i % 100 < 94 THEN 'failed'
            WHEN i % 100 < 97 THEN 'pending' ELSE 'retrying' END,
       CASE WHEN i % 5 = 0 THEN 'bulk' ELSE 'transactional' END,
       CASE WHEN i % 100 >= 90 THEN 3 ELSE 0 END,
       CASE WHEN i % 100 >= 90 THEN 4 ELSE 1 END,
       made, CASE WHEN i % 100 < 90 THEN made + interval '2 seconds' END, made + interval '2 seconds',
       CASE WHEN i % 100 BETWEEN 90 AND 93 THEN 'PermanentError: 422 validation_error' END,
       CASE WHEN i % 100 BETWEEN 94 AND 96 THEN made + interval '1 day' END
  FROM (SELECT i, now() - (interval '30 days') * (1 - i::float / :n) AS made
          FROM generate_series(1, :n) AS i) AS rows
"""


#: One INSERT of ``:n`` dead letters of ``send_email``, the emails ``lowest + 10 j + 4`` (recipients ``user…5``).
FILL_DEAD_LETTERS = """
INSERT INTO dead_letters (message_id, queue, actor, args, kwargs, options, error, retries, dead_at, archived_at)
SELECT 'bench-' || j, 'emails.XQ', 'send_email', jsonb_build_array(:lowest + 10 * j + 4), '{}', '{}',
       CASE WHEN j % 3 = 0 THEN 'PermanentError: Resend 422 validation_error: Invalid `to` field.'
            ELSE 'TransientError: Resend 503 service_unavailable, attempt 4 of email ' || (:lowest + 10 * j + 4) END,
       3, now() - (interval '30 days') * (1 - j::float / :n), now()
  FROM generate_series(0, :n - 1) AS j
"""


def fill(database_url: str, count: int, dead: int) -> float:
    """Insert ``count`` emails and ``dead`` dead letters and VACUUM ANALYZE them (the state autovacuum keeps a
    live table in); return the seconds it took."""
    started = time.perf_counter()
    engine = get_engine(database_url)
    with engine.begin() as connection:
        connection.execute(text(FILL), {"n": count})
        lowest = connection.execute(text("SELECT min(id) FROM email_queue")).scalar_one()
        connection.execute(text(FILL_DEAD_LETTERS), {"n": dead, "lowest": lowest})
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text("VACUUM ANALYZE email_queue"))
        connection.execute(text("VACUUM ANALYZE dead_letters"))
    return time.perf_counter() - started


def timed(get: Callable[[], requests.Response], samples: int) -> tuple[float, float]:
    """Median and p95 in ms of ``samples`` calls of ``get``, after a warm-up."""
    for _ in range(WARM_UP):
        get().raise_for_status()
    spans = []
    for _ in range(samples):
        started = time.perf_counter()
        get().raise_for_status()
        spans.append((time.perf_counter() - started) * 1000)
    spans.sort()
    return statistics.median(spans), spans[max(int(len(spans) * 0.95) - 1, 0)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--emails", type=int, default=1_000_000)
    parser.add_argument("--dead-letters", type=int, default=100_000)
    parser.add_argument("--samples", type=int, default=50)
    options = parser.parse_args()
    run = services.create()
    try:
        migrate.upgrade(run.database_url)
        took = fill(run.database_url, options.emails, options.dead_letters)
        print(f"Filled {options.emails:,} emails and {options.dead_letters:,} dead letters in {took:.1f} s.")
        settings = dataclasses.replace(
            Settings.from_env({"DATABASE_URL": run.database_url, "BROKER_URL": run.broker_url, "LOG_LEVEL": "WARNING"}),
            cron_secret=TOKEN,
        )
        current = bootstrap(settings)
        with get_sessionmaker(run.database_url)() as session:
            lowest = int(session.execute(text("SELECT min(id) FROM email_queue")).scalar_one())
        with serving(server_config(current, host="127.0.0.1", port=0)) as base:
            http = requests.Session()
            http.headers["Authorization"] = f"Bearer {TOKEN}"
            routes = {
                "emails, first page (50)": "/api/ops/emails?limit=50",
                "emails, status=failed": "/api/ops/emails?status=failed&limit=50",
                "emails, pending bulk": "/api/ops/emails?status=pending&priority=bulk&limit=50",
                "emails, recipient (exact)": "/api/ops/emails?q=USER12345@example45.com",
                "emails, recipient prefix": "/api/ops/emails?q=user1234&limit=50",
                "emails, deep cursor page": f"/api/ops/emails?limit=50&cursor={lowest + 1000}",
                "dead letters, first page": "/api/ops/dead-letters?limit=50",
                "dead letters, q=recipient": "/api/ops/dead-letters?q=USER12345@example45.com",
                "dead letters, q=prefix": "/api/ops/dead-letters?q=user1234&limit=50",
                "dead letters, q=error text": "/api/ops/dead-letters?q=validation_error&limit=50",
                "dead letters, q=message id": "/api/ops/dead-letters?q=bench-54321",
                "dead letters, q=no match": "/api/ops/dead-letters?q=nobody@nowhere.example",
                "stats": "/api/ops/stats",
                "activity, 60 minutes": "/api/ops/activity?minutes=60",
            }
            print(f"{'request':<28}{'p50 ms':>10}{'p95 ms':>10}   ({options.samples} samples each, HTTP, one client)")
            for name, path in routes.items():
                median, p95 = timed(lambda path=path: http.get(base + path, timeout=60), options.samples)
                print(f"{name:<28}{median:>10.1f}{p95:>10.1f}")
        current.broker.close()
    finally:
        get_engine(run.database_url).dispose()
        services.destroy(run)


if __name__ == "__main__":
    main()
