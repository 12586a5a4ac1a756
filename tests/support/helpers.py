"""Test helpers: waiting on conditions, and enqueueing emails the way a host does."""

from __future__ import annotations

import os
from typing import Any, TypeVar

from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from bench.harness.waiting import wait_until
from pipeline.core.declare import minutes_ms
from pipeline.core.settings import Settings

__all__ = ["email_statuses", "insert_email", "unique_address", "wait_until"]

T = TypeVar("T")

#: The broker hold the shipped settings give the middleware (BROKER_MAX_HOLD_MINUTES).
SHIPPED_MAX_HOLD_MS = minutes_ms(Settings().broker_max_hold_minutes)


def insert_email(session: Session, recipient: str, **columns: Any) -> int:
    """Enqueue the way a host does: a plain INSERT with only what it has."""
    values = {"recipient": recipient, "subject": f"Subject for {recipient}", "html": "<p>hi</p>", **columns}
    names = ", ".join(values)
    placeholders = ", ".join(f":{name}" for name in values)
    statement = text(f"INSERT INTO email_queue ({names}) VALUES ({placeholders}) RETURNING id")
    return int(session.execute(statement, values).scalar_one())


def email_statuses(sessions: sessionmaker[Session], ids: list[int]) -> dict[str, int]:
    """How many of the emails ``ids`` are in each status: ``{"sent": 3, "failed": 1}``."""
    with sessions() as session:
        query = text("SELECT status, COUNT(*) FROM email_queue WHERE id = ANY(:ids) GROUP BY status")
        return {status: int(count) for status, count in session.execute(query, {"ids": ids})}


def unique_address(tag: str) -> str:
    """An address no other test uses, so assertions see only this test's traffic."""
    return f"{tag}-{os.urandom(4).hex()}@example.com"

