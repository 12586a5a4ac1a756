"""Dead-letter alerts: their settings."""

from __future__ import annotations

import pytest

from pipeline.core.errors import ConfigError
from pipeline.core.settings import Settings


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
