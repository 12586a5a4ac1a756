"""What a failed connection to PostgreSQL or RabbitMQ means, in words an operator can act on.

The drivers report a failed connection as nested exceptions written for their own
developers: pika's ``AMQPConnectionError: (AMQPConnectorSocketConnectError:
ConnectionRefusedError(111, 'Connection refused'),)``, psycopg2's ``OperationalError``
whose only clue is the server's text. They are read here, once, for two uses:

* the start-up check (``pipeline.core.preflight``) needs a ``Verdict``: ``UNREACHABLE``
  (nothing answered, or not in time: wait, the service may be starting) or ``REFUSED`` (it
  answered and said no: credentials, a vhost or a database that does not exist; waiting
  cannot help), and a sentence naming the address and the user, vhost or database;
* the running processes' log lines (``pipeline.core.outages``) need the cause alone
  (``in_words``).

An error not recognised here is ``UNREACHABLE``: at start-up a doubtful failure is tried
again for the bounded wait, and its driver's first line is shown. psycopg2 gives no
SQLSTATE for a failed connection, so PostgreSQL's (English) message decides; a server
with other ``lc_messages`` falls to that default. No sentence quotes a URL: the addresses
are rebuilt from their parts, without the password.
"""

from __future__ import annotations

import enum
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Optional

import pika
import pika.exceptions
import psycopg2
from dramatiq.errors import BrokerConnectionError
from pika.adapters.utils.connection_workflow import AMQPConnectorStackTimeout
from sqlalchemy.engine import make_url

from pipeline.core.errors import describe
from storage.database import normalize_url

#: PostgreSQL's and RabbitMQ's ports when a URL names none.
POSTGRES_PORT = 5432
AMQP_PORT = 5672
#: How deep ``chain`` looks into nested exceptions.
_MAX_CHAIN = 32
#: What PostgreSQL says when it is there but not taking connections yet (or any more).
_NOT_ACCEPTING = (
    "the database system is starting up",
    "the database system is shutting down",
    "the database system is in recovery mode",
    "the database system is not yet accepting connections",
    "too many clients",
    "remaining connection slots are reserved",
)
#: What PostgreSQL says when it refuses the user.
_BAD_CREDENTIALS = (
    "password authentication failed",
    "authentication failed",
    "no pg_hba.conf entry",
    "no password supplied",
    'role "',  # role "x" does not exist
    "is not permitted to log in",
)


class Verdict(enum.Enum):
    """Whether waiting can help."""

    #: Nothing answered, or not in time: the service may be starting or restarting.
    UNREACHABLE = "unreachable"
    #: It answered and said no: only a change of the setting (or of the service's users) helps.
    REFUSED = "refused"


@dataclass(frozen=True, kw_only=True)
class Address:
    """Where a connection went: host and port, and the user and database (or vhost) it asked for."""

    host: str
    port: int
    user: Optional[str]
    name: Optional[str]

    @classmethod
    def of_database(cls, url: str) -> Address:
        parsed = make_url(normalize_url(url))
        host, port = parsed.host or "localhost", parsed.port or POSTGRES_PORT
        return cls(host=host, port=port, user=parsed.username, name=parsed.database)

    @classmethod
    def of_broker(cls, node_url: str) -> Address:
        parameters = pika.URLParameters(node_url)
        credentials = parameters.credentials
        return cls(
            host=parameters.host,
            port=parameters.port or AMQP_PORT,
            user=getattr(credentials, "username", None),
            name=parameters.virtual_host,
        )

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def who(self) -> str:
        return f"user {self.user!r}" if self.user else "the default user (the URL names none)"


@dataclass(frozen=True)
class Failure:
    """A failed connection: whether to wait, and what happened, as a sentence that follows the setting's name."""

    verdict: Verdict
    reason: str


def chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and every exception inside it: pika's wrapped ones, SQLAlchemy's ``orig``, Dramatiq's
    ``message``, causes and contexts."""
    found: list[BaseException] = []
    waiting = [exc]
    while waiting and len(found) < _MAX_CHAIN:
        current = waiting.pop(0)
        if any(current is seen for seen in found):
            continue
        found.append(current)
        waiting.extend(_inside(current))
    return found


def _inside(exc: BaseException) -> Iterable[BaseException]:
    nested = getattr(exc, "exceptions", ())
    candidates = [
        *exc.args,
        *(nested if isinstance(nested, (list, tuple)) else ()),
        getattr(exc, "exception", None),
        getattr(exc, "orig", None),
        getattr(exc, "message", None),
        exc.__cause__,
        exc.__context__,
    ]
    return [candidate for candidate in candidates if isinstance(candidate, BaseException)]


def _network(found: list[BaseException], at: Address, service: str) -> Optional[Failure]:
    """The failures of the network under any driver: refused, unknown host, no answer in time, no route."""
    for exc in found:
        if isinstance(exc, ConnectionRefusedError):
            return Failure(Verdict.UNREACHABLE, f"nothing accepts connections at {at} (connection refused)")
        if isinstance(exc, socket.gaierror):
            return Failure(Verdict.UNREACHABLE, f"host {at.host!r} is unknown ({exc.strerror})")
        if isinstance(exc, (TimeoutError, AMQPConnectorStackTimeout)):
            return Failure(Verdict.UNREACHABLE, f"{service} at {at} did not answer in time")
    for exc in found:
        if isinstance(exc, OSError) and exc.strerror:
            return Failure(Verdict.UNREACHABLE, f"cannot reach {at} ({exc.strerror.lower()})")
    return None


def broker_failure(exc: BaseException, at: Address) -> Failure:
    """What pika's failure to connect to the node at ``at`` means."""
    found = chain(exc)
    network = _network(found, at, "RabbitMQ")
    if network:
        return network
    text = " ".join(str(item) for item in found)
    if "ACCESS_REFUSED" in text or any(isinstance(item, _AUTHENTICATION) for item in found):
        return Failure(Verdict.REFUSED, f"RabbitMQ at {at} refused the credentials of {at.who}")
    if re.search(r"vhost .* not found", text):
        return Failure(Verdict.REFUSED, f"vhost {at.name!r} does not exist on RabbitMQ at {at}")
    if "access to vhost" in text or any(isinstance(item, pika.exceptions.ProbableAccessDeniedError) for item in found):
        return Failure(Verdict.REFUSED, f"{at.who} has no permissions on vhost {at.name!r} of RabbitMQ at {at}")
    if any(isinstance(item, pika.exceptions.IncompatibleProtocolError) for item in found):
        # RabbitMQ starting up closes connections before its handshake, too: waited for, not refused.
        return Failure(Verdict.UNREACHABLE, f"the server at {at} closed the connection before speaking AMQP")
    return Failure(Verdict.UNREACHABLE, f"cannot connect to RabbitMQ at {at}: {in_words(exc)}")


_AUTHENTICATION = (pika.exceptions.ProbableAuthenticationError, pika.exceptions.AuthenticationError)


def database_failure(exc: BaseException, at: Address) -> Failure:
    """What the failure to connect to (or read from) the PostgreSQL at ``at`` means."""
    found = chain(exc)
    network = _network(found, at, "PostgreSQL")
    if network:
        return network
    said = server_message(exc)
    lowered = said.lower()
    if "connection refused" in lowered:
        return Failure(Verdict.UNREACHABLE, f"nothing accepts connections at {at} (connection refused)")
    if "could not translate host name" in lowered:
        return Failure(Verdict.UNREACHABLE, f"host {at.host!r} is unknown")
    if "timeout expired" in lowered:
        return Failure(Verdict.UNREACHABLE, f"PostgreSQL at {at} did not answer in time")
    if any(phrase in lowered for phrase in _NOT_ACCEPTING):
        return Failure(Verdict.UNREACHABLE, f"PostgreSQL at {at} is not accepting connections ({said})")
    if re.search(r'database ".*" does not exist', said):
        return Failure(Verdict.REFUSED, f"database {at.name!r} does not exist on PostgreSQL at {at}")
    if "permission denied for database" in lowered:
        return Failure(Verdict.REFUSED, f"{at.who} may not connect to database {at.name!r} on PostgreSQL at {at}")
    if any(phrase in lowered for phrase in _BAD_CREDENTIALS):
        return Failure(Verdict.REFUSED, f"PostgreSQL at {at} refused the credentials of {at.who} ({said})")
    if "ssl negotiation" in lowered:
        return Failure(Verdict.REFUSED, f"the server at {at} does not speak PostgreSQL's protocol ({said})")
    return Failure(Verdict.UNREACHABLE, f"cannot connect to PostgreSQL at {at}: {said}")


def server_message(exc: BaseException) -> str:
    """The driver's first line about the failure, without libpq's ``connection to server at ... failed:`` lead."""
    inner = getattr(exc, "orig", None) or exc
    lines = str(inner).strip().splitlines()
    first = lines[0] if lines else type(inner).__name__
    first = re.sub(r"^connection to server .*? failed:\s*", "", first)
    return re.sub(r"^FATAL:\s+", "", first).strip()


def in_words(exc: BaseException) -> str:
    """The cause of a lost or failed connection in a few words, for a log line (``connection refused``);
    PostgreSQL's first line of its message; anything else as ``describe`` says it."""
    for item in chain(exc):
        if isinstance(item, ConnectionRefusedError):
            return "connection refused"
        if isinstance(item, socket.gaierror):
            return f"host unknown: {item.strerror}"
        if isinstance(item, (TimeoutError, AMQPConnectorStackTimeout)):
            return "timed out"
        if isinstance(item, pika.exceptions.ConnectionClosed):
            return f"connection closed ({item.reply_code} {item.reply_text})"
        if isinstance(item, pika.exceptions.AMQPHeartbeatTimeout):
            return "missed heartbeats"
        if isinstance(item, pika.exceptions.StreamLostError):
            return f"connection lost ({item})"
        if isinstance(item, psycopg2.Error):
            return server_message(item)
    return describe(exc)


def is_lost_connection(exc: BaseException) -> bool:
    """Whether ``exc`` is a connection to RabbitMQ failing, rather than a fault of the code that ran into it.

    Only pika's and Dramatiq's connection errors: a refused connection to the email
    provider or a lost database is another story, told with its traceback.
    """
    return any(isinstance(item, (pika.exceptions.AMQPConnectionError, BrokerConnectionError)) for item in chain(exc))
