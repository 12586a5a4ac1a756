"""Engines and sessions: one engine and one sessionmaker per database URL and process.

Platforms hand out ``postgres://`` or ``postgresql://`` URLs. SQLAlchemy 2.1 maps a
bare ``postgresql://`` to psycopg 3, which we do not ship, so both spellings are
pinned to psycopg2 here, the one place URLs are turned into engines.

A URL carries its password, so a URL is never shown as it is: ``mask_password``
gives the text that error messages and reprs print instead.
"""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any, Optional

import psycopg2
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.exc import ArgumentError, DBAPIError, DisconnectionError, InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import ConnectionPoolEntry, NullPool

from storage.errors import InvalidDatabaseUrl

_POSTGRES_SCHEMES = {"postgres", "postgresql"}
#: The drivers this package ships (psycopg2, and the standard library's sqlite3 for ``dev``), as
#: ``normalize_url`` spells them; a URL naming any other fails on import, far from the setting.
SUPPORTED_DRIVERS = frozenset({"postgresql+psycopg2", "sqlite", "sqlite+pysqlite"})
#: What a password is shown as: SQLAlchemy's own mask.
PASSWORD_MASK = "***"
#: Where an address of a URL starts: ``scheme://`` at the start or after a ``;``.
_ADDRESS_START = re.compile(r"(?:^|;)\s*[A-Za-z][A-Za-z0-9+.-]*://")
#: A ``password=`` query parameter (libpq accepts the password there too).
_QUERY_PASSWORD = re.compile(r"(?i)([?&;]password=)[^&;#]*")


def mask_password(url: str) -> str:
    """``url`` fit to print: every password in it replaced by ``***``, whether the URL is valid or not.

    It reads the text rather than a parsed URL because the URLs that end up in error
    messages are the mistyped ones, which no parser accepts. An address starts at the
    start of the text, or after a ``scheme://`` there or after a ``;`` (a broker URL
    lists its nodes so); its user part runs to the last ``@`` before the next address,
    and everything after that part's first ``:`` is masked, so a password holding
    ``@``, ``:``, ``/`` or ``;`` is masked whole. When in doubt it masks too much (an
    ``@`` further on), never too little.
    """
    spans = [(match.start(), match.end()) for match in _ADDRESS_START.finditer(url)]
    if not spans or spans[0][0] > 0:
        spans.insert(0, (0, 0))  # text before the first scheme is an address of its own
    ends = [begin for begin, _ in spans[1:]] + [len(url)]
    masked, done = [], 0
    for (_, start), end in zip(spans, ends, strict=True):
        at = url.rfind("@", start, end)
        colon = url.find(":", start, at) if at >= 0 else -1
        if colon < 0:
            continue
        masked.append(url[done : colon + 1] + PASSWORD_MASK)
        done = at
    masked.append(url[done:])
    return _QUERY_PASSWORD.sub(rf"\g<1>{PASSWORD_MASK}", "".join(masked))


def normalize_url(url: str) -> str:
    """Return ``url`` with PostgreSQL schemes pinned to the psycopg2 driver.

    SQLAlchemy's own parse errors quote the whole URL (or its bad port), so they are
    replaced by one that shows the URL with its password masked.
    """
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        raise InvalidDatabaseUrl(
            f"not a database URL such as postgresql://user:password@host:5432/name: {mask_password(url)!r}"
        ) from None
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
    engine = create_engine(normalized, pool_size=10, max_overflow=10)
    _ping_when_idle(engine, after_seconds=PING_AFTER_IDLE_SECONDS)
    return engine


#: A pooled connection that waited in the pool longer than this is pinged before use (seconds).
PING_AFTER_IDLE_SECONDS = 1.0


