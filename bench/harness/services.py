"""A database and a RabbitMQ vhost of their own for each test run.

Runs on one machine (a developer's, CI's) never see each other's rows or messages.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass
from typing import NoReturn, Protocol, TypeVar

import pika
import psycopg2
import pytest

from bench.harness.private import run_sql

POSTGRES_ADMIN_URL = os.environ.get("TEST_POSTGRES_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
T = TypeVar("T")

RABBITMQ_HOST = os.environ.get("TEST_RABBITMQ_HOST", "127.0.0.1")
#: The type of every queue declared in a run's vhost (its ``--default-queue-type``): ``quorum`` runs the
#: tests on quorum queues (``tests/cluster/test_quorum_vhost.py`` runs the dead-letter tests so).
QUEUE_TYPE = os.environ.get("TEST_RABBITMQ_QUEUE_TYPE", "classic")


class Located(Protocol):
    """Where a run's database and broker vhost are: this module's, or a private pair (``private.py``)."""

    @property
    def database_url(self) -> str: ...

    @property
    def broker_url(self) -> str: ...


@dataclass(frozen=True)
class RunServices:
    database: str
    vhost: str

    @property
    def database_url(self) -> str:
        return POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + "/" + self.database

    @property
    def broker_url(self) -> str:
        return f"amqp://guest:guest@{RABBITMQ_HOST}:5672/{self.vhost}"


def unavailable(reason: str) -> NoReturn:
    """A missing service skips the tests on a laptop, and fails them in CI."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI must start it: see .ci/run)", pytrace=False)
    pytest.skip(reason)


def entered(stack: ExitStack, services: AbstractContextManager[T], what: str) -> T:
    """``services`` started and entered on ``stack``; when they cannot start, the test is skipped (failed in CI)."""
    try:
        return stack.enter_context(services)
    except (RuntimeError, OSError, subprocess.SubprocessError, AssertionError) as exc:
        unavailable(f"{what} could not start: {exc}")


def admin_sql(statement: str) -> None:
    """One statement on the machine's PostgreSQL as its administrator (roles, databases)."""
    run_sql(POSTGRES_ADMIN_URL, statement)


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, timeout=60)


def create_database(name: str) -> str:
    """A database of this name on the machine's PostgreSQL (a test is skipped without one); its URL."""
    try:
        admin_sql(f'CREATE DATABASE "{name}"')
    except psycopg2.OperationalError as exc:
        unavailable(f"PostgreSQL is not reachable at {POSTGRES_ADMIN_URL}: {exc}")
    return POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + "/" + name


def drop_database(name: str) -> None:
    admin_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def create() -> RunServices:
    name = f"mw_test_{uuid.uuid4().hex[:10]}"
    create_database(name)
    if shutil.which("rabbitmqctl") is None:
        unavailable("rabbitmqctl is not installed: cannot create a RabbitMQ vhost for this run")
    try:
        rabbitmqctl("add_vhost", name, "--default-queue-type", QUEUE_TYPE)
        rabbitmqctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
        pika.BlockingConnection(pika.URLParameters(RunServices(name, name).broker_url)).close()
    except (subprocess.CalledProcessError, pika.exceptions.AMQPError) as exc:
        _forget(name)
        stderr = getattr(exc, "stderr", None) or b""
        unavailable(f"RabbitMQ is not usable: {exc} {stderr.decode(errors='replace').strip()}")
    return RunServices(database=name, vhost=name)


def _forget(name: str) -> None:
    """Drop what a creation that failed half-way made, so it does not outlive the run."""
    try:
        destroy(RunServices(database=name, vhost=name))
    except (subprocess.CalledProcessError, psycopg2.Error):
        pass


def destroy(services: RunServices) -> None:
    drop_database(services.database)
    rabbitmqctl("delete_vhost", services.vhost)


def reject_publishes(services: RunServices, queue: str) -> None:
    """Make RabbitMQ refuse every publish to ``queue`` (a publisher-confirm nack)."""
    rabbitmqctl(
        "set_policy",
        "-p",
        services.vhost,
        "--apply-to",
        "queues",
        f"reject-{queue}",
        f"^{queue}$",
        '{"max-length": 0, "overflow": "reject-publish"}',
    )


def accept_publishes(services: RunServices, queue: str) -> None:
    rabbitmqctl("clear_policy", "-p", services.vhost, f"reject-{queue}")
