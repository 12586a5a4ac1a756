"""Dead-letter alerts from the real archiver process: both channels, the throttle, an unreachable webhook."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from bench.harness import services
from bench.harness.fake_resend import FakeResend
from bench.harness.processes import running
from tests.support.alert_support import HookServer, hook, quiet, refused_url  # noqa: F401  (fixtures)
from tests.support.dlq_support import (  # noqa: F401  (fixtures)
    dramatiq_body,
    garbage,
    own_env,
    own_services,
    own_sessions,
    publish,
)
from tests.support.helpers import unique_address, wait_until


def declare_emails_queues(broker_url: str) -> None:
    broker = RabbitmqBroker(url=broker_url)
    broker.declare_queue("emails", ensure=True)
    broker.close()


def dead_bodies(count: int) -> list[bytes]:
    return [dramatiq_body("send_email", [10**9 + n], options={"retries": 3})[1] for n in range(count)]


@pytest.mark.usefixtures("quiet")
def test_the_archiver_alerts_by_webhook_and_by_email_at_most_once_per_interval(
    own_env: dict[str, str],  # noqa: F811
    own_sessions: sessionmaker[Session],  # noqa: F811
    own_services: services.RunServices,  # noqa: F811
    hook: HookServer,  # noqa: F811
    fake_resend: FakeResend,
    tmp_path: Path,
) -> None:
    ops = unique_address("ops")
    env = {**own_env, "ALERT_WEBHOOK_URL": hook.url, "ALERT_EMAIL": ops, "ALERT_MIN_INTERVAL_MINUTES": "0.05"}
    declare_emails_queues(own_services.broker_url)

    with running("archiver", env=env, cwd=tmp_path, log=tmp_path / "archiver.log"):
        publish(own_services.broker_url, "emails.XQ", dead_bodies(4))
        wait_until(lambda: hook.posts, what="the first alert")
        publish(own_services.broker_url, "emails.XQ", [garbage(f"alert-{n}") for n in range(3)])
        wait_until(lambda: sum(p.body["counts"]["total"] for p in hook.posts) == 7, what="the held digest")
        wait_until(lambda: len(fake_resend.deliveries_to(ops)) == 2, what="both alert emails")

    first, second = hook.posts
    assert second.arrived_at - first.arrived_at >= 2.5  # ALERT_MIN_INTERVAL_MINUTES=0.05 (3 s), less delivery jitter
    assert second.body["counts"]["by_actor"].get("(undecodable)") == 3
    mails = fake_resend.deliveries_to(ops)
    assert [mail.text for mail in mails] == [first.body["text"], second.body["text"]]
    assert mails[0].subject.startswith("[minalesh-workers] ") and mails[0].idempotency_key != mails[1].idempotency_key
    with own_sessions() as session:  # straight through the mailer, never through email_queue
        assert session.scalar(text("SELECT COUNT(*) FROM email_queue WHERE recipient = :r"), {"r": ops}) == 0


@pytest.mark.usefixtures("quiet")
def test_an_unreachable_alert_webhook_never_holds_up_archiving(
    own_env: dict[str, str],  # noqa: F811
    own_sessions: sessionmaker[Session],  # noqa: F811
    own_services: services.RunServices,  # noqa: F811
    tmp_path: Path,
) -> None:
    env = {**own_env, "ALERT_WEBHOOK_URL": refused_url(), "ALERT_MIN_INTERVAL_MINUTES": "0.01"}
    declare_emails_queues(own_services.broker_url)
    bodies = dead_bodies(200)
    log = tmp_path / "archiver.log"

    def unalerted() -> int:
        with own_sessions() as session:
            return int(session.scalar(text("SELECT COUNT(*) FROM dead_letters WHERE alerted_at IS NULL")) or 0)

    def archived() -> int:
        with own_sessions() as session:
            return int(session.scalar(text("SELECT COUNT(*) FROM dead_letters")) or 0)

    before = archived()
    started = time.monotonic()
    with running("archiver", env=env, cwd=tmp_path, log=log):
        for start in range(0, len(bodies), 50):  # bursts while alerts keep failing
            publish(own_services.broker_url, "emails.XQ", bodies[start : start + 50])
        wait_until(lambda: archived() == before + len(bodies), timeout=30, what="everything archived")
        elapsed = time.monotonic() - started
        wait_until(lambda: unalerted() == 0, what="every dead letter counted by an attempted alert")
        wait_until(lambda: "alert webhook is unreachable" in log.read_text(), what="the failure logged")

    assert "s3cr3t" not in log.read_text()
    assert elapsed < 15, elapsed
    print(f"\n[figures] {len(bodies)} archived in {elapsed:.2f}s with the alert webhook refusing connections")
