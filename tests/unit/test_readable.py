"""``stats`` and ``sending status`` for people: no Python repr, times in UTC with how long ago, numbers aligned.

``stats --json`` stays what it was: ``json.dumps`` of the figures, times as ``str``.
"""

from __future__ import annotations

import importlib
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from click.testing import CliRunner

from pipeline.cli.readable import moment, number, render

NOW = datetime(2026, 12, 3, 1, 7, 3, tzinfo=UTC)
#: The module of the ``stats`` command (``pipeline.cli`` exports the command under the same name).
stats_command = importlib.import_module("pipeline.cli.stats")


def realistic(now: datetime) -> dict[str, Any]:
    """What ``pipeline.ops.stats.collect`` returns on a busy day: datetimes, None, flags, epoch seconds, lists."""
    return {
        "emails": {"failed": 2, "pending": 3, "sent": 1200},
        "emails_by_priority": {
            "transactional": {"pending": 0, "queued": 1, "sending": 0, "retrying": 2},
            "bulk": {"pending": 3, "queued": 0, "sending": 0, "retrying": 0},
        },
        "dead_letters": 5,
        "dead_letters_by_queue": {"emails.XQ": 4, "webhooks.XQ": 1},
        "dead_letter_groups": [
            {
                "queue": "emails.XQ",
                "actor": "send_email",
                "count": 4,
                "unreplayed": 3,
                "oldest": now - timedelta(days=2, hours=1),
                "newest": now - timedelta(minutes=5),
            },
            {
                "queue": "webhooks.XQ",
                "actor": None,
                "count": 1,
                "unreplayed": 1,
                "oldest": (now - timedelta(hours=3)).replace(tzinfo=None),  # SQLite's naive UTC
                "newest": now - timedelta(hours=3),
            },
        ],
        "reservations": {"active": 15, "expired_not_released": 0, "released_last_hour": 17},
        "orders": {"stock_short": 2, "stock_short_newest": ["MN-1002", "MN-1001"]},
        "webhooks": {
            "by_status": {"pending": 0, "processed": 31, "failed": 1},
            "awaiting_retry": 1,
            "archived": 0,
            "average_retries": 0.25,
            "due_now": 0,
        },
        "periodic": {
            "prune_dead_letters": {
                "last_success_at": (now - timedelta(minutes=2)).isoformat(),
                "last_failure_at": None,
                "last_error": None,
            }
        },
        "sending": {
            "paused_by_operator": False,
            "bulk_paused": True,
            "operator_pauses": {
                "all": None,
                "bulk": {
                    "until": (now + timedelta(minutes=58)).timestamp(),
                    "reason": "campaign review",
                    "paused_at": (now - timedelta(minutes=2)).timestamp(),
                    "by": "cli",
                },
            },
            "per_second": 2.0,
            "configured_per_second": 2.0,
            "cap_per_second": 10.0,
            "provider_limit": None,
            "paused": False,
            "pause_reason": None,
            "paused_until": None,
            "paused_since": None,
        },
    }


#: Python reprs that must never reach a person.
REPRS = ("datetime.datetime(", "datetime.timezone", "{'", "['", "None", "True", "False")


def test_the_stats_of_a_busy_day_read_as_text_with_no_repr() -> None:
    text = "\n".join(render(realistic(NOW), now=NOW))

    for repr_text in REPRS:
        assert repr_text not in text
    lines = text.splitlines()
    assert lines[:5] == ["emails:", "  failed:      2", "  pending:     3", "  sent:    1,200", ""]
    table = lines.index("dead_letter_groups:")
    assert lines[table + 1 : table + 4] == [
        "  queue        actor       count  unreplayed  oldest                             newest",
        "  emails.XQ    send_email      4           3  2026-12-01 00:07:03 UTC (2 d ago)  "
        "2026-12-03 01:02:03 UTC (5 min ago)",
        "  webhooks.XQ  —               1           1  2026-12-02 22:07:03 UTC (3 h ago)  "
        "2026-12-02 22:07:03 UTC (3 h ago)",
    ]
    for line in (
        "dead_letters: 5",
        "  stock_short_newest: MN-1002, MN-1001",
        "  average_retries: 0.25",
        "    last_success_at: 2026-12-03 01:05:03 UTC (2 min ago)",
        "    last_failure_at: —",
        "      until:     2026-12-03 02:05:03 UTC (in 58 min)",
        "  bulk_paused:           yes",
        "  cap_per_second:        10",
        "  provider_limit:        —",
    ):
        assert line in lines


@pytest.mark.parametrize(
    ("value", "text"),
    [(1200, "1,200"), (2.0, "2"), (0.25, "0.25"), (1 / 3, "0.333"), (1_234_567.5, "1,234,567.5")],
)
def test_numbers(value: float, text: str) -> None:
    assert number(value) == text


@pytest.mark.parametrize(
    ("offset", "when"),
    [
        (timedelta(0), "just now"),
        (timedelta(seconds=-42), "42 s ago"),
        (timedelta(minutes=-90), "1 h ago"),
        (timedelta(days=3, hours=5), "in 3 d"),
    ],
)
def test_a_moment_is_utc_and_how_long_ago(offset: timedelta, when: str) -> None:
    at = NOW + offset
    assert moment(at.astimezone(), NOW) == f"{at:%Y-%m-%d %H:%M:%S} UTC ({when})"


def test_the_stats_command_prints_text_for_people_and_the_same_json_as_before(monkeypatch: pytest.MonkeyPatch) -> None:
    figures = realistic(datetime.now(UTC))
    monkeypatch.setattr(stats_command, "runtime_from_env", lambda **_: None)
    monkeypatch.setattr(stats_command, "collect", lambda runtime: figures)

    text = CliRunner().invoke(stats_command.stats, [])
    as_json = CliRunner().invoke(stats_command.stats, ["--json"])

    assert text.exit_code == 0 and "newest" in text.output and "(5 min ago)" in text.output
    for repr_text in REPRS:
        assert repr_text not in text.output
    assert as_json.exit_code == 0 and as_json.output == json.dumps(figures, indent=2, default=str) + "\n"
