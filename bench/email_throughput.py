"""Email pipeline figures on this machine's real RabbitMQ and PostgreSQL.

Prints medians over several runs, each on the same fresh database and vhost:
- claim: one fan-out statement claiming a batch of 500 of 10,000 due emails;
- end-to-end: emails per second through an 8-thread worker to a fake Resend
  that answers at once (what our side costs);
- at Resend's limit: a fake that refuses over 2 requests/second, and our shared
  limiter at its default: the rate achieved and how many 429s it took (goal: none).

Run with `make bench`.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from datetime import timedelta

from dramatiq import Worker
from sqlalchemy import text

from actors.fan_out import enqueue_due_emails
from bench import runs
from bench.harness.fake_resend import FakeResend
from pipeline.bootstrap import bootstrap
from pipeline.core.settings import DEFAULT_EMAIL_RATE_LIMIT
from pipeline.providers.resend import ResendMailer
from storage import emails, leases

RUNS = 5
CLAIM_ROWS = 10_000
END_TO_END_EMAILS = 500
LIMITED_EMAILS = 20


def insert_emails(runtime, count: int, tag: str) -> None:  # type: ignore[no-untyped-def]
    with runtime.sessions.begin() as session:
        session.execute(
            text(
                "INSERT INTO email_queue (recipient, subject, html) "
                "SELECT :tag || n || '@example.com', 'Bench', '<p>bench</p>' FROM generate_series(1, :count) AS n"
            ),
            {"tag": tag, "count": count},
        )


def pending(runtime) -> int:  # type: ignore[no-untyped-def]
    with runtime.sessions() as session:
        return int(session.scalar(text("SELECT COUNT(*) FROM email_queue WHERE status <> 'sent'")) or 0)


def wait_all_sent(runtime, deadline_seconds: float) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + deadline_seconds
    while pending(runtime):
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: {pending(runtime)} emails not sent after {deadline_seconds}s")
        time.sleep(0.05)


def bench_claim(runtime) -> list[float]:  # type: ignore[no-untyped-def]
    timings = []
    for run in range(RUNS):
        insert_emails(runtime, CLAIM_ROWS, f"claim{run}-")
        started = time.perf_counter()
        with runtime.sessions.begin() as session:
            claimed = leases.claim_due(emails.TABLE, session, lease=timedelta(minutes=5), limit=500)
        timings.append(time.perf_counter() - started)
        assert len(claimed) == 500
        with runtime.sessions.begin() as session:
            session.execute(text("UPDATE email_queue SET status = 'sent'"))
    return timings


def bench_end_to_end(runtime, fake: FakeResend) -> list[float]:  # type: ignore[no-untyped-def]
    rates = []
    for run in range(RUNS):
        insert_emails(runtime, END_TO_END_EMAILS, f"e2e{run}-")
        started = time.perf_counter()
        enqueue_due_emails()
        wait_all_sent(runtime, 120)
        rates.append(END_TO_END_EMAILS / (time.perf_counter() - started))
    assert fake.delivery_count() == RUNS * END_TO_END_EMAILS
    return rates


def bench_at_provider_limit(runtime, fake: FakeResend) -> tuple[float, int]:  # type: ignore[no-untyped-def]
    # The fake's one-second window still holds the end-to-end part's requests: let it empty,
    # or the first requests here are refused for traffic that was not theirs.
    time.sleep(1.1)
    fake.max_requests_per_second = 2
    refused_before = sum(1 for request in fake.requests if request.status == 429)
    insert_emails(runtime, LIMITED_EMAILS, "limited-")
    started = time.perf_counter()
    enqueue_due_emails()
    wait_all_sent(runtime, 120)
    elapsed = time.perf_counter() - started
    refused = sum(1 for request in fake.requests if request.status == 429) - refused_before
    return LIMITED_EMAILS / elapsed, refused


def main() -> None:
    # No pacing: the fake advertises 2/s, which a limiter follows.
    with FakeResend() as fake, runs.in_process(fake, email_rate_limit_per_second=0, log_level="WARNING") as (
        _,
        settings,
    ):
        runtime = bootstrap(settings, mailer=ResendMailer(api_key=fake.api_key, api_url=fake.url))
        worker = Worker(runtime.broker, worker_threads=8)
        worker.start()
        try:
            claim = bench_claim(runtime)
            rates = bench_end_to_end(runtime, fake)
            limited = dataclasses.replace(settings, email_rate_limit_per_second=DEFAULT_EMAIL_RATE_LIMIT)
            runtime = bootstrap(limited, mailer=runtime.mailer)
            limited_rate, refused = bench_at_provider_limit(runtime, fake)
        finally:
            worker.stop()
            runtime.broker.close()
    print(f"claim 500 of {CLAIM_ROWS:,} due (median of {RUNS}): {statistics.median(claim) * 1000:.1f} ms")
    print(
        f"end-to-end, {END_TO_END_EMAILS} emails, 8 threads (median of {RUNS}): "
        f"{statistics.median(rates):.0f} emails/s (min {min(rates):.0f}, max {max(rates):.0f})"
    )
    print(
        f"fake Resend refusing over 2 req/s, our limiter at {DEFAULT_EMAIL_RATE_LIMIT}/s: "
        f"{limited_rate:.2f} emails/s over {LIMITED_EMAILS} emails, {refused} refused with 429"
    )


if __name__ == "__main__":
    main()
