"""Statements on ``dead_letters`` and ``final_errors``: the archive of given-up messages."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Optional

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from storage.clock import utcnow
from storage.dialect import insert_ignoring_conflicts
from storage.models import DeadLetter, FinalError


@dataclass(frozen=True, kw_only=True)
class DeadMessage:
    """A message as it came off a dead-letter queue, decoded as far as it would go."""

    message_id: str
    queue: str
    actor: Optional[str] = None
    args: Optional[list[Any]] = None
    kwargs: Optional[dict[str, Any]] = None
    options: dict[str, Any] = field(default_factory=dict)
    raw_body: Optional[str] = None
    #: What the message itself says of its death, when nothing better is known.
    fallback_error: str = "unknown error"
    fallback_traceback: Optional[str] = None
    retries: int = 0
    dead_at: Optional[datetime] = None


def record_final_error(
    session: Session, *, message_id: str, error: str, traceback: Optional[str], retries: int
) -> None:
    """Remember the error a message finally died of, for the archiver to pick up."""
    insert_ignoring_conflicts(
        session,
        FinalError.__table__,  # type: ignore[arg-type]
        {"message_id": message_id, "error": error, "traceback": traceback, "retries": retries},
        key="message_id",
    )


def archive(session: Session, message: DeadMessage) -> bool:
    """Write ``message`` to ``dead_letters`` once; True if this call wrote it.

    The final error recorded by the pipeline wins over the one the message carries
    (RabbitMQ dead-letters the bytes of the delivery before the last attempt).
    """
    final = session.get(FinalError, message.message_id)
    now = utcnow()
    written = insert_ignoring_conflicts(
        session,
        DeadLetter.__table__,  # type: ignore[arg-type]
        {
            "message_id": message.message_id,
            "queue": message.queue,
            "actor": message.actor,
            "args": message.args,
            "kwargs": message.kwargs,
            "options": message.options,
            "raw_body": message.raw_body,
            "error": final.error if final else message.fallback_error,
            "traceback": final.traceback if final else message.fallback_traceback,
            "retries": final.retries if final else message.retries,
            "dead_at": final.failed_at if final else (message.dead_at or now),
            "archived_at": now,
        },
        key="message_id",
    )
    if final is not None:
        session.execute(delete(FinalError).where(FinalError.message_id == message.message_id))
    return written


def get_by_message_id(session: Session, message_id: str) -> Optional[DeadLetter]:
    """The dead letter of a Dramatiq message id, or None."""
    return session.scalars(select(DeadLetter).where(DeadLetter.message_id == message_id)).one_or_none()


def list_all(session: Session) -> list[DeadLetter]:
    """Every dead letter, oldest first."""
    return list(session.scalars(select(DeadLetter).order_by(DeadLetter.id)))


def count(session: Session) -> int:
    """How many dead letters the archive holds."""
    return int(session.scalar(select(func.count()).select_from(DeadLetter)) or 0)
