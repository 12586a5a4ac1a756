"""Acceptance: sending at the provider's limit, in the shape we ship.

``worker --processes 2 --threads 8``, the ticker and the archiver, every setting at
its default, against a fake Resend that enforces 2 requests a second (Resend's
documented team limit) and answers its ``ratelimit-*`` headers.
"""

from __future__ import annotations

import json
import re
import statistics
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from bench.harness import services
from bench.harness.fake_resend import FakeResend
from bench.harness.processes import run_cli
from bench.harness.shipped import default_environment, fleet, insert_emails, sessions_of, statuses
from tests.support.alert_support import hook_server
from tests.support.helpers import unique_address, wait_until

pytestmark = pytest.mark.slow

#: The issue's burst, and how long it may take at 2 requests/s with the default 1.8/s.
BURST = 60
BURST_SECONDS = 40


@pytest.fixture
def provider() -> Iterator[FakeResend]:
    with FakeResend(api_key="re_shipped", max_requests_per_second=2) as fake:
        yield fake


def deliveries_per_address(provider: FakeResend, addresses: list[str]) -> Counter[str]:
    wanted = set(addresses)
    return Counter(to for delivery in provider.deliveries for to in delivery.to if to in wanted)


@pytest.mark.parametrize("workers", [1, 2], ids=["one worker command", "two worker commands"])
def test_a_burst_is_sent_once_at_the_limit_without_a_429(
    run: services.RunServices, provider: FakeResend, tmp_path: Path, workers: int
) -> None:
    """The bug this replaces: 60 emails with these settings sent 10, and the rest waited for ever."""
    env = default_environment(run, provider)
    sessions = sessions_of(run)
    addresses = [unique_address(f"burst{n}") for n in range(BURST)]
    with fleet(env, tmp_path, workers=workers) as running:
        wait_until(lambda: "listening" in (tmp_path / "ticker.log").read_text(), timeout=30, what="the wake-up")
        started = time.monotonic()
        ids = insert_emails(sessions, addresses)
        wait_until(
            lambda: statuses(sessions, ids).get("sent") == BURST,
            timeout=90,
            what=f"{BURST} emails sent\n{running.logs()}",
        )
        elapsed = time.monotonic() - started
    per_address = deliveries_per_address(provider, addresses)
    assert sorted(per_address.values()) == [1] * BURST
    assert provider.count_429() == 0
    assert elapsed <= BURST_SECONDS, f"{BURST} emails took {elapsed:.1f}s"
    print(f"\n[figures] {BURST} emails, {workers} worker command(s) -p 2 -t 8: {elapsed:.1f}s, 0 x 429")


def test_an_email_inserted_by_sql_is_picked_up_at_once_not_at_the_tick(
    run: services.RunServices, provider: FakeResend, tmp_path: Path
) -> None:
    """With EMAIL_SCHEDULE every 2 minutes, only the wake-up can send within seconds."""
    env = default_environment(run, provider)
    sessions = sessions_of(run)
    took: list[float] = []
    with fleet(env, tmp_path) as running:
        wait_until(lambda: "listening" in (tmp_path / "ticker.log").read_text(), timeout=30, what="the wake-up")
        for n in range(5):
            address = unique_address(f"pickup{n}")
            started = time.monotonic()
            insert_emails(sessions, [address])
            wait_until(lambda a=address: provider.deliveries_to(a), timeout=20, what=f"pickup\n{running.logs()}")
            took.append(time.monotonic() - started)
    assert max(took) < 5, took
    print(f"\n[figures] pickup of an SQL insert: median {statistics.median(took):.3f}s, max {max(took):.3f}s")


def test_a_transactional_email_overtakes_a_bulk_drain(
    run: services.RunServices, provider: FakeResend, tmp_path: Path
) -> None:
    """A password reset inserted behind a newsletter reaches the provider within a few slots.

    The newsletter goes in batch requests of 100; what the reset may wait for is requests,
    so they are what is counted: at most the three the limiter may already have handed out.
    """
    env = default_environment(run, provider)
    sessions = sessions_of(run)
    bulk = [unique_address(f"bulk{n}") for n in range(3000)]
    urgent = unique_address("reset")
    with fleet(env, tmp_path) as running:
        insert_emails(sessions, bulk, priority="bulk")
        wait_until(lambda: provider.requests_to("/emails/batch") >= 3, timeout=60, what=f"the drain\n{running.logs()}")
        batches_before = provider.requests_to("/emails/batch")
        started = time.monotonic()
        insert_emails(sessions, [urgent])
        wait_until(lambda: provider.deliveries_to(urgent), timeout=30, what=f"the reset\n{running.logs()}")
        took = time.monotonic() - started
        overtaken = provider.requests_to("/emails/batch") - batches_before
        drain_goes_on = provider.requests_to("/emails/batch") + 2
        wait_until(lambda: provider.requests_to("/emails/batch") >= drain_goes_on, timeout=30, what="the drain")
    assert overtaken <= 3, f"{overtaken} bulk requests went before the transactional one"
    assert provider.count_429() == 0
    print(f"\n[figures] transactional behind a bulk drain: {took:.2f}s, {overtaken} bulk requests before it")


