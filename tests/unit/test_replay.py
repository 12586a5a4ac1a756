"""Replay decisions (``pipeline.ops.dlq``) on SQLite and a StubBroker, with item hooks over a dict.

The integration tier replays real emails and webhook events; here the decisions
themselves: which options a replay keeps, what cannot be replayed, what a
failing hook or a refused enqueue leaves behind, which letters ``--all`` takes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import timedelta
from typing import Any, Optional

import dramatiq
import pytest
from dramatiq import Message
from dramatiq.brokers.stub import StubBroker
from dramatiq.errors import ConnectionClosed
from sqlalchemy.orm import Session, sessionmaker

from pipeline.middleware.backoff import Backoff
from pipeline.ops import dlq
from pipeline.ops.dlq import ReplayStatus
from storage import dead_letters
from storage.clock import utcnow
from storage.dead_letters import LetterFilter
from tests.support.dlq_support import add_dead_letter, letter
from tests.support.helpers import SHIPPED_MAX_HOLD_MS


class Things:
    """Item hooks over ``status``, a dict of thing id → status; ``broken`` plays a database error."""

    def __init__(self) -> None:
        self.status: dict[int, str] = {}
        self.broken: Optional[Exception] = None

    def revive(self, session: Session, message: Message) -> bool:  # type: ignore[type-arg]
        if self.broken is not None:
            raise self.broken
        thing = message.args[0]
        if self.status.get(thing) != "failed":
            return False
        self.status[thing] = "queued"
        return True

    def describe(self, session: Session, message: Message) -> Optional[dict[str, Any]]:  # type: ignore[type-arg]
        thing = message.args[0]
        return {"kind": "thing", "id": thing, "status": self.status[thing]} if thing in self.status else None


class DescribeOnly:
    """Item hooks of an actor whose items cannot be revived."""

    def describe(self, session: Session, message: Message) -> Optional[dict[str, Any]]:  # type: ignore[type-arg]
        return {"kind": "legacy", "id": message.args[0], "status": "failed"}


@pytest.fixture
def things() -> Things:
    return Things()


@pytest.fixture
def broker(lite: sessionmaker[Session], things: Things) -> Iterator[StubBroker]:
    stub = StubBroker(middleware=[])
    stub.add_middleware(Backoff(lite, max_hold_ms=SHIPPED_MAX_HOLD_MS))  # it declares the item_hooks option

    def send_thing(thing_id: int) -> None:
        pass

    def legacy(thing_id: int) -> None:
        pass

    def cleanup() -> None:
        pass

    dramatiq.actor(send_thing, queue_name="things", broker=stub, item_hooks=things)
    dramatiq.actor(legacy, queue_name="things", broker=stub, item_hooks=DescribeOnly())
    dramatiq.actor(cleanup, queue_name="ticks", broker=stub)
    yield stub
    stub.close()


def sent(broker: StubBroker) -> list[Message]:  # type: ignore[type-arg]
    """Every message enqueued on the broker, in any queue."""
    return [Message.decode(body) for queue in broker.queues.values() for body in list(queue.queue)]


def stamped(lite: sessionmaker[Session], dead_letter_id: int) -> bool:
    stored = letter(lite, dead_letter_id)
    assert stored is not None
    return stored.replayed_at is not None


def test_a_replay_is_a_fresh_message_keeping_only_the_options_that_still_apply(
    lite: sessionmaker[Session], broker: StubBroker, things: Things
) -> None:
    things.status[1] = "failed"
    spent = {"retries": 3, "traceback": "T", "eta": 1, "not_before": 2, "scheduled_at": "2020-01-01", "replay_of": "m0"}
    dead = add_dead_letter(
        lite, actor="send_thing", args=[1], queue="things.XQ", options={**spent, "max_retries": 7, "time_limit": 9}
    )
    original = letter(lite, dead)
    assert original is not None

    outcome = dlq.replay(broker, lite, dead)
    again = dlq.replay(broker, lite, dead)

    assert outcome.status is ReplayStatus.REPLAYED and outcome.replay_of == original.message_id
    (message,) = sent(broker)
    assert (message.queue_name, message.actor_name, message.args, message.kwargs) == ("things", "send_thing", (1,), {})
    assert message.options == {"max_retries": 7, "time_limit": 9, "replay_of": original.message_id}
    assert message.message_id == outcome.message_id != original.message_id
    assert outcome.detail == f"sent send_thing(1) as message {message.message_id}; thing 1 (queued) back in play"
    assert things.status[1] == "queued" and stamped(lite, dead)
    assert again.status is ReplayStatus.ALREADY_REPLAYED and len(sent(broker)) == 1


@pytest.mark.parametrize(
    ("letter_fields", "detail"),
    [
        ({"actor": None, "args": None, "raw_body": "\x00garbage"}, "the body was kept raw: nothing to replay"),
        ({"actor": "gone", "args": [1]}, "no actor named 'gone' in this release"),
        ({"actor": "send_thing", "args": [1, 2]}, "PoisonMessage: arguments do not fit send_thing(thing_id)"),
        ({"actor": "legacy", "args": [1]}, "the item hooks of legacy cannot revive an item"),
    ],
    ids=["raw-body", "unknown-actor", "misfit", "hooks-without-revive"],
)
def test_what_cannot_be_replayed_is_skipped_unstamped_and_nothing_is_sent(
    lite: sessionmaker[Session], broker: StubBroker, things: Things, letter_fields: dict[str, Any], detail: str
) -> None:
    things.status[1] = "failed"
    dead = add_dead_letter(lite, queue="things.XQ", **letter_fields)

    outcome = dlq.replay(broker, lite, dead)

    assert outcome.status is ReplayStatus.NOT_REPLAYABLE and outcome.detail.startswith(detail), outcome.detail
    assert sent(broker) == [] and not stamped(lite, dead) and things.status[1] == "failed"


def test_an_id_without_a_dead_letter_is_not_found(lite: sessionmaker[Session], broker: StubBroker) -> None:
    outcome = dlq.replay(broker, lite, 987654321)
    assert (outcome.status, outcome.detail) == (ReplayStatus.NOT_FOUND, "no dead letter with this id")


def test_a_hook_that_fails_changes_nothing_and_the_letter_can_be_replayed_later(
    lite: sessionmaker[Session], broker: StubBroker, things: Things, caplog: pytest.LogCaptureFixture
) -> None:
    things.status[1] = "failed"
    dead = add_dead_letter(lite, actor="send_thing", args=[1], queue="things.XQ")
    things.broken = RuntimeError("database is down")

    with caplog.at_level(logging.ERROR):
        failed = dlq.replay(broker, lite, dead)

    assert (failed.status, failed.detail) == (ReplayStatus.ERROR, "RuntimeError: database is down")
    assert f"Could not replay dead letter {dead}." in caplog.text
    assert sent(broker) == [] and not stamped(lite, dead)
    things.broken = None
    assert dlq.replay(broker, lite, dead).status is ReplayStatus.REPLAYED and len(sent(broker)) == 1


def test_a_tick_rabbitmq_refused_is_unstamped_and_replayed_by_the_next_try(
    lite: sessionmaker[Session], broker: StubBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tick has no item whose lease would send it later: the stamp is taken back instead."""
    dead = add_dead_letter(lite, actor="cleanup", args=[], queue="ticks.XQ")

    def refuse(message: Message, *, delay: Optional[int] = None) -> Message:  # type: ignore[type-arg]
        raise ConnectionClosed(RuntimeError("RabbitMQ did not confirm the message"))

    monkeypatch.setattr(broker, "enqueue", refuse)
    refused = dlq.replay(broker, lite, dead)
    monkeypatch.undo()
    retried = dlq.replay(broker, lite, dead)

    assert refused.status is ReplayStatus.ENQUEUE_FAILED
    assert refused.detail == "ConnectionClosed: RabbitMQ did not confirm the message; not stamped, replay it again"
    assert retried.status is ReplayStatus.REPLAYED and stamped(lite, dead)
    assert [m.actor_name for m in sent(broker)] == ["cleanup"]


