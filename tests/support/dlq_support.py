"""Helpers of the dead-letter tests: a database and vhost of their own, raw publishes, the CLI's JSON, replays."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, Optional

import pika
import pytest
from dramatiq import Message
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from actors.emails import send_email
from bench.harness import services
from bench.harness.fake_resend import FakeResend
from bench.harness.processes import run_cli
from pipeline import archiver
from pipeline.core.runtime import Runtime
from pipeline.ops import dlq
from pipeline.ops.dlq import ReplayOutcome
from storage import dead_letters, emails, migrate
from storage.database import get_engine, get_sessionmaker
from storage.dead_letters import DeadMessage
from storage.models import DeadLetter, EmailQueue
from tests.support.helpers import insert_email, unique_address, wait_until


@pytest.fixture(scope="module")
def own_services() -> Iterator[services.RunServices]:
    """A migrated database and an empty vhost apart from the in-process worker's, which would take messages."""
    created = services.create()
    migrate.upgrade(created.database_url)
    yield created
    get_engine(created.database_url).dispose()
    services.destroy(created)


@pytest.fixture
def own_env(environment: dict[str, str], own_services: services.RunServices) -> dict[str, str]:
    """The run's variables pointed at ``own_services``."""
    return {**environment, "DATABASE_URL": own_services.database_url, "BROKER_URL": own_services.broker_url}


@pytest.fixture
def own_sessions(own_services: services.RunServices) -> sessionmaker[Session]:
    return get_sessionmaker(own_services.database_url)


def dramatiq_body(
    actor: str,
    args: list[Any],
    *,
    queue: str = "emails",
    kwargs: Optional[dict[str, Any]] = None,
    options: Optional[dict[str, Any]] = None,
) -> tuple[str, bytes]:
    """A message as Dramatiq encodes it, and its id."""
    message: Message = Message(
        queue_name=queue, actor_name=actor, args=tuple(args), kwargs=kwargs or {}, options=options or {}
    )
    return message.message_id, message.encode()


def raw_id(body: bytes, *, queue: str = "emails.XQ") -> str:
    """The message id the archiver gives a body kept raw that was published straight into ``queue``.

    A body the worker dead-lettered carries RabbitMQ's ``x-death`` header, which is
    part of its id: find those with ``raw_letters``.
    """
    return archiver.raw_id(queue, body)


def raw_letters(sessions: sessionmaker[Session], marker: str) -> list[DeadLetter]:
    """The dead letters whose raw body contains ``marker``, oldest first."""
    with sessions() as session:
        statement = select(DeadLetter).where(DeadLetter.raw_body.contains(marker)).order_by(DeadLetter.id)
        return list(session.scalars(statement))


def publish(broker_url: str, queue: str, bodies: list[bytes]) -> None:
    """Publish bodies straight into an existing queue, as a foreign producer (or a bug) would."""
    connection = pika.BlockingConnection(pika.URLParameters(broker_url))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        for body in bodies:
            channel.basic_publish("", queue, body, pika.BasicProperties(delivery_mode=2), mandatory=True)
    finally:
        connection.close()


def queue_depth(broker_url: str, queue: str) -> int:
    """Messages ready in ``queue`` (a passive declare: the queue must exist)."""
    connection = pika.BlockingConnection(pika.URLParameters(broker_url))
    try:
        return int(connection.channel().queue_declare(queue, passive=True).method.message_count)
    finally:
        connection.close()


def dlq_json(env: dict[str, str], cwd: Path, *args: str) -> Any:
    """Run ``minalesh-workers dlq ARGS --json`` and parse what it printed."""
    result = run_cli("dlq", *args, "--json", env=env, cwd=cwd)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def add_dead_letter(
    sessions: sessionmaker[Session],
    *,
    actor: Optional[str],
    args: Optional[list[Any]],
    queue: str = "emails.XQ",
    error: str = "TransientError: test",
    dead_at: Optional[datetime] = None,
    options: Optional[dict[str, Any]] = None,
    raw_body: Optional[str] = None,
) -> int:
    """A dead letter as the archiver writes it; returns its id."""
    message_id = str(uuid.uuid4())
    with sessions.begin() as session:
        dead_letters.archive(
            session,
            DeadMessage(
                message_id=message_id,
                queue=queue,
                actor=actor,
                args=args,
                kwargs={} if args is not None else None,
                options=options or {},
                raw_body=raw_body,
                fallback_error=error,
                dead_at=dead_at,
            ),
        )
        stored = dead_letters.get_by_message_id(session, message_id)
        assert stored is not None
        return stored.id


def garbage(tag: str) -> bytes:
    """A body that is not a Dramatiq message (not even UTF-8, with a NUL PostgreSQL refuses in text)."""
    return b"\x00\xff not a message " + tag.encode() + b" {"


def dumps(value: Any) -> str:
    return json.dumps(value, indent=2, default=str)


def letters_for(sessions: sessionmaker[Session], email_id: int) -> list[DeadLetter]:
    with sessions() as session:
        rows = session.query(DeadLetter).filter(DeadLetter.actor == "send_email").order_by(DeadLetter.id).all()
        return [row for row in rows if row.args == [email_id]]


def email(sessions: sessionmaker[Session], email_id: int) -> EmailQueue:
    with sessions() as session:
        row = emails.get(session, email_id)
        assert row is not None
        return row


def letter(sessions: sessionmaker[Session], dead_letter_id: int) -> Optional[DeadLetter]:
    with sessions() as session:
        return dead_letters.get(session, dead_letter_id)


def dead_email(sessions: sessionmaker[Session], fake_resend: FakeResend, tag: str) -> tuple[int, str, DeadLetter]:
    """An email the provider refused (422): failed, and its message in ``dead_letters``."""
    address = unique_address(tag)
    fake_resend.fail_recipient(address, status=422, name="validation_error", message="Invalid `to` field.")
    with sessions.begin() as session:
        email_id = insert_email(session, address)
    send_email.send(email_id)
    (dead,) = wait_until(lambda: letters_for(sessions, email_id), what=f"the dead letter of email {email_id}")
    return email_id, address, dead


def replay(runtime: Runtime, dead_letter_id: int, *, dry_run: bool = False) -> ReplayOutcome:
    return dlq.replay(runtime.broker, runtime.sessions, dead_letter_id, dry_run=dry_run)
