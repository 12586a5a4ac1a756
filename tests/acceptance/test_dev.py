"""`minalesh-workers dev --demo`: the newcomer's first run, on SQLite with nothing else."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from bench.harness.processes import running
from tests.support.helpers import wait_until

pytestmark = pytest.mark.slow


def counts(database: Path) -> tuple[dict[str, int], int]:
    if not database.exists():
        return {}, 0
    with sqlite3.connect(database) as connection:
        try:
            statuses = dict(connection.execute("SELECT status, COUNT(*) FROM email_queue GROUP BY status").fetchall())
            dead = connection.execute("SELECT COUNT(*) FROM dead_letters").fetchone()[0]
        except sqlite3.OperationalError:  # not migrated yet
            return {}, 0
    return statuses, dead


def test_demo_shows_sends_retries_and_dead_letters(tmp_path: Path) -> None:
    database = tmp_path / "dev.sqlite3"
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("RESEND_", "EMAIL_", "DATABASE_", "BROKER_"))
    }
    env |= {"EMAIL_RETRY_DELAY_MINUTES": "0.005", "EMAIL_OUTBOX_DIR": str(tmp_path / "outbox")}

    with running("dev", "--demo", "--database", str(database), env=env, cwd=tmp_path, log=tmp_path / "dev.log"):
        wait_until(
            lambda: counts(database) == ({"sent": 6, "failed": 3}, 3),
            timeout=60,
            what="6 sent, 3 failed, 3 dead letters",
        )

    outbox = sorted(path.name for path in (tmp_path / "outbox").glob("*.eml"))
    assert len(outbox) == 6
    log = (tmp_path / "dev.log").read_text()
    assert "RESEND_API_KEY is not set" in log
    assert "outcome=retrying" in log and "Archived dead message" in log
