"""Failed connections to RabbitMQ and PostgreSQL, read as an operator's sentence and a verdict.

The exceptions are built as pika and psycopg2 raise them, their texts copied from real
failures (a closed port, a wrong password, a missing vhost or database).
"""

from __future__ import annotations

import socket

import pika
import pika.exceptions
import psycopg2
import pytest
from pika.adapters.utils.connection_workflow import AMQPConnectorStackTimeout
from sqlalchemy.exc import OperationalError

from pipeline.core.connection_errors import Address, Verdict, broker_failure, database_failure, in_words
from tests.support.connection_support import refused_socket

BROKER = Address.of_broker("amqp://shop:mq-secret-1@rabbit:5673/%2F")
DATABASE = Address.of_database("postgresql://shop:pg-secret-2@db:5433/shop")


def postgres_said(text: str) -> OperationalError:
    """What SQLAlchemy raises around psycopg2's failure to connect."""
    return OperationalError("SELECT 1", {}, psycopg2.OperationalError(text))


# --- RabbitMQ's failures --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "verdict", "reason"),
    [
        (refused_socket(), Verdict.UNREACHABLE, "nothing accepts connections at rabbit:5673 (connection refused)"),
        (socket.gaierror(-2, "Name or service not known"), Verdict.UNREACHABLE, "host 'rabbit' is unknown"),
        (
            pika.exceptions.AMQPConnectionError(AMQPConnectorStackTimeout("Timeout during AMQP handshake")),
            Verdict.UNREACHABLE,
            "RabbitMQ at rabbit:5673 did not answer in time",
        ),
        (
            pika.exceptions.ProbableAuthenticationError(
                "ConnectionClosedByBroker: (403) 'ACCESS_REFUSED - Login was refused using authentication "
                "mechanism PLAIN. For details see the broker logfile.'"
            ),
            Verdict.REFUSED,
            "RabbitMQ at rabbit:5673 refused the credentials of user 'shop'",
        ),
        (
            pika.exceptions.ProbableAccessDeniedError(
                "ConnectionClosedByBroker: (530) 'NOT_ALLOWED - vhost / not found'"
            ),
            Verdict.REFUSED,
            "vhost '/' does not exist on RabbitMQ at rabbit:5673",
        ),
        (
            pika.exceptions.ProbableAccessDeniedError(
                "ConnectionClosedByBroker: (530) \"NOT_ALLOWED - access to vhost '/' refused for user 'shop'\""
            ),
            Verdict.REFUSED,
            "user 'shop' has no permissions on vhost '/' of RabbitMQ at rabbit:5673",
        ),
        (
            pika.exceptions.IncompatibleProtocolError("StreamLostError: ('Transport indicated EOF',)"),
            Verdict.UNREACHABLE,
            "the server at rabbit:5673 closed the connection before speaking AMQP",
        ),
    ],
    ids=["refused", "unknown host", "timeout", "credentials", "no vhost", "no permissions", "not AMQP"],
)
def test_what_a_failed_broker_connection_means(error: Exception, verdict: Verdict, reason: str) -> None:
    failure = broker_failure(error, BROKER)
    assert failure.verdict is verdict
    assert failure.reason.startswith(reason), failure.reason
    assert "mq-secret-1" not in failure.reason


# --- PostgreSQL's failures ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "verdict", "reason"),
    [
        (
            'connection to server at "db", port 5433 failed: Connection refused\n'
            "\tIs the server running on that host and accepting TCP/IP connections?\n",
            Verdict.UNREACHABLE,
            "nothing accepts connections at db:5433 (connection refused)",
        ),
        (
            'could not translate host name "db" to address: Name or service not known\n',
            Verdict.UNREACHABLE,
            "host 'db' is unknown",
        ),
        ('connection to server at "db", port 5433 failed: timeout expired\n', Verdict.UNREACHABLE, "PostgreSQL at"),
        (
            'connection to server at "db", port 5433 failed: FATAL:  the database system is starting up\n',
            Verdict.UNREACHABLE,
            "PostgreSQL at db:5433 is not accepting connections (the database system is starting up)",
        ),
        (
            'connection to server at "db", port 5433 failed: FATAL:  database "shop" does not exist\n',
            Verdict.REFUSED,
            "database 'shop' does not exist on PostgreSQL at db:5433",
        ),
        (
            'connection to server at "db", port 5433 failed: FATAL:  password authentication failed for user "shop"\n',
            Verdict.REFUSED,
            "PostgreSQL at db:5433 refused the credentials of user 'shop' (password authentication failed",
        ),
        (
            'connection to server at "db", port 5433 failed: FATAL:  role "shop" does not exist\n',
            Verdict.REFUSED,
            "PostgreSQL at db:5433 refused the credentials of user 'shop' (role \"shop\" does not exist)",
        ),
        (
            'connection to server at "db", port 5433 failed: received invalid response to SSL negotiation: A\n',
            Verdict.REFUSED,
            "the server at db:5433 does not speak PostgreSQL's protocol",
        ),
        (
            'connection to server at "db", port 5433 failed: something new\n',
            Verdict.UNREACHABLE,
            "cannot connect to PostgreSQL at db:5433: something new",
        ),
    ],
    ids=["refused", "unknown host", "timeout", "starting", "no database", "password", "no role", "not pg", "unknown"],
)
def test_what_a_failed_database_connection_means(text: str, verdict: Verdict, reason: str) -> None:
    failure = database_failure(postgres_said(text), DATABASE)
    assert failure.verdict is verdict
    assert failure.reason.startswith(reason), failure.reason
    assert "pg-secret-2" not in failure.reason and "\n" not in failure.reason


def test_addresses_are_rebuilt_without_the_password() -> None:
    assert (BROKER.host, BROKER.port, BROKER.user, BROKER.name) == ("rabbit", 5673, "shop", "/")
    assert (DATABASE.host, DATABASE.port, DATABASE.user, DATABASE.name) == ("db", 5433, "shop", "shop")
    assert Address.of_database("postgresql:///shop").who == "the default user (the URL names none)"


def test_a_lost_connection_in_a_few_words() -> None:
    assert in_words(refused_socket()) == "connection refused"
    closed = pika.exceptions.ConnectionClosedByBroker(320, "CONNECTION_FORCED - broker forced connection closure")
    assert in_words(closed) == "connection closed (320 CONNECTION_FORCED - broker forced connection closure)"
    assert in_words(postgres_said("server closed the connection unexpectedly\n\tThis probably means")) == (
        "server closed the connection unexpectedly"
    )
    assert in_words(ValueError("something else\nmore")) == "ValueError: something else"
