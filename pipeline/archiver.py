"""The archiver: empties the dead-letter queues into ``dead_letters``.

Dramatiq nacks a given-up message into ``<queue>.XQ``, where RabbitMQ keeps it for
seven days and then drops it. The archiver consumes every XQ, writes each message
once (keyed by message id, so redeliveries are harmless), marks its item failed,
and only then acks: a crash or a database outage loses nothing, the message is
delivered again.

A poison message (not a well-formed message for the queue it died on, unknown actor,
misfitting arguments: ``pipeline.middleware.poison``) is kept with its raw body and never
handed to the item hooks; so is a message the database will not take as one (a value
it refuses): every XQ shares the archiver's one consumer, so a message retried for
ever would hold up every queue. Only a database failing for now is waited for. A raw
body's id is made of the body, its queue and what RabbitMQ says of its death
(``raw_id``), so distinct deaths of the same bytes are all kept, and a redelivery once.
Each new row pokes the dead-letter alerter (``pipeline.core.alerts``), which works in its
own thread.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any, Optional

import pika
import pika.exceptions
from dramatiq import Broker, Message
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.brokers.stub import StubBroker
from dramatiq.common import xq_name
from dramatiq.errors import DecodeError
from pika.adapters.blocking_connection import BlockingChannel
from pika.spec import Basic
from sqlalchemy.orm import Session, sessionmaker

from pipeline.core import wellformed
from pipeline.core.alerts import Alerter
from pipeline.core.connection_errors import in_words
from pipeline.core.errors import describe
from pipeline.core.item_hooks import ItemHooks, hooks_of
from pipeline.middleware.poison import misfit
from storage import dead_letters
from storage.database import transient_failure
from storage.dead_letters import DeadMessage

logger = logging.getLogger(__name__)

#: Messages the archiver may hold unacked at once.
PREFETCH = 100
#: Longest pause between tries while RabbitMQ or PostgreSQL is unreachable (seconds).
MAX_PAUSE_SECONDS = 30.0
#: The fields of an ``x-death`` entry that tell one dead-lettering from another (``raw_id``).
DEATH_FIELDS = ("queue", "reason", "count", "time")
#: The error of a message a quorum queue dead-lettered for its ``delivery-limit`` (README: "Running on a
#: RabbitMQ cluster"): its worker died, or lost its node, every time it held it.
DELIVERY_LIMIT_ERROR = "DeliveryLimit: redelivered past the queue's delivery-limit; a worker never finished it"
#: The error of a dead message the database would not take as a message, kept raw instead.
UNARCHIVABLE = "Unarchivable"


def decode_dead_message(
    queue: str, body: bytes, properties: Optional[pika.BasicProperties] = None
) -> tuple[DeadMessage, Optional[Message]]:
    """What the archive should say of ``body``; one that is not a well-formed message is kept raw.

    When RabbitMQ says which queue the message died on (``x-death``), its body must
    be a message of that very queue, as the worker required (``pipeline.core.wellformed``);
    otherwise, of ``queue``'s main or delay queue.
    """
    try:
        message = wellformed.decode(body, queue=died_on(properties) or queue)
    except DecodeError as exc:
        return raw_dead_message(queue, body, properties, error=f"{type(exc).__name__}: {exc}"), None
    options = dict(message.options)
    return (
        DeadMessage(
            message_id=message.message_id,
            queue=queue,
            actor=message.actor_name,
            args=list(message.args),
            kwargs=dict(message.kwargs),
            options=options,
            fallback_error=broker_cause(properties) or _last_line(options.get("traceback")) or "unknown error",
            fallback_traceback=options.get("traceback"),
            retries=int(options.get("retries", 0)),
        ),
        message,
    )


def raw_dead_message(
    queue: str, body: bytes, properties: Optional[pika.BasicProperties] = None, *, error: str
) -> DeadMessage:
    """``body`` kept as received, under its ``raw_id``, with ``error`` saying why it is kept raw."""
    raw = body.decode("utf-8", errors="replace")
    return DeadMessage(message_id=raw_id(queue, body, properties), queue=queue, raw_body=raw, fallback_error=error)


def raw_id(queue: str, body: bytes, properties: Optional[pika.BasicProperties] = None) -> str:
    """The id of a dead letter kept raw: one per dead-lettering of a body, the same for its redeliveries.

    A hash of the body alone merged the same bytes dead on two queues, or dead
    twice. RabbitMQ gives a message no id, but stamps each dead-lettering in the
    ``x-death`` header: the queue, the reason, how many times (``count``) and when
    (to the second). Those, the dead-letter queue, and the publisher's own
    ``message_id`` and ``timestamp`` properties when it set them, are hashed with
    the body. A redelivery (the archiver died before its ack) carries the same
    properties, so it gets the same id and is archived once. What no property
    tells apart, the same bytes dead on the same queue for the same reason within
    one second, the delivery does: see ``archive_body``'s ``first_sight``.
    """
    identity = {
        "queue": queue,
        "deaths": [[death.get(name) for name in DEATH_FIELDS] for death in _deaths(properties)],
        "message_id": getattr(properties, "message_id", None),
        "timestamp": getattr(properties, "timestamp", None),
    }
    text = json.dumps(identity, sort_keys=True, default=str)
    digest = hashlib.sha256(text.encode() + b"\0" + body).hexdigest()
    return f"raw-{digest[:32]}"


def broker_cause(properties: Optional[pika.BasicProperties]) -> Optional[str]:
    """Why RabbitMQ itself dead-lettered a message, when no worker gave it up (``x-death`` reason not
    ``rejected``): on a quorum queue, ``delivery_limit`` (redelivered past its ``delivery-limit``, as a
    message whose worker dies each time it runs is). A traceback the message carries is then an older
    attempt's, not why it died."""
    deaths = _deaths(properties)
    reason = deaths[0].get("reason") if deaths else None
    if not isinstance(reason, str) or reason == "rejected":
        return None
    if reason == "delivery_limit":
        return DELIVERY_LIMIT_ERROR
    return f"Dead-lettered by RabbitMQ: {reason}"


