"""The pool pings a connection only after it waited in the pool (``storage.database._ping_when_idle``, issue 21).

Against real PostgreSQL, on an engine of this test's own: a backend terminated while
its connection waited longer than ``PING_AFTER_IDLE_SECONDS`` is replaced at checkout,
unseen by the caller; one that waited less is not pinged, so its statement fails as a
statement in flight during a restart does (a transient failure), and the next
checkout gets a live connection.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import psycopg2
import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import DBAPIError

from bench.harness import services
from bench.harness.services import RunServices
from storage.database import _ping_when_idle, normalize_url, transient_failure

IDLE = 0.3


@pytest.fixture
def engine(test_services: RunServices) -> Iterator[Engine]:
    created = create_engine(normalize_url(test_services.database_url), pool_size=1, max_overflow=0)
    _ping_when_idle(created, after_seconds=IDLE)
    yield created
    created.dispose()


def backend_of(engine: Engine) -> int:
    with engine.connect() as connection:
        return int(connection.execute(text("SELECT pg_backend_pid()")).scalar_one())


def terminate(pid: int) -> None:
    connection = psycopg2.connect(services.POSTGRES_ADMIN_URL)
    try:
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(%s)", (pid,))
    finally:
        connection.close()
    time.sleep(0.1)


def test_a_connection_that_waited_is_pinged_and_replaced_unseen(engine: Engine) -> None:
    first = backend_of(engine)
    assert backend_of(engine) == first, "the pool reuses its one connection"
    terminate(first)
    time.sleep(IDLE)
    assert backend_of(engine) != first


def test_a_connection_used_just_now_is_not_pinged_its_failure_is_transient_and_the_next_is_live(
    engine: Engine,
) -> None:
    first = backend_of(engine)
    terminate(first)
    with pytest.raises(DBAPIError) as failed:
        backend_of(engine)
    assert transient_failure(failed.value)
    assert backend_of(engine) != first
