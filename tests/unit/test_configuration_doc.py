"""docs/configuration.md is generated from ``Settings`` and must say what the code does."""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import pytest

from pipeline.core import settings_doc
from pipeline.core.settings import Settings, _cron, setting

PAGE = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
REGENERATE = "python -m pipeline.core.settings_doc > docs/configuration.md"


@dataclass(frozen=True, kw_only=True, repr=False)
class _Grown(Settings):
    """``Settings`` with one more field, as the next engineer will add one."""

    #: When the daily report is mailed.
    report_schedule: str = setting("REPORT_SCHEDULE", _cron, "0 6 * * *")


def test_the_committed_page_is_what_the_settings_render() -> None:
    assert PAGE.read_text(encoding="utf-8") == settings_doc.render(), (
        f"docs/configuration.md disagrees with pipeline/core/settings.py: regenerate it with `{REGENERATE}`"
    )


def test_a_new_field_changes_the_page(monkeypatch: pytest.MonkeyPatch) -> None:
    before = settings_doc.render()
    monkeypatch.setattr(settings_doc, "Settings", _Grown)
    after = settings_doc.render()
    assert after != before
    assert "| `REPORT_SCHEDULE` (`report_schedule`) | `0 6 * * *` |" in after
    assert "When the daily report is mailed." in after  # its #: comment


def test_every_variable_has_a_meaning() -> None:
    bare = [row.variable for row in settings_doc.rows() if row.meaning == "—"]
    assert not bare, f"neither a #: comment in settings.py nor a note in settings_doc.NOTES: {bare}"


def test_every_setting_is_a_row() -> None:
    listed = {row.variable for row in settings_doc.rows()}
    assert {spec.metadata["variable"] for spec in fields(Settings) if "variable" in spec.metadata} <= listed


def test_notes_name_only_variables_that_exist() -> None:
    stale = set(settings_doc.NOTES) - {row.variable for row in settings_doc.rows()}
    assert not stale, f"settings_doc.NOTES describes variables the settings no longer have: {sorted(stale)}"