def _ping_when_idle(engine: Engine, *, after_seconds: float) -> None:
    """Ping (``SELECT 1``) a connection at checkout only if it waited in the pool ``after_seconds`` or more.

    Instead of ``pool_pre_ping``, whose round trip at every checkout was three of an
    email's round trips (issue 21). A connection that died while it waited (PostgreSQL
    restarted: a restart takes longer than this) is found at checkout, as before, and
    replaced without its caller seeing it: the pool reconnects on the ``DisconnectionError``.
    One used less than ``after_seconds`` ago is not pinged: should it have died meanwhile,
    its statement fails as a statement in flight at the restart does (a transient
    failure: the message runs again later, untouched), and the pool then recycles every
    connection older than the failure. A ping that fails does the same for every
    connection that waited in the pool since before it.
    """
    failed_at = [0.0]

    @event.listens_for(engine, "checkin")
    def _checked_in(_dbapi_connection: object, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checked_out(dbapi_connection: Any, record: Any, _proxy: object) -> None:
        idle_since = record.info.pop("idle_since", None)
        if idle_since is None:  # a new connection
            return
        if time.monotonic() - idle_since < after_seconds and idle_since > failed_at[0]:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except engine.dialect.loaded_dbapi.Error as exc:
            failed_at[0] = time.monotonic()
            raise DisconnectionError(f"the pooled connection is gone ({type(exc).__name__})") from exc


@contextmanager
def probe_connection(url: str, *, timeout_seconds: int) -> Iterator[Connection]:
    """One connection of its own, outside the process's pool, that stops trying to connect after ``timeout_seconds``.

    For the start-up check: the pooled engine has no connect timeout (a host that drops
    packets would hold it for minutes), and a probe should leave nothing open behind it.
    """
    normalized = normalize_url(url)
    connect_args = {} if is_sqlite(normalized) else {"connect_timeout": max(timeout_seconds, 1)}
    engine = create_engine(normalized, poolclass=NullPool, connect_args=connect_args)
    try:
        with engine.connect() as connection:
            yield connection
    finally:
        engine.dispose()


def _sqlite_pragmas(dbapi_connection: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
    """WAL lets the dev process's threads read while one of them writes."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


#: SQLSTATE classes of failures that pass with time: connection exceptions, serialization failures and
#: deadlocks, insufficient resources (disk full, too many connections), operator intervention (shutdown,
#: statement timeout) and system errors. Other classes refuse the statement itself, every time.
TRANSIENT_SQLSTATE_CLASSES = frozenset({"08", "40", "53", "57", "58"})
#: SQLSTATEs of other classes that pass with time: a lock timeout.
TRANSIENT_SQLSTATES = frozenset({"55P03"})
#: The drivers' own failures of the connection, which reach us unwrapped where SQLAlchemy does not wrap:
#: resetting a pooled connection's isolation level as it is checked in (``statement_by_statement``)
#: raises psycopg2's ``OperationalError`` itself when PostgreSQL has just gone down.
DRIVER_FAILURES = (psycopg2.OperationalError, psycopg2.InterfaceError, sqlite3.OperationalError)


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
    if isinstance(exc, (OperationalError, InterfaceError)):
        driver_error: Optional[BaseException] = exc.orig
    elif isinstance(exc, DRIVER_FAILURES):
        driver_error = exc
    else:
        return False
    code = getattr(driver_error, "pgcode", None)
    return not code or code[:2] in TRANSIENT_SQLSTATE_CLASSES or code in TRANSIENT_SQLSTATES


@lru_cache(maxsize=None)
def get_sessionmaker(url: str) -> sessionmaker[Session]:
    """The process-wide session factory for ``url``."""
    return sessionmaker(get_engine(url), expire_on_commit=False)


@contextmanager
def statement_by_statement(sessions: sessionmaker[Session]) -> Iterator[Session]:
    """A session of ``sessions``' database in which every statement commits by itself (``AUTOCOMMIT``).

    For a block whose one write is one statement (an attempt that starts, a slot taken, an
    email marked sent): that statement is as atomic and as durable as in a transaction of its
    own (a synchronous commit, the WAL flushed before it returns), but costs no ``BEGIN`` and no
    ``COMMIT`` round trip, and holds its row locks only while it runs rather than until a
    ``COMMIT`` that the thread, one of several sharing a GIL, must still be scheduled to send.
    A block whose writes must commit together, or that reads and then writes on what it read,
    needs a transaction (``sessions.begin()``).
    """
    with sessions(bind=_autocommitting(sessions.kw["bind"])) as session, session.begin():
        yield session


@lru_cache(maxsize=None)
def _autocommitting(engine: Engine) -> Engine:
    """``engine`` (same pool) with its connections in autocommit while checked out."""
    return engine.execution_options(isolation_level="AUTOCOMMIT")


def ping(session: Session) -> None:
    """``SELECT 1``: the database answers (``/readyz``)."""
    session.execute(text("SELECT 1"))
