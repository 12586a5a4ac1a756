"""Acceptance: a process that cannot use its database or broker says why in one line and exits non-zero.

Each case is the real command, as a supervisor runs it, with one setting wrong: a
closed broker port (retried for STARTUP_WAIT_MINUTES, shortened here to 3 s), a
wrong broker password, a vhost or a database that does not exist, a MySQL URL, a
database never migrated, and ``db upgrade`` on a database that does not exist.
Every password in the URLs is distinctive, and must appear nowhere in the output.
"""

from __future__ import annotations

import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from bench.harness import services
from bench.harness.processes import run_cli
from storage import migrate

pytestmark = pytest.mark.slow

#: STARTUP_WAIT_MINUTES of these tests: 3 s.
WAIT_MINUTES = "0.05"
#: How long a command may take beyond the wait: starting Python and importing the project on a busy machine.
START_SECONDS = 20
#: The exit statuses of ``pipeline.cli.common``: an invalid setting (click's), EX_TEMPFAIL and EX_CONFIG.
INVALID, UNREACHABLE, REFUSED = 1, 75, 78
PASSWORD = f"pw-{uuid.uuid4().hex[:12]}"


def closed_port() -> int:
    """A port of this machine nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def output_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]


def refused_in_one_line(result: subprocess.CompletedProcess[str], message: str, *, status: int = REFUSED) -> None:
    """Exit ``status`` and a single line of output, ending with ``message``."""
    lines = output_lines(result)
    assert result.returncode == status, lines
    assert len(lines) == 1 and lines[0].endswith(message), lines
    assert PASSWORD not in lines[0]


@pytest.fixture
def env(environment: dict[str, str]) -> dict[str, str]:
    """The run's (migrated) database and vhost, with a short start-up wait."""
    return {**environment, "STARTUP_WAIT_MINUTES": WAIT_MINUTES, "LOG_LEVEL": "INFO"}


def with_broker(env: dict[str, str], *, password: str = PASSWORD, port: int = 5672, vhost: str) -> dict[str, str]:
    return {**env, "BROKER_URL": f"amqp://guest:{password}@{services.RABBITMQ_HOST}:{port}/{vhost}"}


def with_database(env: dict[str, str], name: str) -> dict[str, str]:
    url = make_url(services.POSTGRES_ADMIN_URL).set(password=PASSWORD, database=name)
    return {**env, "DATABASE_URL": url.render_as_string(hide_password=False)}


def test_a_closed_broker_port_is_retried_for_the_wait_then_the_worker_exits(
    env: dict[str, str], tmp_path: Path
) -> None:
    port = closed_port()
    started = time.monotonic()
    result = run_cli("worker", "-p", "1", "-t", "1", env=with_broker(env, port=port, vhost="x"), cwd=tmp_path)
    took = time.monotonic() - started
    lines = output_lines(result)
    cause = f"BROKER_URL: nothing accepts connections at {services.RABBITMQ_HOST}:{port} (connection refused)"
    assert result.returncode == UNREACHABLE, lines
    assert took < 3 + START_SECONDS, f"{took:.1f}s"
    assert len(lines) == 2, lines  # the wait announced, then the verdict
    assert " WARNING " in lines[0] and f"{cause}; trying again for up to 3s." in lines[0]
    assert " CRITICAL " in lines[1] and lines[1].endswith(f"{cause}; gave up after 3s (STARTUP_WAIT_MINUTES)")
    assert PASSWORD not in result.stderr


def test_a_wrong_broker_password_stops_the_worker_at_once(
    env: dict[str, str], test_services: services.RunServices, tmp_path: Path
) -> None:
    result = run_cli("worker", "-p", "1", "-t", "1", env=with_broker(env, vhost=test_services.vhost), cwd=tmp_path)
    refused_in_one_line(
        result, f"BROKER_URL: RabbitMQ at {services.RABBITMQ_HOST}:5672 refused the credentials of user 'guest'"
    )


def test_a_missing_vhost_stops_the_ticker_at_once(env: dict[str, str], tmp_path: Path) -> None:
    vhost = f"mw_missing_{uuid.uuid4().hex[:8]}"
    result = run_cli("ticker", env=with_broker(env, password="guest", vhost=vhost), cwd=tmp_path)
    refused_in_one_line(
        result, f"BROKER_URL: vhost '{vhost}' does not exist on RabbitMQ at {services.RABBITMQ_HOST}:5672"
    )


@pytest.mark.parametrize("command", [("worker", "-p", "1", "-t", "1"), ("db", "upgrade")], ids=["worker", "db upgrade"])
def test_a_missing_database_stops_the_command_at_once(
    env: dict[str, str], tmp_path: Path, command: tuple[str, ...]
) -> None:
    name = f"mw_missing_{uuid.uuid4().hex[:8]}"
    result = run_cli(*command, env=with_database(env, name), cwd=tmp_path)
    admin = make_url(services.POSTGRES_ADMIN_URL)
    where = f"{admin.host}:{admin.port or 5432}"
    refused_in_one_line(result, f"DATABASE_URL: database '{name}' does not exist on PostgreSQL at {where}")


def test_a_mysql_url_is_refused_naming_the_setting(env: dict[str, str], tmp_path: Path) -> None:
    result = run_cli("worker", env={**env, "DATABASE_URL": f"mysql://shop:{PASSWORD}@127.0.0.1/shop"}, cwd=tmp_path)
    refused_in_one_line(
        result,
        "Error: DATABASE_URL='mysql://shop:***@127.0.0.1/shop' is invalid: unsupported scheme 'mysql' "
        "(expected postgresql://user:password@host:5432/name)",
        status=INVALID,
    )


def test_a_database_never_migrated_stops_serve_naming_the_upgrade(
    env: dict[str, str], run: services.RunServices, tmp_path: Path
) -> None:
    fresh = {**env, "DATABASE_URL": run.database_url, "BROKER_URL": run.broker_url}
    result = run_cli("serve", "--port", str(closed_port()), env=fresh, cwd=tmp_path)
    refused_in_one_line(result, f"code needs {migrate.head_revision()}: run `minalesh-workers db upgrade`")
    assert f"DATABASE_URL: database '{run.database}' has no schema yet" in result.stderr
    upgraded = run_cli("db", "upgrade", env=fresh, cwd=tmp_path)  # the database answers: no schema is asked of it
    assert upgraded.returncode == 0, upgraded.stderr
