"""Test helpers: waiting on conditions, and enqueueing emails the way a host does."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy import text
from sqlalchemy.orm import Session

T = TypeVar("T")


def wait_until(condition: Callable[[], T], *, timeout: float = 20.0, what: str = "condition") -> T:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last value: {value!r}")
        time.sleep(0.02)


def insert_email(session: Session, recipient: str, **columns: Any) -> int:
    """Enqueue the way a host does: a plain INSERT with only what it has."""
    values = {"recipient": recipient, "subject": f"Subject for {recipient}", "html": "<p>hi</p>", **columns}
    names = ", ".join(values)
    placeholders = ", ".join(f":{name}" for name in values)
    statement = text(f"INSERT INTO email_queue ({names}) VALUES ({placeholders}) RETURNING id")
    return int(session.execute(statement, values).scalar_one())


def unique_address(tag: str) -> str:
    """An address no other test uses, so assertions see only this test's traffic."""
    return f"{tag}-{os.urandom(4).hex()}@example.com"

