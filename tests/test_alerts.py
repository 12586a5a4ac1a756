"""Dead-letter alerts: the digest, its throttle, its channels, and channels that fail."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from pipeline.alerts import Alerter, Outcome
from pipeline.core.errors import ConfigError
from pipeline.core.mailer import ResendMailer
from pipeline.core.settings import Settings
from storage import alerts, dead_letters
from storage.clock import utcnow
from tests import services
from tests.dlq_support import (  # noqa: F401  (fixtures)
    add_dead_letter,
    dramatiq_body,
    garbage,
    own_env,
    own_services,
    own_sessions,
    publish,
)
from tests.fake_resend import FakeResend
from tests.helpers import unique_address, wait_until
from tests.processes import running


@dataclass
class Post:
    arrived_at: float
    path: str
    body: dict[str, Any]


@dataclass
class HookServer:
    """A loopback stand-in for a Slack incoming webhook: records every POST, answers 200 ``ok``."""

    url: str
    posts: list[Post] = field(default_factory=list)


@pytest.fixture(scope="module")
def hook() -> Iterator[HookServer]:
    server_box: dict[str, HookServer] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            server_box["hook"].posts.append(Post(time.monotonic(), self.path, json.loads(body)))
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server_box["hook"] = HookServer(url=f"http://127.0.0.1:{server.server_address[1]}/services/T0/B0/hook")
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server_box["hook"]
    server.shutdown()
    server.server_close()


@pytest.fixture
def quiet(own_sessions: sessionmaker[Session], hook: HookServer) -> None:  # noqa: F811
    """No alert sent yet, every dead letter already alerted, no POST recorded."""
    now = utcnow()
    with own_sessions.begin() as session:
        alerts.reset(session, now=now)
        dead_letters.take_unalerted(session, at=now)
    hook.posts.clear()


def refused_url() -> str:
    """A loopback port nobody listens on: connections are refused at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/services/T0/B0/s3cr3t-path"


# --- the digest and its throttle ----------------------------------------------------------------


@pytest.mark.usefixtures("quiet")
def test_bursts_within_the_interval_make_one_digest_and_each_digest_counts_only_the_new(
    own_sessions: sessionmaker[Session],  # noqa: F811
    hook: HookServer,
) -> None:
    alerter = Alerter(own_sessions, min_interval=timedelta(minutes=10), webhook_url=hook.url)
    t0 = utcnow()
    for _ in range(2):
        add_dead_letter(own_sessions, actor="send_email", args=[1], error="PermanentError: Resend 422 refused")
    add_dead_letter(own_sessions, actor=None, args=None, raw_body="?", error="DecodeError: Failed to decode message.")

    first = alerter.check(now=t0)
    for _ in range(2):  # a second burst, then a third, inside the interval
        add_dead_letter(own_sessions, actor="process_webhook_event", args=[7], queue="webhooks.XQ", error="E: x")
    held = alerter.check(now=t0 + timedelta(minutes=2))
    add_dead_letter(own_sessions, actor="send_email", args=[2], error="TransientError: Resend 500 down")
    still_held = alerter.check(now=t0 + timedelta(minutes=9, seconds=59))
    second = alerter.check(now=t0 + timedelta(minutes=10))
    nothing = alerter.check(now=t0 + timedelta(hours=1))

    assert [o for o, _ in (first, held, still_held, second, nothing)] == [
        Outcome.SENT,
        Outcome.HELD,
        Outcome.HELD,
        Outcome.SENT,
        Outcome.NOTHING,
    ]
    assert len(hook.posts) == 2 and hook.posts[0].path == "/services/T0/B0/hook"
    one, two = (post.body for post in hook.posts)
    assert one["counts"] == {
        "total": 3,
        "by_queue": {"emails.XQ": 3},
        "by_actor": {"send_email": 2, "(undecodable)": 1},
    }
    assert two["counts"] == {
        "total": 3,
        "by_queue": {"webhooks.XQ": 2, "emails.XQ": 1},
        "by_actor": {"process_webhook_event": 2, "send_email": 1},
    }
    assert one["until"] == t0.isoformat() and two["since"] == t0.isoformat()
    assert two["until"] == (t0 + timedelta(minutes=10)).isoformat()
    assert one["text"].startswith("[minalesh-workers] 3 messages dead-lettered since ")
    assert "send_email ×2, (undecodable) ×1" in one["text"] and "dlq list --unreplayed" in one["text"]
    assert [s["error"] for s in two["samples"]] == ["TransientError: Resend 500 down", "E: x", "E: x"]
    assert set(two["samples"][0]) == {"id", "queue", "actor", "message_id", "error", "dead_at"}


