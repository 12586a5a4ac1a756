"""Dead-letter alerts: their settings, and the throttle on SQLite."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy.orm import sessionmaker

from pipeline.core.alerts import Alerter, Outcome
from pipeline.core.errors import ConfigError
from pipeline.core.settings import Settings
from pipeline.providers.base import Accepted, BatchAccepted, Capabilities, OutcomeUnknown, OutgoingEmail
from storage.database import get_engine, get_sessionmaker
from storage.migrate import upgrade
from tests.support.alert_support import hook_server
from tests.support.dlq_support import add_dead_letter


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


def test_the_digest_throttle_works_on_the_dev_modes_sqlite(tmp_path: Path) -> None:
    """SQLite gives datetimes back without a zone; the second check compared them with aware ones and crashed."""
    url = f"sqlite:///{tmp_path / 'alerts.sqlite3'}"
    upgrade(url)
    lite = get_sessionmaker(url)
    alerter = Alerter(lite, min_interval=timedelta(minutes=10))
    try:
        add_dead_letter(lite, actor="send_email", args=[1])
        first, _ = alerter.check()
        add_dead_letter(lite, actor="send_email", args=[2])
        second, _ = alerter.check()
    finally:
        get_engine(url).dispose()
    assert (first, second) == (Outcome.SENT, Outcome.HELD)


def test_a_webhook_that_answers_an_error_is_logged_with_its_status_and_not_counted_delivered(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with hook_server(status=500) as hook:
        alerter = Alerter(sessionmaker(), min_interval=timedelta(minutes=10), webhook_url=hook.url)
        delivered = alerter.notify(subject="s", text="t", payload={"total": 1}, key="k")
    assert delivered == {"webhook": False} and len(hook.posts) == 1
    assert "The alert webhook answered 500; this alert is dropped." in caplog.text


class RecordingProvider:
    """A provider that keeps what it was handed; ``down``: every send fails as Resend's in an outage."""

    capabilities = Capabilities(batch_size=1, idempotency_window=None)

    def __init__(self, name: str, *, down: bool = False) -> None:
        self.name = name
        self.down = down
        self.sent: list[OutgoingEmail] = []

    def send(self, email: OutgoingEmail) -> Accepted:
        if self.down:
            raise OutcomeUnknown(f"{self.name} 500 application_error")
        self.sent.append(email)
        return Accepted(f"{self.name}-{len(self.sent)}")

    def send_batch(self, emails: list[OutgoingEmail], *, idempotency_key: str) -> BatchAccepted:
        return BatchAccepted([self.send(email).provider_id for email in emails])


def test_the_alert_email_goes_through_the_next_provider_when_the_first_is_down(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Before: it went through the first provider only, so "Resend is down" was dropped with Resend down."""
    resend, smtp = RecordingProvider("resend", down=True), RecordingProvider("smtp")
    alerter = Alerter(
        sessionmaker(), min_interval=timedelta(minutes=10), email="ops@minalesh.et", mailers=[resend, smtp]
    )
    delivered = alerter.notify(subject="resend is down", text="t", payload={}, key="k")
    assert delivered == {"email": True}
    assert [email.subject for email in smtp.sent] == ["resend is down"] and resend.sent == []
    assert "could not be sent through resend" in caplog.text
    smtp.down = True
    assert alerter.notify(subject="s", text="t", payload={}, key="k2") == {"email": False}
    assert "No provider took the alert email; this alert is dropped." in caplog.text