def test_replay_all_takes_the_unreplayed_letters_of_a_queue_and_actor_oldest_first(
    lite: sessionmaker[Session], broker: StubBroker, things: Things
) -> None:
    things.status.update({1: "failed", 2: "failed", 3: "failed"})
    first = add_dead_letter(lite, actor="send_thing", args=[1], queue="things.XQ")
    done = add_dead_letter(lite, actor="send_thing", args=[2], queue="things.XQ")
    tick = add_dead_letter(lite, actor="cleanup", args=[], queue="ticks.XQ")
    other_queue = add_dead_letter(lite, actor="send_thing", args=[2], queue="elsewhere.XQ")
    last = add_dead_letter(lite, actor="send_thing", args=[3], queue="things.XQ")
    with lite.begin() as session:
        dead_letters.mark_replayed(session, done, at=utcnow())

    outcomes = list(dlq.replay_all(broker, lite, LetterFilter(queue="things.XQ", actor="send_thing")))

    assert [(o.dead_letter_id, o.status) for o in outcomes] == [
        (first, ReplayStatus.REPLAYED),
        (last, ReplayStatus.REPLAYED),
    ]
    assert [m.args for m in sent(broker)] == [(1,), (3,)]
    assert things.status == {1: "queued", 2: "failed", 3: "queued"}
    assert not stamped(lite, tick) and not stamped(lite, other_queue)
    assert [o.dead_letter_id for o in dlq.replay_all(broker, lite, LetterFilter(actor="cleanup"), dry_run=True)] == [
        tick
    ]