@pytest.mark.usefixtures("quiet")
def test_a_channel_that_fails_is_logged_counted_as_sent_and_never_retried_in_a_loop(
    own_sessions: sessionmaker[Session],  # noqa: F811
    fake_resend: FakeResend,
    caplog: pytest.LogCaptureFixture,
) -> None:
    ops = unique_address("ops-down")
    fake_resend.fail_recipient(ops, status=500, name="application_error", message="down")
    mailer = ResendMailer(api_key=fake_resend.api_key, api_url=fake_resend.url)
    alerter = Alerter(
        own_sessions, min_interval=timedelta(seconds=1), webhook_url=refused_url(), email=ops, mailer=mailer
    )
    add_dead_letter(own_sessions, actor="send_email", args=[1])

    started = time.monotonic()
    outcome, digest = alerter.check()
    took = time.monotonic() - started
    assert digest is not None
    delivered = alerter.deliver(digest)  # as a retry would: still failing, still only logged
    later = alerter.check(now=utcnow() + timedelta(minutes=1))

    assert outcome is Outcome.SENT and delivered == {"webhook": False, "email": False}
    assert later[0] is Outcome.NOTHING  # the failed digest is not sent again
    assert took < 5 and fake_resend.attempts_for(ops) == 2 and fake_resend.deliveries_to(ops) == []
    assert "alert webhook is unreachable (ConnectionError)" in caplog.text
    assert "s3cr3t" not in caplog.text


# --- the archiver process -----------------------------------------------------------------------


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
    hook: HookServer,
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


# --- settings -----------------------------------------------------------------------------------


def test_alert_and_retention_settings() -> None:
    defaults = Settings.from_env({})
    configured = Settings.from_env(
        {
            "ALERT_WEBHOOK_URL": "https://hooks.slack.com/services/T0/B0/secret",
            "ALERT_EMAIL": "ops@minalesh.et",
            "ALERT_MIN_INTERVAL_MINUTES": "0.5",
            "DEAD_LETTER_RETENTION_DAYS": "30",
            "DEAD_LETTER_PRUNE_SCHEDULE": "0 4 * * *",
        }
    )
    assert (defaults.alert_webhook_url, defaults.alert_email, defaults.alert_min_interval_minutes) == (None, None, 10)
    assert (defaults.dead_letter_retention_days, defaults.dead_letter_prune_schedule) == (180, "17 3 * * *")
    assert configured.alert_min_interval_minutes == 0.5 and configured.dead_letter_retention_days == 30
    assert "secret" not in repr(configured)
    with pytest.raises(ConfigError) as raised:
        Settings.from_env({"ALERT_WEBHOOK_URL": "hooks.slack.com/services/T0/B0/secret"})
    assert str(raised.value).startswith("ALERT_WEBHOOK_URL is invalid") and "secret" not in str(raised.value)
    for name, value in (
        ("ALERT_EMAIL", "ops"),
        ("ALERT_EMAIL", "a@x.com, b@x.com"),
        ("ALERT_MIN_INTERVAL_MINUTES", "0"),
        ("DEAD_LETTER_RETENTION_DAYS", "0"),
        ("DEAD_LETTER_PRUNE_SCHEDULE", "daily"),
    ):
        with pytest.raises(ConfigError, match=f"^{name}="):
            Settings.from_env({name: value})
