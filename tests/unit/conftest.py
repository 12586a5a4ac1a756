"""The unit tier needs neither PostgreSQL nor RabbitMQ, and proves it.

While each unit test is set up and runs, connections to the services fail
loudly (``tests.support.service_guard``). The guard wraps the setup phase too,
so a session-scoped fixture the test pulls in (``settings`` → ``environment`` →
``test_services``, which creates a database) is caught when this tier runs
alone; and a unit test that depends on a service-creating fixture is refused
up front, even in a full run where an integration test created it already.
Session fixtures are torn down outside the guard.

What a unit test needs instead: ``Settings.from_env({...})``, Dramatiq's
``StubBroker``, and SQLite (``storage.migrate.upgrade("sqlite:///...")``).
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from storage import migrate
from storage.database import get_engine, get_sessionmaker
from tests.support.service_guard import ServiceGuard

#: Root fixtures that create a database and a vhost.
SERVICE_FIXTURES = frozenset({"test_services", "own_services"})

_guard = ServiceGuard()


@pytest.fixture
def service_guard() -> ServiceGuard:
    """The guard itself, for the test that checks it."""
    return _guard


@pytest.fixture
def lite(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    """Sessions on a migrated SQLite database of this test's own (the dev mode's database)."""
    url = f"sqlite:///{tmp_path / 'unit.sqlite3'}"
    migrate.upgrade(url)
    yield get_sessionmaker(url)
    get_engine(url).dispose()


def _guarded(phase: str) -> Generator[None, object, object]:
    _guard.clear()
    with _guard.on():
        result = yield
    if _guard.attempts:
        pytest.fail(f"{phase} tried to reach a service: {', '.join(_guard.attempts)}", pytrace=False)
    return result


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, object, object]:
    needed = sorted(SERVICE_FIXTURES & set(getattr(item, "fixturenames", ())))
    if needed:
        pytest.fail(f"a unit test must not use {', '.join(needed)} (it creates services)", pytrace=False)
    return (yield from _guarded("setup"))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, object, object]:
    return (yield from _guarded("the test"))
