"""Acceptance: the provider down for longer than the retry schedule; failover to SMTP; SMTP alone.

The shape we ship (``worker -p 2 -t 8``, the ticker, the archiver, every setting at its
default) but for the retry delays, scaled by 1/200 (0.3 s, 0.6 s, 1.2 s … instead of
1, 2, 4 minutes) so that a 20-second outage stands for one of over an hour. The SMTP
server is a real one (aiosmtpd, ``tests/support/smtp_support.py``).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from bench.harness import services
from bench.harness.fake_resend import FakeResend
from bench.harness.shipped import default_environment, fleet, insert_emails, sessions_of, statuses
from tests.support.helpers import unique_address, wait_until
from tests.support.smtp_support import RecordingHandler, smtp_server

pytestmark = pytest.mark.slow

#: The real schedule's delays scaled by 1/200 (the issue's scale).
SCALED_RETRIES = {"EMAIL_RETRY_DELAY_MINUTES": "0.005", "EMAIL_MAX_RETRY_DELAY_MINUTES": "0.3"}
OUTAGE_SECONDS = 20.0
#: Emails arriving per second during the outage.
ARRIVALS_PER_SECOND = 5
#: The failover goal's outage and arrival rate (#18, part 4).
FAILOVER_OUTAGE_SECONDS = 40.0
FAILOVER_ARRIVALS_PER_SECOND = 10
#: The quota test's quota resets this long after it is used up (the emails arrive for 10 s of it).
QUOTA_RESET_SECONDS = 15.0


@pytest.fixture
def provider() -> Iterator[FakeResend]:
    with FakeResend(api_key="re_shipped", max_requests_per_second=2) as fake:
        yield fake


@pytest.fixture
def smtp() -> Iterator[tuple[RecordingHandler, str]]:
    with smtp_server() as running:
        yield running


def arrive(
    sessions: sessionmaker[Session], tag: str, seconds: float, per_second: float = ARRIVALS_PER_SECOND
) -> tuple[list[int], list[str]]:
    """Insert ``per_second`` emails a second, one transaction each, for ``seconds``: their ids and addresses."""
    addresses: list[str] = []
    ids: list[int] = []
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        addresses.append(unique_address(f"{tag}{len(addresses)}"))
        ids += insert_emails(sessions, addresses[-1:])
        time.sleep(1 / per_second)  # the arrival rate (load), not a synchronisation
    return ids, addresses


def arrive_during_outage(
    provider: FakeResend,
    sessions: sessionmaker[Session],
    tag: str,
    seconds: float,
    per_second: float = ARRIVALS_PER_SECOND,
) -> tuple[list[int], list[str], float]:
    """Take the provider down; ``arrive`` for ``seconds`` (it stays down); also when it went down."""
    provider.go_down()
    down_at = time.monotonic()
    return *arrive(sessions, tag, seconds, per_second), down_at


def wake_up_listening(cwd: Path) -> None:
    wait_until(lambda: "listening" in (cwd / "ticker.log").read_text(), timeout=30, what="the wake-up")


def failover_environment(run: services.RunServices, provider: FakeResend, smtp_url: str) -> dict[str, str]:
    return default_environment(run, provider, EMAIL_PROVIDERS="resend,smtp", SMTP_URL=smtp_url, **SCALED_RETRIES)


def delivered_by_both(
    provider: FakeResend, handler: RecordingHandler, addresses: list[str]
) -> tuple[Counter[str], Counter[str], list[str]]:
    """Deliveries per address on Resend and on SMTP (each provider's own count), and the addresses on both."""
    on_resend = Counter(to for delivery in provider.deliveries for to in delivery.to)
    on_smtp = Counter(message.recipient for message in handler.received)
    return on_resend, on_smtp, [address for address in addresses if on_resend[address] and on_smtp[address]]


def dead_letters(sessions: sessionmaker[Session]) -> int:
    with sessions() as session:
        return int(session.scalar(text("SELECT COUNT(*) FROM dead_letters")) or 0)


def by_provider(sessions: sessionmaker[Session], ids: list[int]) -> Counter[str]:
    with sessions() as session:
        rows = session.execute(text("SELECT provider FROM email_queue WHERE id = ANY(:ids)"), {"ids": ids})
        return Counter(str(provider) for (provider,) in rows)


def test_a_provider_down_longer_than_the_retry_schedule_fails_nothing_and_is_probed_gently(
    run: services.RunServices, provider: FakeResend, tmp_path: Path
) -> None:
    """Before: 250 emails queued during a 41 s outage all failed, 250 dead letters, 24 requests/s."""
    env = default_environment(run, provider, **SCALED_RETRIES)
    sessions = sessions_of(run)
    with fleet(env, tmp_path) as running:
        wake_up_listening(tmp_path)
        ids, addresses, down_at = arrive_during_outage(provider, sessions, "outage", OUTAGE_SECONDS)
        wait_until(lambda: "fails as a whole" in running.logs(tail=None), timeout=10, what="the outage pause")
        provider.come_back()
        back_at = time.monotonic()
        requests_while_down = provider.requests_between(down_at, back_at)
        wait_until(
            lambda: statuses(sessions, ids).get("sent") == len(ids),
            timeout=60,
            what=f"every email sent after the outage\n{running.logs()}",
        )
        drained = time.monotonic() - back_at
        stats = running.logs(tail=None)
    delivered = Counter(to for delivery in provider.deliveries for to in delivery.to)
    per_second = requests_while_down / (back_at - down_at)
    print(
        f"\n[figures] outage {back_at - down_at:.0f}s, {len(ids)} emails queued during it: "
        f"{statuses(sessions, ids)}, {dead_letters(sessions)} dead letters, {per_second:.2f} requests/s "
        f"to the dead provider, drained {drained:.1f}s after its return, "
        f"{sum(count > 1 for count in delivered.values())} delivered twice"
    )
    assert statuses(sessions, ids) == {"sent": len(ids)}
    assert dead_letters(sessions) == 0
    assert all(delivered[address] == 1 for address in addresses)
    assert per_second <= 2.0, f"{per_second:.2f} requests/s to the dead provider"
    assert "fails as a whole" in stats and "accepts requests again" in stats
    assert drained <= 20.0, f"{drained:.1f}s to drain after the provider came back (goal: 20 s)"


def test_failover_to_smtp_during_an_outage_and_failback_after_it(
    run: services.RunServices, provider: FakeResend, smtp: tuple[RecordingHandler, str], tmp_path: Path
) -> None:
    handler, smtp_url = smtp
    env = failover_environment(run, provider, smtp_url)
    sessions = sessions_of(run)
    with fleet(env, tmp_path) as running:
        wake_up_listening(tmp_path)
        ids, addresses, down_at = arrive_during_outage(
            provider, sessions, "failover", FAILOVER_OUTAGE_SECONDS, FAILOVER_ARRIVALS_PER_SECOND
        )
        over_smtp_during = by_provider(sessions, ids)["smtp"]
        provider.come_back()
        back_at = time.monotonic()
        # The emails whose Resend attempt may have been taken wait for Resend: one of them is its probe.
        wait_until(lambda: "accepts requests again" in running.logs(tail=None), timeout=20, what="the failback")
        failback = time.monotonic() - back_at
        wait_until(
            lambda: statuses(sessions, ids).get("sent") == len(ids),
            timeout=60,
            what=f"every email sent\n{running.logs()}",
        )
        drained = time.monotonic() - back_at
        after_ids = insert_emails(sessions, [unique_address(f"after{n}") for n in range(10)])
        wait_until(lambda: statuses(sessions, after_ids).get("sent") == 10, timeout=30, what="the emails after")
    share = over_smtp_during / len(ids)
    on_resend, on_smtp, both = delivered_by_both(provider, handler, addresses)
    print(
        f"\n[figures] failover: {share:.0%} of {len(ids)} emails over SMTP during a {back_at - down_at:.0f}s outage "
        f"({statuses(sessions, ids)}, {dead_letters(sessions)} dead letters), {len(both)} delivered by both; "
        f"failback {failback:.1f}s after the return, all sent {drained:.1f}s after it; "
        f"after: {dict(by_provider(sessions, after_ids))}"
    )
    assert statuses(sessions, ids) == {"sent": len(ids)}
    assert dead_letters(sessions) == 0
    assert both == [], f"{len(both)} emails delivered by both providers"
    assert all(on_resend[address] + on_smtp[address] == 1 for address in addresses)
    assert share >= 0.8, f"{share:.0%} over SMTP during the outage"
    assert drained <= 20.0
    assert by_provider(sessions, after_ids) == Counter({"resend": 10}), "new emails did not go back to Resend"


def test_a_quota_pause_fails_over_to_smtp_and_new_emails_go_back_to_resend_after_it(
    run: services.RunServices, provider: FakeResend, smtp: tuple[RecordingHandler, str], tmp_path: Path
) -> None:
    """A 429 quota is a sure refusal: nothing was taken, so the email may go to SMTP at once."""
    handler, smtp_url = smtp
    env = failover_environment(run, provider, smtp_url)
    sessions = sessions_of(run)
    with fleet(env, tmp_path) as running:
        wake_up_listening(tmp_path)
        provider.exhaust_quota(reset_after=QUOTA_RESET_SECONDS)  # the 429s' retry-after counts down to it
        ids, addresses = arrive(sessions, "quota", 10)
        wait_until(lambda: statuses(sessions, ids).get("sent") == len(ids), timeout=30, what=f"{running.logs()}")
        during = by_provider(sessions, ids)
        logs = running.logs(tail=None)
        after: list[int] = []  # after the reset, the first email to Resend is its probe

        def back_on_resend() -> bool:
            after.extend(insert_emails(sessions, [unique_address("afterquota")]))
            return by_provider(sessions, after)["resend"] > 0

        wait_until(back_on_resend, timeout=60, interval=0.5, what="an email on Resend after the quota")
        later = insert_emails(sessions, [unique_address(f"later{n}") for n in range(5)])
        wait_until(lambda: statuses(sessions, later).get("sent") == 5, timeout=30, what="the emails after")
    _, on_smtp, both = delivered_by_both(provider, handler, addresses)
    print(
        f"\n[figures] quota: {during['smtp']} of {len(ids)} over SMTP while Resend's quota was used up, "
        f"{len(both)} delivered by both; after it, {by_provider(sessions, later)}"
    )
    assert statuses(sessions, ids) == {"sent": len(ids)} and dead_letters(sessions) == 0
    assert during == Counter({"smtp": len(ids)})
    assert both == [] and all(on_smtp[address] == 1 for address in addresses)
    assert "Provider quota reached (daily_quota_exceeded)" in logs
    assert by_provider(sessions, later) == Counter({"resend": 5})


def test_smtp_alone_serves_a_shop_without_resend(
    run: services.RunServices, provider: FakeResend, smtp: tuple[RecordingHandler, str], tmp_path: Path
) -> None:
    handler, smtp_url = smtp
    # Scaled retries: the batch whose connection dropped after DATA is resent by its retry.
    env = default_environment(run, provider, EMAIL_PROVIDERS="smtp", SMTP_URL=smtp_url, **SCALED_RETRIES)
    env.pop("RESEND_API_KEY")
    sessions = sessions_of(run)
    good = [unique_address(f"smtp{n}") for n in range(200)]
    refused, dropped = unique_address("nosuchuser"), unique_address("dropped")
    around = [unique_address(f"around{n}") for n in range(4)]
    handler.refused.add(refused)
    handler.drop_once.add(dropped)
    with fleet(env, tmp_path) as running:
        wake_up_listening(tmp_path)
        started = time.monotonic()
        ids = insert_emails(sessions, good)
        wait_until(lambda: statuses(sessions, ids).get("sent") == 200, timeout=60, what=f"200 sent\n{running.logs()}")
        took = time.monotonic() - started
        # One batch (one transaction, so one claim): the 550 and the drop in the middle of good members.
        batch = insert_emails(sessions, [around[0], refused, around[1], dropped, around[2], around[3]])
        wait_until(
            lambda: statuses(sessions, batch) == {"failed": 1, "sent": 5}, timeout=60, what=f"{running.logs()}"
        )
    with sessions() as session:
        query = text("SELECT recipient, attempts, batch_id FROM email_queue WHERE id = ANY(:ids)")
        rows = session.execute(query, {"ids": batch}).all()
    attempts = {str(recipient): int(count) for recipient, count, _ in rows}
    message_ids = [handler.to(address)[0].message_id for address in good if len(handler.to(address)) == 1]
    assert len(message_ids) == 200 and len(set(message_ids)) == 200
    assert by_provider(sessions, ids) == Counter({"smtp": 200})
    assert len({batch_id for _, _, batch_id in rows}) == 1 and rows[0][2] is not None, "not one batch"
    assert attempts[refused] == 1 and handler.to(refused) == []
    resent = handler.to(dropped)
    assert len(resent) == 2 and resent[0].message_id == resent[1].message_id
    # Before: the drop retried the whole batch, and SMTP delivered the members before it twice.
    assert {address: len(handler.to(address)) for address in around} == dict.fromkeys(around, 1)
    assert provider.requests == []
    print(f"\n[figures] SMTP alone on loopback, worker -p 2 -t 8: 200 emails in {took:.1f}s ({200 / took:.0f}/s)")
