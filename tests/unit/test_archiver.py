"""The archiver without services: what a dead message's body says, and archiving it on SQLite."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import dramatiq
import pika
import psycopg2
import pytest
from dramatiq import Message
from dramatiq.brokers.stub import StubBroker
from sqlalchemy.exc import DataError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from pipeline import archiver
from pipeline.archiver import archive_body, dead_letter_queues, decode_dead_message, raw_id
from pipeline.middleware.backoff import Backoff
from storage import dead_letters
from storage.clock import utcnow
from storage.database import transient_failure
from storage.models import FinalError
from tests.support.helpers import SHIPPED_MAX_HOLD_MS

#: How a malformed count is described.
COUNT = "a count (0 to 2147483647)"
TRACEBACK = (
    "Traceback (most recent call last):\n"
    '  File "actors/emails.py", line 120, in send_email\n'
    "pipeline.core.errors.TransientError: Resend 500: down\n"
    "\n"
)


def message(**options: Any) -> Message:  # type: ignore[type-arg]
    return Message(
        queue_name="emails", actor_name="send_email", args=(42,), kwargs={"urgent": True}, options=options
    )


def test_a_dramatiq_message_is_kept_with_its_call_its_retries_and_the_last_line_of_its_traceback() -> None:
    sent = message(retries=3, traceback=TRACEBACK, replay_of="m-0")

    dead, decoded = decode_dead_message("emails.XQ", sent.encode())

    assert decoded == sent
    assert (dead.message_id, dead.queue, dead.actor) == (sent.message_id, "emails.XQ", "send_email")
    assert (dead.args, dead.kwargs, dead.retries) == ([42], {"urgent": True}, 3)
    assert dead.options == {"retries": 3, "traceback": TRACEBACK, "replay_of": "m-0"}
    assert dead.fallback_error == "pipeline.core.errors.TransientError: Resend 500: down"
    assert dead.fallback_traceback == TRACEBACK and dead.raw_body is None


def test_a_message_without_a_traceback_died_of_an_unknown_error() -> None:
    dead, _ = decode_dead_message("emails.XQ", message().encode())
    assert (dead.fallback_error, dead.fallback_traceback, dead.retries) == ("unknown error", None, 0)


def body_with(**fields: Any) -> bytes:
    """A Dramatiq body with some fields replaced (or, given ``...``, left out)."""
    decoded = json.loads(message(retries=1).encode())
    decoded.update(fields)
    return json.dumps({name: value for name, value in decoded.items() if value is not ...}).encode()


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"\x00\xff not a message {", "DecodeError: Failed to decode message."),
        (b"[1, 2]", "MalformedMessage: the body is list, not an object"),
        (b'"send_email"', "MalformedMessage: the body is str, not an object"),
        (body_with(actor_name=...), "MalformedMessage: actor_name is missing"),
        (body_with(options=["retries", 1]), "MalformedMessage: options must be an object, not list"),
        (body_with(options={"retries": "3"}), f"MalformedMessage: options.retries must be {COUNT}, not '3'"),
        (body_with(message_id=12345), "MalformedMessage: message_id must be a string, not int"),
        (body_with(actor_name=None), "MalformedMessage: actor_name must be a string, not null"),
        (body_with(kwargs=[1]), "MalformedMessage: kwargs must be an object, not list"),
        (body_with(args="42"), "MalformedMessage: args must be an array, not str"),
        (
            body_with(queue_name="webhooks"),
            "MalformedMessage: queue_name is 'webhooks', but the message was dead-lettered into 'emails.XQ'",
        ),
    ],
    ids=[
        "not-json",
        "array",
        "string",
        "no-actor",
        "options-not-object",
        "retries-not-int",
        "id-not-string",
        "actor-null",
        "kwargs-not-object",
        "args-not-array",
        "other-queue",
    ],
)
def test_a_body_that_does_not_decode_to_a_well_formed_message_is_kept_raw(body: bytes, error: str) -> None:
    dead, decoded = decode_dead_message("emails.XQ", body)

    assert decoded is None
    assert dead.message_id == raw_id("emails.XQ", body)
    assert (dead.queue, dead.actor, dead.args, dead.kwargs) == ("emails.XQ", None, None, None)
    assert dead.raw_body == body.decode("utf-8", errors="replace")
    assert dead.fallback_error == error


def died(queue: str, *, count: int = 1, second: int = 0, **properties: Any) -> pika.BasicProperties:
    """The properties of a message RabbitMQ dead-lettered from ``queue`` (``count`` times, last at ``second``)."""
    death = {"queue": queue, "reason": "rejected", "count": count, "time": datetime(2026, 1, 1, 0, 0, second)}
    return pika.BasicProperties(headers={"x-death": [death]}, **properties)


def test_a_message_must_belong_to_the_queue_rabbitmq_says_it_died_on() -> None:
    delayed = message(eta=1).copy(queue_name="emails.DQ")  # as Dramatiq puts it in emails.DQ

    assert decode_dead_message("emails.XQ", delayed.encode())[1] == delayed  # emails.DQ's dead go to emails.XQ
    assert decode_dead_message("emails.XQ", delayed.encode(), died("emails.DQ"))[1] == delayed
    dead, decoded = decode_dead_message("emails.XQ", delayed.encode(), died("emails"))
    assert decoded is None and dead.raw_body is not None
    assert dead.fallback_error == "MalformedMessage: queue_name is 'emails.DQ', but the message arrived on 'emails'"


def test_a_raw_id_tells_queues_and_dead_letterings_apart_and_is_the_same_for_a_redelivery() -> None:
    body = b"\x00\xff not a message {"
    ids = [
        raw_id("emails.XQ", body),
        raw_id("webhooks.XQ", body),  # the same bytes on another queue
        raw_id("emails.XQ", body, died("emails")),
        raw_id("emails.XQ", body, died("emails.DQ")),
        raw_id("emails.XQ", body, died("emails", count=2)),  # redriven, and dead again
        raw_id("emails.XQ", body, died("emails", second=1)),  # sent again, dead a second later
        raw_id("emails.XQ", body, died("emails", message_id="publisher-1")),  # the publisher's own id
        raw_id("emails.XQ", body, died("emails", timestamp=1767225600)),
        raw_id("emails.XQ", body + b" "),
    ]

    assert len(set(ids)) == len(ids) and all(len(i) == len("raw-") + 32 and i.startswith("raw-") for i in ids)
    assert raw_id("emails.XQ", body, died("emails")) == ids[2]  # the same properties: a redelivery
    assert raw_id("emails.XQ", body, pika.BasicProperties()) == ids[0]


# --- archiving on SQLite --------------------------------------------------------------------------


class RecordingHooks:
    """Item hooks recording which items the archiver marked failed, and why."""

    def __init__(self) -> None:
        self.failed: list[tuple[object, str]] = []

    def given_up(self, session: Session, message: Message, *, error: str) -> None:  # type: ignore[type-arg]
        self.failed.append((message.args[0], error))


@pytest.fixture
def hooks() -> RecordingHooks:
    return RecordingHooks()


@pytest.fixture
def broker(lite: sessionmaker[Session], hooks: RecordingHooks) -> Iterator[StubBroker]:
    stub = StubBroker(middleware=[])
    stub.add_middleware(Backoff(lite, max_hold_ms=SHIPPED_MAX_HOLD_MS))

    def send_email(email_id: int, urgent: bool = False) -> None:
        pass

    def cleanup() -> None:
        pass

    dramatiq.actor(send_email, queue_name="emails", broker=stub, item_hooks=hooks)
    dramatiq.actor(cleanup, queue_name="ticks", broker=stub)
    yield stub
    stub.close()


def test_the_archiver_consumes_the_dead_letter_queue_of_every_actors_queue(broker: StubBroker) -> None:
    assert dead_letter_queues(broker) == ["emails.XQ", "ticks.XQ"]


def test_a_redelivered_dead_message_is_archived_once_with_the_final_error_the_pipeline_recorded(
    lite: sessionmaker[Session], broker: StubBroker, hooks: RecordingHooks
) -> None:
    sent = message(retries=2, traceback=TRACEBACK)  # RabbitMQ keeps the bytes of the attempt before the last
    with lite.begin() as session:
        error = "TransientError: Resend 500: still down"
        dead_letters.record_final_error(session, message_id=sent.message_id, error=error, traceback="T3", retries=3)

    written = [archive_body(lite, broker, "emails.XQ", sent.encode()) for _ in range(2)]

    assert written == [True, False]
    with lite() as session:
        stored = dead_letters.get_by_message_id(session, sent.message_id)
        leftover = session.get(FinalError, sent.message_id)
    assert stored is not None and leftover is None
    assert (stored.error, stored.traceback, stored.retries) == ("TransientError: Resend 500: still down", "T3", 3)
    assert hooks.failed == [(42, "TransientError: Resend 500: still down")] * 2  # marking failed is idempotent


def test_a_redelivery_after_a_replay_leaves_the_revived_item_alone(
    lite: sessionmaker[Session], broker: StubBroker, hooks: RecordingHooks
) -> None:
    sent = message(retries=3, traceback=TRACEBACK)
    assert archive_body(lite, broker, "emails.XQ", sent.encode())
    with lite.begin() as session:
        stored = dead_letters.get_by_message_id(session, sent.message_id)
        assert stored is not None
        dead_letters.mark_replayed(session, stored.id, at=utcnow())

    assert not archive_body(lite, broker, "emails.XQ", sent.encode())

    assert hooks.failed == [(42, "pipeline.core.errors.TransientError: Resend 500: down")]


def test_a_tick_has_no_item_to_mark_failed(
    lite: sessionmaker[Session], broker: StubBroker, hooks: RecordingHooks
) -> None:
    tick: Message = Message(queue_name="ticks", actor_name="cleanup", args=(), kwargs={}, options={})  # type: ignore[type-arg]

    assert archive_body(lite, broker, "ticks.XQ", tick.encode())

    assert hooks.failed == []
    with lite() as session:
        stored = dead_letters.get_by_message_id(session, tick.message_id)
    assert stored is not None and (stored.actor, stored.args, stored.error) == ("cleanup", [], "unknown error")


def test_a_message_of_another_queue_is_kept_raw_and_its_arguments_name_no_item(
    lite: sessionmaker[Session], broker: StubBroker, hooks: RecordingHooks
) -> None:
    stray = message(retries=3, traceback=TRACEBACK).copy(queue_name="webhooks")  # never run: the worker refused it

    assert archive_body(lite, broker, "emails.XQ", stray.encode())

    assert hooks.failed == []  # its 42 is no email of this queue's
    with lite() as session:
        (stored,) = dead_letters.list_all(session)
    assert (stored.actor, stored.args, stored.raw_body) == (None, None, stray.encode().decode())
    assert stored.error == (
        "MalformedMessage: queue_name is 'webhooks', but the message was dead-lettered into 'emails.XQ'"
    )


# --- what cannot be archived as a message ---------------------------------------------------------


def stored(lite: sessionmaker[Session]) -> list[tuple[str, Any, Any, str]]:
    with lite() as session:
        return [(row.queue, row.actor, row.raw_body, row.error) for row in dead_letters.list_all(session)]


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"retries": 3, "traceback": {"frames": []}}, "options.traceback must be a string, not {'frames': []}"),
        ({"retries": 2**64, "traceback": TRACEBACK}, f"options.retries must be {COUNT}, not 18446744073709551616"),
    ],
    ids=["traceback-not-string", "retries-past-the-column"],
)
def test_a_dead_message_whose_options_the_archive_cannot_hold_is_archived_raw(
    lite: sessionmaker[Session], broker: StubBroker, hooks: RecordingHooks, options: dict[str, Any], error: str
) -> None:
    sent = message(**options)

    assert archive_body(lite, broker, "emails.XQ", sent.encode())

    assert stored(lite) == [("emails.XQ", None, sent.encode().decode(), f"MalformedMessage: {error}")]
    assert hooks.failed == []


def test_a_dead_message_the_database_refuses_is_archived_raw_not_retried(
    lite: sessionmaker[Session], broker: StubBroker, hooks: RecordingHooks, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = dead_letters.archive

    def refusing(session: Session, dead: dead_letters.DeadMessage, **options: Any) -> bool:
        if dead.raw_body is None:  # as PostgreSQL refuses a NaN in JSONB, or a value out of range
            raise DataError("INSERT INTO dead_letters ...", {}, ValueError("invalid input syntax for type json"))
        return archive(session, dead, **options)

    monkeypatch.setattr(dead_letters, "archive", refusing)
    sent = message(retries=3, traceback=TRACEBACK)

    assert archive_body(lite, broker, "emails.XQ", sent.encode())

    ((queue, actor, raw_body, error),) = stored(lite)
    assert (queue, actor, raw_body) == ("emails.XQ", None, sent.encode().decode())
    assert error.startswith("Unarchivable: DataError: (builtins.ValueError) invalid input syntax for type json")
    assert hooks.failed == []  # rolled back with the structured row: the item is not told twice


def test_a_bug_while_archiving_a_message_keeps_it_raw(
    lite: sessionmaker[Session], broker: StubBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any) -> None:
        raise RuntimeError("the archiver has a bug")

    monkeypatch.setattr(archiver, "misfit", broken)

    assert archive_body(lite, broker, "emails.XQ", message().encode())

    assert [error for *_, error in stored(lite)] == ["Unarchivable: RuntimeError: the archiver has a bug"]


def test_an_unreachable_database_is_raised_for_a_later_try_not_archived_raw(
    lite: sessionmaker[Session], broker: StubBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unreachable(*args: Any, **options: Any) -> bool:
        raise OperationalError("INSERT INTO dead_letters ...", {}, ConnectionError("server closed the connection"))

    monkeypatch.setattr(dead_letters, "archive", unreachable)

    with pytest.raises(OperationalError):
        archive_body(lite, broker, "emails.XQ", message().encode())
    monkeypatch.undo()
    assert stored(lite) == []


class PgError(Exception):
    """A driver error with the SQLSTATE PostgreSQL gave it."""

    def __init__(self, pgcode: str | None) -> None:
        super().__init__(f"SQLSTATE {pgcode}")
        self.pgcode = pgcode


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (OperationalError("INSERT", {}, PgError(None)), True),  # no server reached
        (OperationalError("INSERT", {}, PgError("57P01")), True),  # admin shutdown
        (OperationalError("INSERT", {}, PgError("57014")), True),  # statement timeout
        (OperationalError("INSERT", {}, PgError("53100")), True),  # disk full
        (OperationalError("INSERT", {}, PgError("40P01")), True),  # deadlock
        (OperationalError("INSERT", {}, PgError("55P03")), True),  # lock timeout
        (OperationalError("INSERT", {}, PgError("54000")), False),  # index row too big: every time
        (DataError("INSERT", {}, PgError("22003")), False),  # numeric value out of range
        (DataError("INSERT", {}, PgError("22P02")), False),  # JSON it will not take
        (ValueError("a bug"), False),
        # Unwrapped, as a pooled connection's reset on check-in raises it when PostgreSQL restarts
        # (it cost an email a retry and a minute in the recovery test before).
        (psycopg2.OperationalError("server closed the connection unexpectedly"), True),
        (psycopg2.InterfaceError("connection already closed"), True),
        (psycopg2.DataError("numeric value out of range"), False),
    ],
)
def test_only_the_database_failing_for_now_is_transient(error: Exception, transient: bool) -> None:
    assert transient_failure(error) is transient


def test_an_index_row_too_big_is_no_outage_and_is_archived_raw(
    lite: sessionmaker[Session], broker: StubBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = dead_letters.archive

    def refusing(session: Session, dead: dead_letters.DeadMessage, **options: Any) -> bool:
        if dead.raw_body is None:  # psycopg2 files PostgreSQL's 54000 under OperationalError
            raise OperationalError("INSERT INTO dead_letters ...", {}, PgError("54000"))
        return archive(session, dead, **options)

    monkeypatch.setattr(dead_letters, "archive", refusing)

    assert archive_body(lite, broker, "emails.XQ", message().encode())

    ((*_, error),) = stored(lite)
    assert error == "Unarchivable: OperationalError: (tests.unit.test_archiver.PgError) SQLSTATE 54000"


def test_a_body_seen_for_the_first_time_is_kept_even_when_the_same_bytes_were_archived(
    lite: sessionmaker[Session], broker: StubBroker
) -> None:
    body, properties = b"\x00\xff not a message {", died("emails")
    sent = message(retries=3, traceback=TRACEBACK)

    def archive(body: bytes, *, first_sight: bool) -> bool:
        return archive_body(lite, broker, "emails.XQ", body, properties=properties, first_sight=first_sight)

    dead_twice = [archive(body, first_sight=True) for _ in "12"]  # two messages, byte for byte the same
    redelivered = archive(body, first_sight=False)  # the second again: an archiver died before its ack
    message_twice = [archive(sent.encode(), first_sight=True) for _ in "12"]

    assert (dead_twice, redelivered) == ([True, True], False)
    assert message_twice == [True, False]  # a message id is the message's identity: never a second row
    with lite() as session:
        ids = [row.message_id for row in dead_letters.list_all(session)]
    base = raw_id("emails.XQ", body, properties)
    assert ids[0] == base and ids[1].startswith(f"{base}-") and ids[2] == sent.message_id and len(ids) == 3


@pytest.mark.parametrize(
    ("reason", "error"),
    [
        ("delivery_limit", archiver.DELIVERY_LIMIT_ERROR),  # a quorum queue's delivery-limit
        ("maxlen", "Dead-lettered by RabbitMQ: maxlen"),
        ("rejected", "pipeline.core.errors.TransientError: Resend 500: down"),  # a worker gave it up: its traceback
    ],
)
def test_a_message_rabbitmq_dead_lettered_itself_says_why_rather_than_an_older_traceback(
    reason: str, error: str
) -> None:
    death = {"queue": "emails", "reason": reason, "count": 1, "time": datetime(2026, 1, 1)}
    properties = pika.BasicProperties(headers={"x-death": [death], "x-delivery-count": 20})

    dead, decoded = decode_dead_message("emails.XQ", message(retries=1, traceback=TRACEBACK).encode(), properties)

    assert decoded is not None and dead.fallback_error == error
