"""A worker and an archiver of the production stack on throw-away queues, for the poison-message tests.

``probe`` builds the broker the way ``minalesh-workers worker`` does (our consumer,
our middleware), declares two throw-away actors on queues of the test's own, and
runs a Dramatiq worker with ONE worker thread (a single thread killed leaves the
good messages unrun) and the archiver, on the module's own database and vhost.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import dramatiq
import pytest
from dramatiq import Message, Worker
from sqlalchemy.orm import Session, sessionmaker

from bench.harness import services
from pipeline.archiver import RabbitmqArchiver
from pipeline.bootstrap import build_broker
from pipeline.core.broker import RabbitmqBroker
from pipeline.core.settings import Settings
from storage import dead_letters
from storage.models import DeadLetter
from tests.support.dlq_support import own_env, own_services, own_sessions  # noqa: F401  (fixtures)


@dataclass
class Probe:
    """The broker, its two queues (new for each test: a regression leaves its bodies there, not in the next
    test's way), the worker, what the actors ran, and the services."""

    broker: RabbitmqBroker
    queue: str
    other_queue: str
    worker: Worker
    ran: list[tuple[str, int, str]]
    sessions: sessionmaker[Session]
    broker_url: str


@pytest.fixture
def probe(
    own_env: dict[str, str],  # noqa: F811
    own_services: services.RunServices,  # noqa: F811
    own_sessions: sessionmaker[Session],  # noqa: F811
) -> Iterator[Probe]:
    broker = build_broker(Settings.from_env(own_env))
    assert isinstance(broker, RabbitmqBroker)
    ran: list[tuple[str, int, str]] = []
    queue, other_queue = f"probe-{uuid.uuid4().hex[:8]}", f"other-{uuid.uuid4().hex[:8]}"

    def probe(n: int, tag: str = "") -> None:
        ran.append(("probe", n, tag))

    def other_probe(n: int, tag: str = "") -> None:
        ran.append(("other_probe", n, tag))

    dramatiq.actor(probe, queue_name=queue, broker=broker)
    dramatiq.actor(other_probe, queue_name=other_queue, broker=broker)
    for name in (queue, other_queue):
        broker.declare_queue(name, ensure=True)
    worker = Worker(broker, worker_threads=1, worker_timeout=100)
    worker.start()
    stop = threading.Event()
    archiver = threading.Thread(target=RabbitmqArchiver(broker, own_sessions, alerter=None).run, args=(stop,))
    archiver.start()
    yield Probe(broker, queue, other_queue, worker, ran, own_sessions, own_services.broker_url)
    stop.set()
    archiver.join(timeout=10)
    worker.stop(timeout=10_000)
    broker.close()


def body(queue: str, case: str, *, actor: str = "probe", **fields: Any) -> bytes:
    """``actor(0, tag=case)`` on ``queue`` as Dramatiq encodes it, with ``fields`` replaced (``...``: left out)."""
    message: Message = Message(  # type: ignore[type-arg]
        queue_name=queue, actor_name=actor, args=(0,), kwargs={"tag": case}, options={}
    )
    decoded = {**json.loads(message.encode()), **fields}
    return json.dumps({name: value for name, value in decoded.items() if value is not ...}).encode()


def letter_of(sessions: sessionmaker[Session], message_id: str) -> DeadLetter | None:
    with sessions() as session:
        return dead_letters.get_by_message_id(session, message_id)