def died_on(properties: Optional[pika.BasicProperties]) -> Optional[str]:
    """The queue RabbitMQ last dead-lettered a message from (``x-death`` lists the newest first), if it says."""
    deaths = _deaths(properties)
    queue = deaths[0].get("queue") if deaths else None
    return queue if isinstance(queue, str) else None


def _deaths(properties: Optional[pika.BasicProperties]) -> list[dict[str, Any]]:
    headers = getattr(properties, "headers", None) or {}
    deaths = headers.get("x-death") if isinstance(headers, dict) else None
    return [death for death in deaths if isinstance(death, dict)] if isinstance(deaths, list) else []


def _last_line(text: Optional[str]) -> Optional[str]:
    lines = [line for line in (text or "").splitlines() if line.strip()]
    return lines[-1].strip() if lines else None


def archive_body(
    sessions: sessionmaker[Session],
    broker: Broker,
    queue: str,
    body: bytes,
    *,
    properties: Optional[pika.BasicProperties] = None,
    first_sight: bool = False,
) -> bool:
    """Archive one dead message and mark its item failed, in one transaction; True if this call wrote it.

    Whatever keeps it from being archived as a message (a value the database
    refuses, a bug) other than the database failing for now archives it raw
    instead: retried, it would fail again for ever and hold up every queue behind
    it. A transient failure (``storage.database.transient_failure``: unreachable,
    a deadlock, a timeout) is raised, for the caller to try again later.

    ``first_sight``: no archiver can have written this delivery yet (RabbitMQ had
    never delivered it, and this is the first try). A raw id already taken is then
    another message's, the same bytes dead in the same second, and this one is
    kept too, under an id of its own; otherwise a taken id means "archived".
    """
    try:
        return _archive(sessions, broker, queue, body, properties, first_sight)
    except Exception as exc:
        if transient_failure(exc):
            raise
        logger.exception("Could not archive a dead message from %s as a message; keeping it raw.", queue)
        dead = raw_dead_message(queue, body, properties, error=f"{UNARCHIVABLE}: {describe(exc)}")
        with sessions.begin() as session:
            written = dead_letters.archive(session, dead, fresh=first_sight)
        if written:
            logger.warning("Archived dead message %s from %s (raw body).", dead.message_id, queue)
        return written


def _archive(
    sessions: sessionmaker[Session],
    broker: Broker,
    queue: str,
    body: bytes,
    properties: Optional[pika.BasicProperties],
    first_sight: bool,
) -> bool:
    dead, message = decode_dead_message(queue, body, properties)
    poisoned = misfit(broker, message) if message is not None else None
    if poisoned is not None:  # kept as sent, and no item hooks: its arguments name no item
        dead = replace(dead, fallback_error=poisoned, raw_body=body.decode("utf-8", errors="replace"))
    hooks = hooks_of(broker, message.actor_name) if poisoned is None and message is not None else None
    with sessions.begin() as session:
        written = dead_letters.archive(session, dead, fresh=first_sight and message is None)
        if hooks is not None and message is not None:
            _mark_item_failed(session, hooks, message, dead.message_id)
    if written:
        logger.warning("Archived dead message %s from %s (%s).", dead.message_id, queue, dead.actor or "raw body")
    return written


