"""Figures for people: the text form of ``stats`` and ``sending status`` (``--json`` is for scripts).

A dict is a section, its entries indented under its name, top-level sections apart by a
blank line; the plain values of a section line up in one column, numbers right-aligned
with thousands separated. A list of dicts is a table, a list of plain values one line.
A time (a ``datetime``, an ISO-8601 string, or seconds since the epoch under a key that
names a moment: ``until``, ``…_at``, ``…_until``, ``…_since``) is shown in UTC with how
long ago or how soon; a ratio under a key ending ``_rate`` is a percentage. None is ``—``, a
flag ``yes`` or ``no``, an empty list or dict ``none``. No value is ever shown as its Python repr.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Optional

from storage.clock import utcnow

#: How None is shown.
NOTHING = "—"
#: How an empty list or dict is shown.
EMPTY = "none"
#: The spaces per level of nesting.
INDENT = 2
#: Keys whose number is a moment in seconds since the epoch (the limiter's and the pauses' clock).
MOMENT_KEY = re.compile(r"^until$|_(at|until|since)$")
#: A string that is an ISO-8601 time (a date alone stays text).
ISO_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}")
#: The units of a relative time, largest first: (seconds in one, name).
UNITS = ((86_400, "d"), (3_600, "h"), (60, "min"), (1, "s"))


def render(figures: Mapping[str, Any], *, now: Optional[datetime] = None) -> list[str]:
    """The lines that show ``figures``; times relative to ``now`` (this host's clock by default)."""
    return _section(figures, 0, now or utcnow())


def _section(figures: Mapping[Any, Any], depth: int, now: datetime) -> list[str]:
    """A dict's entries at ``depth``: plain values in one column, nested ones under their key."""
    pad = " " * (INDENT * depth)
    entries = [(str(key), value) for key, value in figures.items()]
    plain = {key: shown(key, value, now) for key, value in entries if not _nested(value)}
    key_width = max((len(key) for key in plain), default=0) + 1
    numbers = [plain[key] for key, value in entries if key in plain and _is_number(key, value)]
    number_width = max(map(len, numbers), default=0)
    blocks: list[list[str]] = []
    for key, value in entries:
        if key in plain:
            text = plain[key].rjust(number_width) if _is_number(key, value) else plain[key]
            blocks.append([f"{pad}{key + ':':<{key_width}} {text}"])
        elif isinstance(value, Mapping):
            blocks.append([f"{pad}{key}:", *_section(value, depth + 1, now)])
        else:
            blocks.append([f"{pad}{key}:", *_table(value, pad + " " * INDENT, now)])
    lines: list[str] = []
    for previous, block in zip([None, *blocks], blocks, strict=False):
        if depth == 0 and previous is not None and (len(previous) > 1 or len(block) > 1):
            lines.append("")  # top-level sections apart
        lines.extend(block)
    return lines


def _table(rows: Sequence[Mapping[str, Any]], pad: str, now: datetime) -> list[str]:
    """Rows under their keys as headers; a column of numbers right-aligned."""
    headers = list(dict.fromkeys(key for row in rows for key in row))
    cells = [[shown(header, row.get(header), now) for header in headers] for row in rows]
    numeric = [all(_is_number(h, row.get(h)) or row.get(h) is None for row in rows) for h in headers]
    widths = [max(len(header), *(len(row[i]) for row in cells)) for i, header in enumerate(headers)]
    lines = []
    for row in [headers, *cells]:
        justified = [
            cell.rjust(width) if right and row is not headers else cell.ljust(width)
            for cell, width, right in zip(row, widths, numeric, strict=True)
        ]
        lines.append(pad + "  ".join(justified).rstrip())
    return lines


def shown(key: str, value: Any, now: datetime) -> str:
    """One value as text, never its repr."""
    if value is None:
        return NOTHING
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, datetime):
        return moment(value, now)
    if isinstance(value, (int, float)):
        if MOMENT_KEY.search(key) and math.isfinite(value):
            return moment(datetime.fromtimestamp(value, UTC), now)
        if key.endswith("_rate") and math.isfinite(value):
            return percent(value)
        return number(value)
    if isinstance(value, str):
        return _iso_moment(value, now) or value
    if isinstance(value, (Mapping, list, tuple, set, frozenset)) and not value:
        return EMPTY
    if isinstance(value, Mapping):
        return ", ".join(f"{k}: {shown(str(k), item, now)}" for k, item in value.items())
    if isinstance(value, (list, tuple, set, frozenset)):
        return ", ".join(shown(key, item, now) for item in value)
    return str(value)


def number(value: float) -> str:
    """``1,200``, ``0.25``, ``2``: thousands separated, at most three decimals, no trailing zeros."""
    if isinstance(value, int) or value.is_integer():
        return f"{int(value):,}"
    return f"{value:,.3f}".rstrip("0").rstrip(".")


def percent(ratio: float) -> str:
    """A ratio (``…_rate``: bounces per send) as a percentage to the hundredth of a basis point: ``0.08%``."""
    return f"{ratio * 100:.4f}".rstrip("0").rstrip(".") + "%"


def moment(value: datetime, now: datetime) -> str:
    """``2026-12-03 01:02:03 UTC (5 min ago)``; a naive time is taken as UTC, as storage writes them."""
    at = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    seconds = (now - at).total_seconds()
    when = "just now" if abs(seconds) < 1 else f"{span(abs(seconds))} ago" if seconds > 0 else f"in {span(-seconds)}"
    return f"{at:%Y-%m-%d %H:%M:%S} UTC ({when})"


def span(seconds: float) -> str:
    """``5 min``: the largest unit that fits, rounded down."""
    for size, name in UNITS:
        if seconds >= size:
            return f"{int(seconds // size)} {name}"
    return "0 s"


def _iso_moment(text: str, now: datetime) -> Optional[str]:
    if not ISO_TIME.match(text):
        return None
    try:
        return moment(datetime.fromisoformat(text), now)
    except ValueError:
        return None


def _nested(value: Any) -> bool:
    """Shown under its key: a dict with entries, or a table (a list of dicts)."""
    if isinstance(value, Mapping):
        return bool(value)
    return isinstance(value, (list, tuple)) and bool(value) and all(isinstance(row, Mapping) for row in value)


def _is_number(key: str, value: Any) -> bool:
    """Shown as a number (right-aligned): not a flag, not a moment."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not MOMENT_KEY.search(key)
