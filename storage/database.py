"""Engines and sessions: one engine and one sessionmaker per database URL and process.

Platforms hand out ``postgres://`` or ``postgresql://`` URLs. SQLAlchemy 2.1 maps a
bare ``postgresql://`` to psycopg 3, which we do not ship, so both spellings are
pinned to psycopg2 here, the one place URLs are turned into engines.
"""

from __future__ import annotations

import os
from functools import lru_cache

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from storage.errors import InvalidDatabaseUrl

#: Used when DATABASE_URL is unset: the PostgreSQL of docker-compose.yml.
DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/minalesh"

_POSTGRES_SCHEMES = {"postgres", "postgresql"}


def database_url_from_env() -> str:
    """DATABASE_URL, the one environment variable the storage layer reads itself.

    The storage API is also used by host applications that have no settings object
    of ours, so it needs a way to find the database on its own.
    """
    return os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL


def normalize_url(url: str) -> str:
    """Return ``url`` with PostgreSQL schemes pinned to the psycopg2 driver."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise InvalidDatabaseUrl(f"DATABASE_URL is not a database URL: {exc}") from None
    if parsed.drivername in _POSTGRES_SCHEMES:
        parsed = parsed.set(drivername="postgresql+psycopg2")
    return parsed.render_as_string(hide_password=False)


def is_sqlite(url: str) -> bool:
    """Whether ``url`` names an SQLite database (the embedded ``dev`` mode)."""
    return make_url(normalize_url(url)).get_backend_name() == "sqlite"


@lru_cache(maxsize=None)
def get_engine(url: str) -> Engine:
    """The process-wide engine for ``url``, created on first use."""
    normalized = normalize_url(url)
    if is_sqlite(normalized):
        engine = create_engine(normalized, connect_args={"timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(normalized, pool_pre_ping=True, pool_size=10, max_overflow=10)


def _sqlite_pragmas(dbapi_connection: object, _record: object) -> None:
    """WAL lets the dev process's threads read while one of them writes."""
    cursor = dbapi_connection.cursor()  # type: ignore[attr-defined]
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


#: SQLSTATE classes of failures that pass with time: connection exceptions, serialization failures and
#: deadlocks, insufficient resources (disk full, too many connections), operator intervention (shutdown,
#: statement timeout) and system errors. Other classes refuse the statement itself, every time.
TRANSIENT_SQLSTATE_CLASSES = frozenset({"08", "40", "53", "57", "58"})
#: SQLSTATEs of other classes that pass with time: a lock timeout.
TRANSIENT_SQLSTATES = frozenset({"55P03"})


def transient_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is the database failing for now (wait and try again), not refusing the statement.

    A refusal (a value out of range, JSON it will not take, an index row too big)
    is the same on every try. psycopg2 files some refusals under
    ``OperationalError`` too (``54000``, an index row too big), so the SQLSTATE
    decides; an error without one (no server reached, or SQLite's locked
    database) is taken as transient.
    """
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    if not isinstance(exc, (OperationalError, InterfaceError)):
        return False
    code = getattr(exc.orig, "pgcode", None)
    return not code or code[:2] in TRANSIENT_SQLSTATE_CLASSES or code in TRANSIENT_SQLSTATES


@lru_cache(maxsize=None)
def get_sessionmaker(url: str) -> sessionmaker[Session]:
    """The process-wide session factory for ``url``."""
    return sessionmaker(get_engine(url), expire_on_commit=False)


def default_sessionmaker() -> sessionmaker[Session]:
    """Sessions on DATABASE_URL, for callers that do not pass their own."""
    return get_sessionmaker(database_url_from_env())