def _mark_item_failed(session: Session, hooks: ItemHooks, message: Message, message_id: str) -> None:
    """The item is failed already unless the pipeline could not say so; bad args must not block."""
    stored = dead_letters.get_by_message_id(session, message_id)
    if stored is not None and stored.replayed_at is not None:
        return  # a redelivery after `dlq replay` revived the item: leave it in play
    error = stored.error if stored is not None else "dead-lettered"
    try:
        with session.begin_nested():
            hooks.given_up(session, message, error=error)
    except Exception:
        logger.exception("Could not mark the item of dead message %s failed.", message_id)


def dead_letter_queues(broker: Broker) -> list[str]:
    """The XQ of every queue an actor of ``broker`` uses."""
    return sorted({xq_name(actor.queue_name) for actor in broker.actors.values()})


class RabbitmqArchiver:
    """Consumes every XQ over its own connection until ``stop`` is set."""

    def __init__(
        self, broker: RabbitmqBroker, sessions: sessionmaker[Session], *, alerter: Optional[Alerter]
    ) -> None:
        self.broker = broker
        self.sessions = sessions
        #: Told of each new dead letter: the process's (``Runtime.alerter``), or None for no alerts.
        self.alerter = alerter

    def run(self, stop: threading.Event) -> None:
        if self.alerter is not None:
            self.alerter.start(stop)
        pause = 1.0
        while not stop.is_set():
            try:
                self._consume(stop)
                pause = 1.0
            except (pika.exceptions.AMQPError, OSError) as exc:
                logger.warning("Archiver lost RabbitMQ (%s); retrying in %.0fs.", in_words(exc), pause)
                stop.wait(pause)
                pause = min(pause * 2, MAX_PAUSE_SECONDS)

    def _consume(self, stop: threading.Event) -> None:
        for actor in self.broker.actors.values():
            self.broker.declare_queue(actor.queue_name, ensure=True)
        connection = pika.BlockingConnection(self.broker.parameters)
        try:
            channel = connection.channel()
            channel.basic_qos(prefetch_count=PREFETCH)
            for queue in dead_letter_queues(self.broker):
                channel.basic_consume(queue, self._callback(connection, queue))
            logger.info("Archiver consuming %s.", ", ".join(dead_letter_queues(self.broker)))
            while not stop.is_set():
                connection.process_data_events(time_limit=0.5)
        finally:
            if connection.is_open:
                connection.close()

    def _callback(self, connection: pika.BlockingConnection, queue: str) -> Callable[..., None]:
        def on_message(
            channel: BlockingChannel, method: Basic.Deliver, properties: pika.BasicProperties, body: bytes
        ) -> None:
            tag = method.delivery_tag
            assert tag is not None  # a delivery always carries its tag (pika types every frame field as optional)
            first_sight = not method.redelivered
            pause = 1.0
            while True:  # only a database failing for now gets here twice: nothing a message causes
                try:
                    written = archive_body(
                        self.sessions, self.broker, queue, body, properties=properties, first_sight=first_sight
                    )
                    if written and self.alerter is not None:
                        self.alerter.poke()
                    channel.basic_ack(tag)
                    return
                except Exception:
                    logger.exception("Could not archive a message from %s; retrying in %.0fs.", queue, pause)
                    first_sight = False  # the failed try may have committed all the same
                    connection.sleep(pause)
                    pause = min(pause * 2, MAX_PAUSE_SECONDS)

        return on_message


class StubArchiver:
    """The ``dev`` mode's archiver: drains the in-memory broker's dead letters."""

    def __init__(
        self,
        broker: StubBroker,
        sessions: sessionmaker[Session],
        *,
        alerter: Optional[Alerter],
        interval: float = 0.5,
    ) -> None:
        self.broker = broker
        self.sessions = sessions
        self.interval = interval
        self.alerter = alerter

    def drain(self) -> int:
        """Archive every dead letter now; return how many were new."""
        written = 0
        for queue, messages in self.broker.dead_letters_by_queue.items():
            while messages:
                proxy = messages[0]
                body = proxy._message.encode()
                written += archive_body(self.sessions, self.broker, xq_name(queue), body, first_sight=True)
                messages.pop(0)
        return written

    def run(self, stop: threading.Event) -> None:
        if self.alerter is not None:
            self.alerter.start(stop)
        while not stop.is_set():
            try:
                if self.drain() and self.alerter is not None:
                    self.alerter.poke()
            except Exception:
                logger.exception("Dev archiver failed; retrying.")
                time.sleep(self.interval)
            stop.wait(self.interval)
