"""Poison messages without services: ``misfit`` on a StubBroker, and ``RejectPoison`` ahead of the actor."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import dramatiq
import pytest
from dramatiq import Message, Worker
from dramatiq.brokers.stub import StubBroker
from sqlalchemy.orm import Session, sessionmaker

from actors.emails import send_email
from pipeline.middleware.backoff import Backoff
from pipeline.middleware.poison import RejectPoison, misfit
from storage.models import FinalError
from tests.support.helpers import SHIPPED_MAX_HOLD_MS


def notify(order_id: str, *, urgent: bool = False) -> None:
    """An actor with a keyword-only parameter."""


@pytest.fixture
def broker() -> Iterator[StubBroker]:
    """The real ``send_email`` function, and ``notify``, declared on a broker of the test's own."""
    stub = StubBroker(middleware=[])
    dramatiq.actor(send_email.fn, actor_name="send_email", queue_name="emails", broker=stub)
    dramatiq.actor(notify, queue_name="emails", broker=stub)
    yield stub
    stub.close()


def message(actor: Any, *args: object, **kwargs: object) -> Message:  # type: ignore[type-arg]
    return Message(queue_name="emails", actor_name=actor, args=args, kwargs=kwargs, options={})


def test_misfit_names_what_cannot_run(broker: StubBroker) -> None:
    assert misfit(broker, message("send_email", 1)) is None
    assert misfit(broker, message("send_email", email_id=1)) is None
    assert "missing a required argument: 'email_id'" in (misfit(broker, message("send_email")) or "")
    assert "unexpected keyword argument 'to'" in (misfit(broker, message("send_email", 1, to="x")) or "")
    assert misfit(broker, message("gone")) == "ActorNotFound: no actor named 'gone'"


def test_misfit_shows_the_signature_without_annotations(broker: StubBroker) -> None:
    assert misfit(broker, message("notify", "MN-1", urgent=True)) is None
    assert misfit(broker, message("notify", order_id="MN-1")) is None
    assert misfit(broker, message("notify", "MN-1", True)) == (
        "PoisonMessage: arguments do not fit notify(order_id, *, urgent=False): too many positional arguments"
    )


@pytest.mark.parametrize("name", [None, 42, ["send_email"]])
def test_an_actor_name_that_is_not_a_string_is_not_found(broker: StubBroker, name: Any) -> None:
    assert misfit(broker, message(name, 1)) == f"ActorNotFound: no actor named {name!r}"


def test_a_misfit_is_dead_lettered_unrun_unretried_with_its_reason_and_the_worker_goes_on(
    lite: sessionmaker[Session],
) -> None:
    stub = StubBroker(middleware=[])
    stub.add_middleware(RejectPoison(lite))
    stub.add_middleware(Backoff(lite, max_hold_ms=SHIPPED_MAX_HOLD_MS))
    ran: list[object] = []

    def record(item_id: int) -> None:
        ran.append(item_id)

    actor = dramatiq.actor(record, broker=stub, queue_name="q", max_retries=3, retry_delay=10, max_retry_delay=10)
    poison: Message = Message(queue_name="q", actor_name="record", args=(1, "extra"), kwargs={}, options={})  # type: ignore[type-arg]
    worker = Worker(stub, worker_threads=1, worker_timeout=10)
    worker.start()
    try:
        stub.enqueue(poison)
        actor.send(2)
        stub.join("q", fail_fast=False, timeout=10_000)
        worker.join()
    finally:
        worker.stop()
        stub.close()

    assert ran == [2]
    assert [dead.message_id for dead in stub.dead_letters] == [poison.message_id]
    with lite() as session:
        final = session.get(FinalError, poison.message_id)
    assert final is not None and (final.retries, final.traceback) == (0, None)
    assert final.error == "PoisonMessage: arguments do not fit record(item_id): too many positional arguments"
