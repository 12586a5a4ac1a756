"""What the ticker's wake-up runs (``pipeline.ticker.DueWork``): emails every time, the webhook check
at most once a second, and never put off for longer than that."""

from __future__ import annotations

import pytest

from pipeline import ticker
from pipeline.ticker import WEBHOOK_RECHECK_SECONDS, DueWork, earliest


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    counted = {"emails": 0, "webhooks": 0}

    def emails() -> int:
        counted["emails"] += 1
        return 0

    def webhooks() -> int:
        counted["webhooks"] += 1
        return 0

    monkeypatch.setattr(ticker, "enqueue_due_emails", emails)
    monkeypatch.setattr(ticker, "enqueue_due_webhooks", webhooks)
    return counted


def test_at_a_peak_emails_fan_out_at_every_wake_up_and_webhooks_once_a_second(
    calls: dict[str, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock()
    monkeypatch.setattr(ticker.time, "monotonic", clock.monotonic)
    due = DueWork()
    for _ in range(50):  # 50 wake-ups in one second, as at 50 emails/s
        due()
        clock.now += 0.02
    assert calls == {"emails": 50, "webhooks": 1}
    clock.now = 1000.0 + WEBHOOK_RECHECK_SECONDS
    due()
    assert calls["webhooks"] == 2 and due.wait() is None


def test_a_skipped_check_brings_the_next_wake_up_forward_to_when_it_may_run(
    calls: dict[str, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock()
    monkeypatch.setattr(ticker.time, "monotonic", clock.monotonic)
    due = DueWork()
    due()
    assert due.wait() is None  # checked: nothing put off
    clock.now += 0.25
    due()
    assert due.wait() == pytest.approx(WEBHOOK_RECHECK_SECONDS - 0.25)
    assert earliest(None, due.wait(), 3.0) == pytest.approx(0.75) and earliest(None, None) is None
