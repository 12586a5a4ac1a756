"""Dead-letter alerts: the digest, its throttle, its channels, and channels that fail."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from sqlalchemy.orm import Session, sessionmaker

from bench.harness.fake_resend import FakeResend
from pipeline.core.alerts import Alerter, Outcome
from pipeline.providers.resend import ResendMailer
from storage.clock import utcnow
from tests.support.alert_support import HookServer, hook, quiet, refused_url  # noqa: F401  (fixtures)
from tests.support.dlq_support import add_dead_letter, own_services, own_sessions  # noqa: F401  (fixtures)
from tests.support.helpers import unique_address

# --- the digest and its throttle ----------------------------------------------------------------


@pytest.mark.usefixtures("quiet")
def test_bursts_within_the_interval_make_one_digest_and_each_digest_counts_only_the_new(
    own_sessions: sessionmaker[Session],  # noqa: F811
    hook: HookServer,  # noqa: F811
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
        own_sessions, min_interval=timedelta(seconds=1), webhook_url=refused_url(), email=ops, mailers=[mailer]
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