@pytest.mark.parametrize(("hours_ago", "risky"), [(30, True), (2, False)])
def test_a_replay_past_the_providers_key_lifetime_needs_the_duplicate_risk_accepted(
    lite: sessionmaker[Session], broker: StubBroker, things: Things, hours_ago: int, risky: bool
) -> None:
    """Resend forgets an idempotency key after 24 hours: past it, a replay may deliver the email twice."""
    things.idempotent_for = timedelta(hours=24)  # type: ignore[attr-defined]
    things.status[5] = "failed"
    dead = add_dead_letter(
        lite, actor="send_thing", args=[5], queue="things.XQ", dead_at=utcnow() - timedelta(hours=hours_ago)
    )

    refused = dlq.replay(broker, lite, dead)

    if not risky:
        assert refused.status is ReplayStatus.REPLAYED and refused.warning is None
        return
    assert refused.status is ReplayStatus.DUPLICATE_RISK and refused.status in dlq.FAILED_STATUSES
    assert "30.0 h ago" in refused.detail and "24 h" in refused.detail and "--accept-duplicate-risk" in refused.detail
    assert sent(broker) == [] and things.status[5] == "failed" and not stamped(lite, dead)
    accepted = dlq.replay(broker, lite, dead, accept_duplicate_risk=True)
    assert accepted.status is ReplayStatus.REPLAYED and "accepted" in str(accepted.warning)
    assert [m.args for m in sent(broker)] == [(5,)]


@pytest.mark.parametrize(("provider", "hours_ago", "risky"), [("smtp", 0.1, True), ("resend", 2, False)])
def test_the_provider_an_attempt_may_have_reached_decides_the_window(
    lite: sessionmaker[Session], broker: StubBroker, things: Things, provider: str, hours_ago: float, risky: bool
) -> None:
    """SMTP keeps no keys: an email whose attempt may have reached it is a risk however recent."""
    things.idempotent_for = timedelta(hours=24)  # type: ignore[attr-defined]
    things.last_reached = lambda _session, _message: (  # type: ignore[attr-defined]
        provider,
        utcnow() - timedelta(hours=hours_ago),
    )
    things.status[6] = "failed"
    dead = add_dead_letter(lite, actor="send_thing", args=[6], queue="things.XQ", dead_at=utcnow())

    outcome = dlq.replay(broker, lite, dead, dry_run=True)

    assert (outcome.status is ReplayStatus.DUPLICATE_RISK) is risky
    if risky:
        assert "smtp" in outcome.detail and "keeps no idempotency keys" in outcome.detail
