"""Which pace each provider's limiter keeps (``pipeline.bootstrap.build_limiter``), without services."""

from __future__ import annotations

from unittest.mock import MagicMock

import pytest

from pipeline.bootstrap import build_limiter
from pipeline.core.settings import ConfigError, Settings
from pipeline.providers.smtp import SmtpProvider

SMTP = {"EMAIL_PROVIDERS": "smtp", "SMTP_URL": "smtp://relay.example:2525"}


def test_smtp_is_not_paced_at_resends_rate_unless_told() -> None:
    """Resend's 2 requests/s says nothing of a relay: paced at it, failover sent 1.8 emails/s."""
    settings = Settings.from_env(SMTP)
    limiter = build_limiter(settings, MagicMock(), None, SmtpProvider("smtp://relay.example:2525"))
    assert limiter.unlimited and limiter.name == "smtp"
    assert not build_limiter(settings, MagicMock(), None).unlimited  # Resend's stays paced


def test_smtp_rate_limit_paces_smtp() -> None:
    settings = Settings.from_env({**SMTP, "SMTP_RATE_LIMIT_PER_SECOND": "20"})
    limiter = build_limiter(settings, MagicMock(), None, SmtpProvider("smtp://relay.example:2525"))
    assert not limiter.unlimited and limiter.rate.configured == 20.0


def test_a_bad_smtp_rate_limit_is_refused_by_name() -> None:
    with pytest.raises(ConfigError, match="SMTP_RATE_LIMIT_PER_SECOND"):
        Settings.from_env({**SMTP, "SMTP_RATE_LIMIT_PER_SECOND": "-1"})
