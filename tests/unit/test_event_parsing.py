"""``storage.payments.parse_event`` on bodies a provider would never send but a signer could: bounded depth."""

from __future__ import annotations

import json

import pytest

from storage.payments import MAX_DEPTH, InvalidEvent, parse_event

EVENT = {"event_id": "e-1", "type": "payment.succeeded", "order_id": "o-1", "amount": "1.00", "currency": "ETB"}


def nested(levels: int) -> bytes:
    """The event with ``extra`` holding arrays such that the whole body is ``levels`` deep."""
    inner: object = []
    for _ in range(levels - 2):
        inner = [inner]
    return json.dumps({**EVENT, "extra": inner}).encode()


def test_an_event_as_deep_as_allowed_is_taken() -> None:
    assert parse_event(nested(MAX_DEPTH)).event_id == "e-1"


@pytest.mark.parametrize("levels", [MAX_DEPTH + 1, 5_000, 100_000])
def test_an_event_nested_deeper_is_invalid_not_an_error(levels: int) -> None:
    """100,000 levels made the parser raise RecursionError, which the intake answered with a 500."""
    raw = nested(levels) if levels < 900 else b'{"extra": ' + b"[" * levels + b"]" * levels + b"}"
    with pytest.raises(InvalidEvent, match=f"nested more than {MAX_DEPTH} levels deep"):
        parse_event(raw)
