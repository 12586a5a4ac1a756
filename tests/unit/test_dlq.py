"""Dead letters without services: the statements on the dev mode's SQLite, pruning in batches, durations."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from pipeline.ops import dlq
from storage import alerts, dead_letters, emails, leases, migrate
from storage.clock import utcnow
from storage.database import get_engine, get_sessionmaker
from storage.dead_letters import LetterFilter
from tests.support.dlq_support import add_dead_letter, letter


def test_the_dead_letter_statements_run_on_the_dev_modes_sqlite(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'dev.sqlite3'}"
    migrate.upgrade(url)
    lite = get_sessionmaker(url)
    try:
        now = utcnow()
        ids = [add_dead_letter(lite, actor="send_email", args=[n], dead_at=now - timedelta(days=n)) for n in (1, 2, 9)]
        raw = add_dead_letter(lite, actor=None, args=None, raw_body="\x00bad", queue="ticks.XQ")
        with lite.begin() as session:
            email_id = emails.enqueue(session, recipient="a@example.com", subject="s", text="t")
            leases.give_up(emails.TABLE, session, email_id, error="E")
            assert leases.revive(emails.TABLE, session, email_id, lease=timedelta(minutes=1)) is True
            assert leases.revive(emails.TABLE, session, email_id, lease=timedelta(minutes=1)) is False
            state = alerts.lock_state(session, now=now)
            assert state.last_alert_at is None
            taken = dead_letters.take_unalerted(session, at=now)
            alerts.record_alert(session, at=now)
        with lite() as session:
            found = dead_letters.search(
                session, LetterFilter(queue="emails.XQ", since=now - timedelta(days=3)), limit=10
            )
            figures = dead_letters.summary(session)
            stored_raw = dead_letters.get(session, raw)
        with lite.begin() as session:
            assert dead_letters.delete_dead_before(session, now - timedelta(days=5), limit=10) == 1
    finally:
        get_engine(url).dispose()
    assert [letter.id for letter in taken] == [*ids, raw]
    assert [letter.id for letter in found] == ids[:2]
    assert figures["by_queue"] == {"emails.XQ": 3, "ticks.XQ": 1} and figures["unreplayed"] == 4
    assert stored_raw is not None and stored_raw.raw_body == "\ufffdbad"


def test_durations_and_times() -> None:
    now = utcnow()
    assert dlq.parse_duration("30d") == timedelta(days=30)
    assert dlq.parse_duration("1.5h") == timedelta(minutes=90)
    assert dlq.parse_since("15m", now=now) == now - timedelta(minutes=15)
    assert dlq.parse_since("2026-01-02T03:04:05").isoformat() == "2026-01-02T03:04:05+00:00"
    for wrong in ("30", "d", "-1d", "3w"):
        with pytest.raises(ValueError):
            dlq.parse_duration(wrong)


def test_prune_deletes_in_batches(lite: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dead_letters, "DELETE_BATCH_SIZE", 3)
    now = utcnow()
    ids = [add_dead_letter(lite, actor="x", args=[], dead_at=now - timedelta(days=400)) for _ in range(7)]
    calls: list[int] = []
    delete_dead_before = dead_letters.delete_dead_before

    def counting(session: Session, cutoff: Any, *, limit: int) -> int:
        calls.append(deleted := delete_dead_before(session, cutoff, limit=limit))
        return deleted

    monkeypatch.setattr(dead_letters, "delete_dead_before", counting)
    assert dead_letters.prune(lite, retention_days=365) == 7
    assert calls == [3, 3, 1] and all(letter(lite, i) is None for i in ids)
