"""The outcome of counting an attempt at an item (an email, a webhook event) in its row.

Attempts are counted in the database, not in the message, so a worker that dies
mid-way (RabbitMQ redelivers; Dramatiq never saw a failure) still uses one up.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Generic, Optional, TypeVar

T = TypeVar("T")


class AttemptOutcome(enum.Enum):
    """What a ``start_attempt`` decided."""

    #: Go ahead: the attempt is counted and the item is leased to this worker.
    GO = "go"
    #: Nothing to do: done already, not due yet, or another worker holds it.
    SKIP = "skip"
    #: More attempts were started than allowed (workers died mid-way): give up.
    EXHAUSTED = "exhausted"


@dataclass(frozen=True)
class Attempt(Generic[T]):
    outcome: AttemptOutcome
    #: The item as the attempt sees it; None when skipped.
    item: Optional[T] = None
