"""The start-up check: a process connects to the database and the broker it needs before it does anything else.

Without it a wrong setting showed late and loud: a worker on a closed broker port
reconnected for ever, a traceback per queue every 3 s; one on a database that does not
exist said "ready for action" and failed every message; ``db upgrade`` printed a double
traceback. ``check`` tries each service in the order of the settings and ends in one of
three ways:

* it returns: each answered (and the schema is the one this code needs);
* ``ServiceRefused`` at once: a service answered and said no (credentials, a vhost or a
  database that does not exist, a schema behind the code); waiting cannot help;
* ``ServiceUnreachable`` after ``STARTUP_WAIT_MINUTES``: nothing answered. Each try is
  bounded (``CONNECT_TIMEOUT_SECONDS``), the pauses between them double up to
  ``MAX_PAUSE_SECONDS``; the wait is shared by the services, and the first unreachable
  one logs one line when the waiting starts. A service that comes up within the wait
  is logged once as reachable, and the process starts.

Either error's message is the one line the command prints, ``SETTING: cause``, without
a password (``pipeline.core.connection_errors`` rebuilds addresses from their parts);
``pipeline.cli.common`` logs it and exits with the error's status, for a supervisor to
restart the process.

A database at a revision this code does not ship (a newer release migrated it) is
let through with a warning: refusing would make a rollback of the code impossible
without the newer release's downgrade.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Optional

import pika
import pika.exceptions
from sqlalchemy.exc import DBAPIError

from pipeline.core.connection_errors import Address, Failure, Verdict, broker_failure, database_failure
from pipeline.core.errors import ServiceRefused, ServiceUnreachable
from pipeline.core.settings import Settings
from storage import migrate
from storage.database import probe_connection

logger = logging.getLogger(__name__)

#: Longest one try to connect may take (psycopg2 counts whole seconds; libpq at least 2).
CONNECT_TIMEOUT_SECONDS = 5
#: The pause after the first unreachable try, doubling up to ``MAX_PAUSE_SECONDS``.
FIRST_PAUSE_SECONDS = 0.5
MAX_PAUSE_SECONDS = 5.0

#: A try at one service: None when it answered, else what went wrong. Takes the try's timeout in seconds.
Probe = Callable[[int], Optional[Failure]]


def check(settings: Settings, *, broker: bool = True, schema: bool = True) -> None:
    """Connect to the database (``schema``: and compare its revision with the code's) and, with ``broker``,
    to RabbitMQ; raise ``ServiceRefused`` or ``ServiceUnreachable`` naming the setting, or return."""
    wait = Wait(settings.startup_wait_minutes * 60)
    wait.until_ready("DATABASE_URL", lambda timeout: database_probe(settings.database_url, timeout, schema=schema))
    if broker:
        wait.until_ready("BROKER_URL", lambda timeout: broker_probe(settings.broker_nodes, timeout))


@dataclass
class Wait:
    """Tries a probe until it answers, until it refuses, or until ``seconds`` (shared by every probe) run out."""

    seconds: float
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    deadline: float = field(init=False)

    def __post_init__(self) -> None:
        self.deadline = self.clock() + self.seconds

    def until_ready(self, variable: str, probe: Probe) -> None:
        started, pause, announced = self.clock(), FIRST_PAUSE_SECONDS, False
        while True:
            failure = probe(self._try_timeout())
            if failure is None:
                if announced:
                    logger.info("%s: reachable after %.1fs.", variable, self.clock() - started)
                return
            if failure.verdict is Verdict.REFUSED:
                raise ServiceRefused(f"{variable}: {failure.reason}")
            left = self.deadline - self.clock()
            if left <= 0:
                waited = f"gave up after {self.clock() - started:.0f}s (STARTUP_WAIT_MINUTES)"
                raise ServiceUnreachable(f"{variable}: {failure.reason}; {waited}")
            if not announced:
                logger.warning("%s: %s; trying again for up to %.0fs.", variable, failure.reason, left)
                announced = True
            self.sleep(min(pause, left))
            pause = min(pause * 2, MAX_PAUSE_SECONDS)

    def _try_timeout(self) -> int:
        """Whole seconds: what is left of the wait, at most ``CONNECT_TIMEOUT_SECONDS``, at least 2 (libpq's floor)."""
        left = math.ceil(self.deadline - self.clock())
        return max(2, min(CONNECT_TIMEOUT_SECONDS, left))


def database_probe(url: str, timeout: int, *, schema: bool) -> Optional[Failure]:
    """Connect once; with ``schema``, the database must be at the code's head revision."""
    at = Address.of_database(url)
    try:
        with probe_connection(url, timeout_seconds=timeout) as connection:
            current = migrate.revision_of(connection) if schema else None
    except DBAPIError as exc:
        return database_failure(exc, at)
    return schema_failure(current, at) if schema else None


def schema_failure(current: Optional[str], at: Address) -> Optional[Failure]:
    """None when ``current`` is the code's head (or one it does not ship: a newer release's, warned about)."""
    head = migrate.head_revision()
    if current == head:
        return None
    upgrade = "run `minalesh-workers db upgrade`"
    if current is None:
        return Failure(Verdict.REFUSED, f"database {at.name!r} has no schema yet, code needs {head}: {upgrade}")
    if current in migrate.shipped_revisions():
        return Failure(Verdict.REFUSED, f"schema at revision {current}, code needs {head}: {upgrade}")
    logger.warning(
        "DATABASE_URL: schema at revision %s, which this code does not ship (it needs %s): a newer release "
        "migrated it; starting anyway.",
        current,
        head,
    )
    return None


def broker_probe(nodes: list[str], timeout: int) -> Optional[Failure]:
    """One connection to the first node that takes it; a node's refusal outweighs the others' silence."""
    failures = []
    for node in nodes:
        parameters = pika.URLParameters(node)
        parameters.connection_attempts = 1
        parameters.socket_timeout = timeout
        parameters.stack_timeout = timeout
        try:
            pika.BlockingConnection(parameters).close()
            return None
        except (pika.exceptions.AMQPError, OSError) as exc:
            failures.append(broker_failure(exc, Address.of_broker(node)))
    refused = [failure for failure in failures if failure.verdict is Verdict.REFUSED]
    if refused or len(failures) == 1:
        return (refused or failures)[0]
    return Failure(Verdict.UNREACHABLE, "; ".join(failure.reason for failure in failures))
