"""Waiting on a condition with a deadline: the one way tests and benchmarks synchronise."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(
    condition: Callable[[], T], *, timeout: float = 20.0, what: str = "condition", interval: float = 0.02
) -> T:
    """Poll ``condition`` every ``interval`` seconds until it returns something truthy; fail after ``timeout``.

    A condition that costs queries to the system under test deserves a longer ``interval``.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last value: {value!r}")
        time.sleep(interval)