def test_a_quota_429_pauses_the_fleet_alerts_once_and_resumes_by_itself(
    run: services.RunServices, provider: FakeResend, tmp_path: Path
) -> None:
    sessions = sessions_of(run)
    addresses = [unique_address(f"quota{n}") for n in range(30)]
    with hook_server() as hook:
        env = default_environment(run, provider, ALERT_WEBHOOK_URL=hook.url)
        with fleet(env, tmp_path) as running:
            # The quota's window starts once the fleet listens, not while it boots: the pause must still
            # hold when `stats` (a CLI start, about 2 s) reads it, however slowly the workers came up.
            wait_until(lambda: "listening" in (tmp_path / "ticker.log").read_text(), timeout=30, what="the wake-up")
            provider.exhaust_quota(kind="daily_quota_exceeded", reset_after=12)
            ids = insert_emails(sessions, addresses)
            wait_until(lambda: provider.count_429() >= 1, timeout=30, what=f"the quota 429\n{running.logs()}")
            stats = json.loads(run_cli("stats", "--json", env=env, cwd=tmp_path).stdout)
            wait_until(lambda: statuses(sessions, ids).get("sent") == len(ids), timeout=90, what=running.logs())
        alerts = [post.body for post in hook.posts]
    assert stats["sending"]["paused"] is True and stats["sending"]["pause_reason"] == "daily_quota_exceeded"
    with sessions() as session:
        retries = list(session.scalars(text("SELECT retry_count FROM email_queue WHERE id = ANY(:ids)"), {"ids": ids}))
    assert retries == [0] * len(ids), "a 429 spent a retry"
    assert provider.count_429() <= 3, "more than the first refusals and one probe met the quota"
    assert sorted(deliveries_per_address(provider, addresses).values()) == [1] * len(ids)
    assert len(alerts) == 1 and "daily_quota_exceeded" in str(alerts[0]["text"])


def test_a_drain_lasting_several_leases_publishes_each_email_once(run: services.RunServices, tmp_path: Path) -> None:
    """Claims sized to the wait: an email waiting its turn is never claimed and published again.

    Scaled down: a 6-second lease and a provider limit of 20/s (18/s used), so the
    300 emails drain over about three leases. Before, one fan-out claimed them all and
    the unsent ones were claimed and published again whenever their lease ran out.
    """
    emails = 300
    with FakeResend(api_key="re_drain", max_requests_per_second=20) as fast:
        # One email per request, so the drain is long enough to outlast its leases.
        env = default_environment(run, fast, EMAIL_LEASE_MINUTES="0.1", EMAIL_PER_REQUEST="1")
        sessions = sessions_of(run)
        addresses = [unique_address(f"drain{n}") for n in range(emails)]
        with fleet(env, tmp_path) as running:
            wait_until(lambda: "listening" in (tmp_path / "ticker.log").read_text(), timeout=30, what="the wake-up")
            started = time.monotonic()
            ids = insert_emails(sessions, addresses)
            wait_until(lambda: statuses(sessions, ids).get("sent") == emails, timeout=120, what=running.logs())
            drained = time.monotonic() - started
        published = sum(
            int(count)
            for log in tmp_path.glob("*.log")
            for count in re.findall(r"[Ee]nqueued (\d+) (?:emails|messages)", log.read_text(errors="replace"))
        )
        delivered = deliveries_per_address(fast, addresses)
    assert sorted(delivered.values()) == [1] * emails
    assert drained > 12, "the drain must outlast two leases for this test to mean anything"
    assert published <= 1.05 * emails, f"{published} send messages published for {emails} emails"
    print(f"\n[figures] drain of {emails} over {drained:.1f}s (6 s lease): {published / emails:.3f} messages per email")


def test_bulk_drains_in_batches_at_the_limit(run: services.RunServices, provider: FakeResend, tmp_path: Path) -> None:
    """2,000 bulk emails at 2 requests/s: one request carries up to 100, so the drain goes at ≥ 150 emails/s."""
    env = default_environment(run, provider)
    sessions = sessions_of(run)
    addresses = [unique_address(f"news{n}") for n in range(2000)]
    with fleet(env, tmp_path) as running:
        wait_until(lambda: "listening" in (tmp_path / "ticker.log").read_text(), timeout=30, what="the wake-up")
        ids = insert_emails(sessions, addresses, priority="bulk")
        started = time.monotonic()  # from the INSERT's commit: the drain, not the 2,000 inserts
        wait_until(lambda: statuses(sessions, ids).get("sent") == len(ids), timeout=120, what=running.logs())
        drained = time.monotonic() - started
    rate = len(ids) / drained
    assert sorted(deliveries_per_address(provider, addresses).values()) == [1] * len(ids)
    # The fleet paces at 90% of the limit and the fake counts at arrival: on a loaded 2-core CI machine one
    # request held up half a second past its slot can land in the next one's window (seen once in a CI run
    # of 710 tests). A stray 429 pauses the fleet for its retry-after and spends no retry; more is a bug.
    refused = provider.count_429()
    assert refused <= 1, f"{refused} requests refused with 429"
    with sessions() as session:
        assert not session.scalar(
            text("SELECT COUNT(*) FROM email_queue WHERE retry_count > 0 AND id = ANY(:ids)"), {"ids": ids}
        )
    assert rate >= 150, f"{rate:.0f} emails/s"
    requests = provider.requests_to("/emails/batch") + provider.requests_to("/emails")
    print(
        f"\n[figures] 2,000 bulk at 2 req/s: {rate:.0f} emails/s in {drained:.1f}s,"
        f" {requests} requests, {refused} x 429"
    )
