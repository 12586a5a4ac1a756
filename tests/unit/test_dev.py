"""``dev``'s own pieces: the secrets it makes up for a run, its reset, its listening socket."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from pipeline.core.errors import ConfigError
from pipeline.core.settings import MIN_TOKEN_LENGTH, Settings
from pipeline.dev import dev_settings, listen, reset_data

OWN_SECRET = "an-own-cron-secret-of-32-characters-or-more"


def test_a_run_without_secrets_makes_up_a_sign_in_token_and_a_webhook_secret(tmp_path: Path) -> None:
    settings = dev_settings(Settings.from_env({}), database=tmp_path / "dev.sqlite3", demo=False)
    assert settings.cron_secret is not None and len(settings.cron_secret) >= MIN_TOKEN_LENGTH
    assert settings.webhook_secret("telebirr") is not None
    assert settings.database_url == f"sqlite:///{tmp_path / 'dev.sqlite3'}"
    again = dev_settings(Settings.from_env({}), database=tmp_path / "dev.sqlite3", demo=False)
    assert again.cron_secret != settings.cron_secret  # one per run


def test_secrets_of_ones_own_are_kept(tmp_path: Path) -> None:
    given = Settings.from_env({"CRON_SECRET": OWN_SECRET, "PAYMENT_WEBHOOK_SECRET": "whsec_own"})
    settings = dev_settings(given, database=tmp_path / "dev.sqlite3", demo=True)
    assert settings.cron_secret == OWN_SECRET and settings.payment_webhook_secret == "whsec_own"


def test_reset_deletes_the_database_and_the_outbox_emails_only(tmp_path: Path) -> None:
    database, outbox = tmp_path / "dev.sqlite3", tmp_path / "outbox"
    outbox.mkdir()
    for name in ("dev.sqlite3", "dev.sqlite3-wal", "dev.sqlite3-shm", "other.sqlite3"):
        (tmp_path / name).write_text("x")
    (outbox / "minalesh-email-1.eml").write_text("x")
    (outbox / "notes.txt").write_text("x")
    reset_data(database, outbox)
    reset_data(database, tmp_path / "no-outbox-yet")  # nothing there: nothing to do
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["notes.txt", "other.sqlite3", "outbox"]


def test_a_taken_port_is_a_config_error_naming_the_option() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=f"127.0.0.1:{port} .*--port"):
            listen(port)
    with listen(0) as free:
        assert free.getsockname()[1] > 0
