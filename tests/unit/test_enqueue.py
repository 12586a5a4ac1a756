"""Sending claimed rows' messages: at a refusal, the claims of the unsent messages go back at once."""

from __future__ import annotations

from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from pipeline.core import enqueue, runtime
from pipeline.core.enqueue import Send, send_each, send_or_release
from storage import emails


class Actor:
    """A declared actor's ``send``, refusing the ids in ``refused``."""

    actor_name = "send_thing"

    def __init__(self, *refused: int) -> None:
        self.refused = set(refused)
        self.sent: list[int] = []

    def send(self, item: int) -> None:
        if item in self.refused:
            raise ConnectionError("broker gone")
        self.sent.append(item)


@pytest.fixture
def released(lite: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch) -> list[list[int]]:
    calls: list[list[int]] = []
    monkeypatch.setattr(runtime, "current", lambda: SimpleNamespace(sessions=lite))
    monkeypatch.setattr(enqueue.leases, "release_claims", lambda _table, _session, ids: calls.append(list(ids)))
    return calls


def test_every_message_sent_releases_nothing(released: list[list[int]]) -> None:
    actor = Actor()
    send_each([(actor, 1), (actor, 2)], emails.TABLE)  # type: ignore[list-item]
    assert (actor.sent, released) == ([1, 2], [])


def test_a_refusal_hands_back_that_claim_and_every_later_one_then_raises(released: list[list[int]]) -> None:
    actor = Actor(2)
    with pytest.raises(ConnectionError):
        send_each([(actor, 1), (actor, 2), (actor, 3)], emails.TABLE)  # type: ignore[list-item]
    assert (actor.sent, released) == ([1], [[2, 3]])


def test_the_claims_of_unsent_messages_may_stand_for_more_rows(released: list[list[int]]) -> None:
    batch, single = Actor(10), Actor()

    def claims(_session: Session, unsent: Sequence[Send]) -> list[int]:
        rows = {10: [100, 101]}
        return [row for actor, item in unsent for row in (rows[item] if actor is batch else [item])]

    sends: list[Any] = [(batch, 10), (single, 7)]
    with pytest.raises(ConnectionError):
        send_each(sends, emails.TABLE, claims=claims)
    assert (single.sent, released) == ([], [[100, 101, 7]])


def test_send_or_release_says_false_and_hands_the_claim_back(released: list[list[int]]) -> None:
    assert send_or_release(Actor(5), emails.TABLE, 5) is False  # type: ignore[arg-type]
    assert send_or_release(Actor(), emails.TABLE, 6) is True  # type: ignore[arg-type]
    assert released == [[5]]
