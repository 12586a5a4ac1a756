"""The strict decoder (``pipeline.core.wellformed``) and the RabbitMQ consumer's filter, without services.

What Dramatiq itself enqueues (a message, its delayed copy, a retry's hop) must
pass on the queue it is sent to, and only there; a body with one bad field must
not, with a reason an operator can act on.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import dramatiq
import pytest
from dramatiq import Message
from dramatiq.brokers.stub import StubBroker
from dramatiq.errors import DecodeError

from pipeline.core import wellformed
from pipeline.core.broker import WellFormedConsumer
from pipeline.core.wellformed import MalformedMessage
from pipeline.middleware.long_delays import send_later


def message(**options: Any) -> Message:  # type: ignore[type-arg]
    return Message(queue_name="emails", actor_name="send_email", args=(42,), kwargs={}, options=options)


def body_with(**fields: Any) -> bytes:
    """``send_email(42)`` on ``emails`` as Dramatiq encodes it, ``fields`` replaced (``...``: left out)."""
    decoded = {**json.loads(message().encode()), **fields}
    return json.dumps({name: value for name, value in decoded.items() if value is not ...}).encode()


@pytest.fixture
def stub() -> Iterator[StubBroker]:
    broker = StubBroker(middleware=[])
    dramatiq.actor(lambda email_id: None, actor_name="send_email", queue_name="emails", broker=broker)
    yield broker
    broker.close()


def enqueued(broker: StubBroker, queue: str) -> list[bytes]:
    return list(broker.queues[queue].queue)


def test_what_dramatiq_enqueues_is_well_formed_on_the_queue_it_goes_to_and_only_there(stub: StubBroker) -> None:
    actor = stub.get_actor("send_email")
    actor.send(1)
    actor.send_with_options(args=(2,), delay=10)  # Dramatiq names the delay queue in the body
    send_later(stub, actor.message(3).copy(options={"retries": 2, "traceback": "T"}), 50, 10)  # a retry's hop
    (now,) = enqueued(stub, "emails")
    later, hop = enqueued(stub, "emails.DQ")

    assert wellformed.decode(now, queue="emails") == Message.decode(now)
    assert wellformed.decode(later, queue="emails.DQ").options.keys() == {"eta"}
    assert wellformed.decode(hop, queue="emails.DQ").options["not_before"] > 0
    for body, wrong in ((now, "emails.DQ"), (later, "emails"), (hop, "emails")):
        with pytest.raises(MalformedMessage, match="but the message arrived on"):
            wellformed.decode(body, queue=wrong)
    for body in (now, later, hop):  # in the dead-letter queue, a message of either is at home
        assert wellformed.decode(body, queue="emails.XQ") == Message.decode(body)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (body_with(options=5), "options must be an object, not int"),
        (body_with(options=None), "options must be an object, not null"),
        (body_with(queue_name="webhooks"), "queue_name is 'webhooks', but the message arrived on 'emails'"),
        (body_with(actor_name=["send_email"]), "actor_name must be a string, not list"),
        (body_with(args="42"), "args must be an array, not str"),
        (body_with(args={"email_id": 42}), "args must be an array, not dict"),
        (body_with(kwargs=[42]), "kwargs must be an object, not list"),
        (body_with(message_id=12345), "message_id must be a string, not int"),
        (body_with(message_id=...), "message_id is missing"),
        (body_with(message_timestamp="now"), "message_timestamp must be an integer, not str"),
        (body_with(message_timestamp=True), "message_timestamp must be an integer, not bool"),
        (body_with(extra=1), "unexpected field 'extra'"),
        (b"[1, 2]", "the body is list, not an object"),
        (body_with(options={"retries": "3"}), "options.retries must be a count (0 to 2147483647), not '3'"),
        (body_with(options={"retries": 2**31}), "options.retries must be a count (0 to 2147483647), not 2147483648"),
        (body_with(options={"retries": -1}), "options.retries must be a count (0 to 2147483647), not -1"),
        (body_with(options={"traceback": {"frames": []}}), "options.traceback must be a string, not {'frames': []}"),
        (body_with(options={"eta": "soon"}), "options.eta must be a time in milliseconds, not 'soon'"),
        (body_with(options={"time_limit": 0}), "options.time_limit must be a number of milliseconds, not 0"),
        (body_with(options={"broker_priority": 300}), "options.broker_priority must be a priority (0 to 255), not 300"),
        (body_with(options={"throws": "ValueError"}), "options.throws cannot travel in a message"),
    ],
)
def test_a_body_with_one_bad_field_is_malformed_and_says_which(body: bytes, reason: str) -> None:
    with pytest.raises(MalformedMessage) as refused:
        wellformed.decode(body, queue="emails")
    assert str(refused.value) == reason


def test_a_long_bad_value_is_quoted_short() -> None:
    with pytest.raises(MalformedMessage) as refused:
        wellformed.decode(body_with(options={"retries": "9" * 500}), queue="emails")
    assert str(refused.value) == f"options.retries must be a count (0 to 2147483647), not '{'9' * 58}…"


@pytest.mark.parametrize("body", [b"\x00\xff not a message {", b"{", b""])
def test_a_body_that_is_not_json_is_a_decode_error_that_does_not_quote_it(body: bytes) -> None:
    with pytest.raises(DecodeError) as refused:
        wellformed.decode(body, queue="emails")
    assert not isinstance(refused.value, MalformedMessage)
    assert str(refused.value) == "Failed to decode message."


def test_options_nothing_reads_pass_untouched_and_null_eta_and_priority_are_dramatiqs_own() -> None:
    options = {"eta": None, "broker_priority": None, "custom": {"any": ["thing"]}, "retries": 0, "not_before": 1.5}
    assert wellformed.decode(message(**options).encode(), queue="emails").options == options


# --- the consumer's filter ------------------------------------------------------------------------


def consumer(queue: str, nacked: list[int]) -> WellFormedConsumer:
    """The filter of a consumer of ``queue``, without a connection: its nacks are recorded."""
    unconnected = WellFormedConsumer.__new__(WellFormedConsumer)
    unconnected.queue_name = queue
    unconnected.logger = logging.getLogger("test")
    unconnected._nack = nacked.append  # type: ignore[method-assign]
    return unconnected


def delivery(tag: int, body: bytes) -> tuple[Any, Any, bytes]:
    return SimpleNamespace(delivery_tag=tag), SimpleNamespace(headers=None), body


def test_the_consumer_nacks_what_is_malformed_for_its_queue_and_hands_on_the_rest(
    caplog: pytest.LogCaptureFixture,
) -> None:
    nacked: list[int] = []
    good, other, garbage = message().encode(), body_with(queue_name="webhooks"), b"\xff{"
    idle = (None, None, None)
    deliveries = [delivery(1, good), idle, delivery(2, other), delivery(3, garbage), delivery(4, good)]

    with caplog.at_level(logging.ERROR):
        handed = list(consumer("emails", nacked)._well_formed(iter(deliveries)))

    assert nacked == [2, 3]
    assert [(method and method.delivery_tag, body) for method, _, body in handed] == [
        (1, good),
        (None, None),
        (None, None),  # a refused body is an idle turn: the consumer thread goes on with its delayed messages
        (None, None),
        (4, good),
    ]
    assert [record.getMessage().split(";")[0] for record in caplog.records] == [
        "Dead-lettered a body from emails unrun: queue_name is 'webhooks', but the message arrived on 'emails'",
        "Dead-lettered a body from emails unrun: Failed to decode message.",
    ]
