"""Delivery events: the intake's rate through the real ``serve``, and the rates' query on a million emails.

1. Starts ``minalesh-workers serve`` (a fresh database and vhost) and posts ``--events`` signed
   Resend events (the ``svix`` package's signer, signed before the clock starts) from
   ``--clients`` threads, each on its own keep-alive connection; prints events/s, the
   answers by status and how many were stored (each ``svix-id`` once).
2. Fills ``--emails`` emails in one ``generate_series`` INSERT (90% sent over the last 30
   days, of which 2% bounced, 0.05% complained, the rest delivered), VACUUM ANALYZE, and
   prints ``EXPLAIN (ANALYZE, BUFFERS)`` of ``storage.delivery_events.rates_queries`` and the
   median of 20 runs of ``rates``.

    python -m bench.delivery_events [--events 2000] [--clients 50] [--emails 1000000]
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import tempfile
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import requests
from sqlalchemy import text
from sqlalchemy.dialects import postgresql
from svix.webhooks import Webhook

from bench.harness import services
from bench.harness.processes import running
from pipeline.providers.resend import WITH_DELIVERY_EVENTS
from storage import delivery_events, migrate
from storage.clock import utcnow
from storage.database import get_engine, get_sessionmaker

SECRET = "whsec_" + "YmVuY2gtc2VjcmV0LW9mLXRoZS1kZWxpdmVyeS1ldmVudHM="

FILL = """
INSERT INTO email_queue (recipient, subject, html, status, created_at, sent_at, updated_at, provider_message_id,
                         delivery_status)
SELECT 'user' || (i % 200000) || '@example.com', 'Order ' || i, '<p>hi</p>',
       CASE WHEN i % 100 < 90 THEN 'sent' ELSE 'failed' END,
       made, CASE WHEN i % 100 < 90 THEN made + interval '2 seconds' END, made + interval '2 seconds',
       CASE WHEN i % 100 < 90 THEN 're_' || i END,
       CASE WHEN i % 100 >= 90 THEN NULL WHEN i % 50 = 1 THEN 'bounced' WHEN i % 2000 = 2 THEN 'complained'
            ELSE 'delivered' END
  FROM (SELECT i, now() - (interval '30 days') * (1 - i::float / :n) AS made FROM generate_series(1, :n) AS i) AS r
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def signed_events(count: int) -> list[tuple[bytes, dict[str, str]]]:
    signer = Webhook(SECRET)
    prepared = []
    for n in range(count):
        body = json.dumps(
            {
                "type": "email.delivered" if n % 3 else "email.opened",
                "created_at": datetime.now(UTC).isoformat(),
                "data": {"email_id": f"re_{n % 500}", "to": [f"user{n}@example.com"], "subject": "Order"},
            }
        )
        msg_id, at = f"msg_{uuid.uuid4().hex}", datetime.now(UTC)
        headers = {
            "svix-id": msg_id,
            "svix-timestamp": str(int(at.timestamp())),
            "svix-signature": signer.sign(msg_id, at, body),
            "content-type": "application/json",
        }
        prepared.append((body.encode(), headers))
    return prepared


def intake_rate(run: services.RunServices, events: int, clients: int) -> None:
    env = {
        "PATH": "/usr/bin:/bin",
        "DATABASE_URL": run.database_url,
        "BROKER_URL": run.broker_url,
        "RESEND_WEBHOOK_SECRET": SECRET,
        "LOG_LEVEL": "WARNING",
    }
    port = free_port()
    base = f"http://127.0.0.1:{port}/api/email-events/resend"
    prepared = signed_events(events)
    with tempfile.TemporaryDirectory() as workdir:
        with running("serve", "--port", str(port), env=env, cwd=Path(workdir), log=Path(workdir) / "serve.log"):
            deadline = time.monotonic() + 30
            while True:
                try:
                    requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
                    break
                except requests.RequestException:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)

            def client(index: int) -> list[int]:
                with requests.Session() as http:
                    return [
                        http.post(base, data=b, headers=h, timeout=30).status_code for b, h in prepared[index::clients]
                    ]

            started = time.perf_counter()
            with ThreadPoolExecutor(max_workers=clients) as pool:
                codes = [code for batch in pool.map(client, range(clients)) for code in batch]
            elapsed = time.perf_counter() - started
    with get_sessionmaker(run.database_url)() as session:
        stored = session.execute(text("SELECT COUNT(*), COUNT(DISTINCT svix_id) FROM email_events")).one()
    print(f"Intake: {events} events from {clients} clients in {elapsed:.2f} s = {events / elapsed:.0f} events/s;")
    print(f"  answers {dict(Counter(codes))}; stored {stored[0]} rows, {stored[1]} distinct svix-ids.")


def rates_cost(run: services.RunServices, count: int) -> None:
    engine = get_engine(run.database_url)
    started = time.perf_counter()
    with engine.begin() as connection:
        connection.execute(text(FILL), {"n": count})
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text("VACUUM ANALYZE email_queue"))
    print(f"Filled {count:,} emails in {time.perf_counter() - started:.1f} s.")
    sessions = get_sessionmaker(run.database_url)
    with sessions() as session:
        for statement in delivery_events.rates_queries(utcnow(), providers=WITH_DELIVERY_EVENTS):
            sql = str(statement.compile(dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True}))
            plan = session.execute(text("EXPLAIN (ANALYZE, BUFFERS) " + sql)).scalars().all()
            print("\n".join(plan))
        spans = []
        for _ in range(20):
            begun = time.perf_counter()
            figures = delivery_events.rates(session, providers=WITH_DELIVERY_EVENTS)
            spans.append((time.perf_counter() - begun) * 1000)
    print(f"rates(): median {statistics.median(spans):.1f} ms of 20; {json.dumps(figures)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--emails", type=int, default=1_000_000)
    options = parser.parse_args()
    run = services.create()
    try:
        migrate.upgrade(run.database_url)
        intake_rate(run, options.events, options.clients)
        rates_cost(run, options.emails)
    finally:
        get_engine(run.database_url).dispose()
        services.destroy(run)


if __name__ == "__main__":
    main()
