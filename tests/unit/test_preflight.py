"""The start-up check: its settings, the bounded wait, a broker cluster's nodes, the schema.

No service is reached: the probes are scripted, or pika's connection replaced, and
the schema checks run on SQLite files.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import pika
import pytest

from pipeline.core import preflight
from pipeline.core.connection_errors import Address, Failure, Verdict
from pipeline.core.errors import ConfigError, ServiceRefused, ServiceUnreachable
from pipeline.core.settings import Settings
from storage import migrate
from tests.support.connection_support import refused_socket

DATABASE = Address.of_database("postgresql://shop:pg-secret-2@db:5433/shop")


# --- settings -------------------------------------------------------------------------------------


@pytest.mark.parametrize("url", ["mysql://shop:pw-secret@db/shop", "mysql+pymysql://shop:pw-secret@db/shop"])
def test_a_database_url_without_a_shipped_driver_is_refused_naming_its_scheme(url: str) -> None:
    with pytest.raises(ConfigError) as raised:
        Settings.from_env({"DATABASE_URL": url})
    message = str(raised.value)
    scheme = url.split(":", 1)[0]
    assert message.startswith("DATABASE_URL='") and f"unsupported scheme {scheme!r}" in message
    assert "postgresql://" in message and "pw-secret" not in message


@pytest.mark.parametrize(
    "url", ["postgres://a@b/c", "postgresql://a@b/c", "postgresql+psycopg2://a@b/c", "sqlite:///x"]
)
def test_postgresql_and_sqlite_urls_are_accepted(url: str) -> None:
    assert Settings.from_env({"DATABASE_URL": url}).database_url == url


def test_the_startup_wait_is_half_a_minute_by_default_and_may_be_zero() -> None:
    assert Settings.from_env({}).startup_wait_minutes == 0.5
    assert Settings.from_env({"STARTUP_WAIT_MINUTES": "0"}).startup_wait_minutes == 0
    with pytest.raises(ConfigError, match="STARTUP_WAIT_MINUTES='-1' is invalid"):
        Settings.from_env({"STARTUP_WAIT_MINUTES": "-1"})


# --- the bounded wait -----------------------------------------------------------------------------


class FakeTime:
    """A clock that moves only when the code under test sleeps (or a try takes time)."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def scripted(*failures: Optional[Failure], taking: float = 0.0, time: FakeTime) -> preflight.Probe:
    """A probe answering ``failures`` in turn (the last one for ever), each try taking ``taking`` seconds
    (at most its timeout, as a connect timeout cuts a try short)."""
    answers = list(failures)

    def probe(timeout: int) -> Optional[Failure]:
        assert 2 <= timeout <= preflight.CONNECT_TIMEOUT_SECONDS
        time.now += min(taking, timeout)
        return answers.pop(0) if len(answers) > 1 else answers[0]

    return probe


UNREACHABLE = Failure(Verdict.UNREACHABLE, "nothing accepts connections at rabbit:5673 (connection refused)")
REFUSED = Failure(Verdict.REFUSED, "RabbitMQ at rabbit:5673 refused the credentials of user 'shop'")


def test_an_unreachable_service_is_tried_with_backoff_until_the_wait_is_over(caplog: pytest.LogCaptureFixture) -> None:
    time = FakeTime()
    wait = preflight.Wait(30, clock=time.clock, sleep=time.sleep)
    with caplog.at_level(logging.INFO, logger=preflight.__name__), pytest.raises(ServiceUnreachable) as raised:
        wait.until_ready("BROKER_URL", scripted(UNREACHABLE, time=time))
    assert str(raised.value) == (
        "BROKER_URL: nothing accepts connections at rabbit:5673 (connection refused); "
        "gave up after 30s (STARTUP_WAIT_MINUTES)"
    )
    assert raised.value.exit_status == 75
    assert time.sleeps[:5] == [0.5, 1.0, 2.0, 4.0, 5.0] and max(time.sleeps) == preflight.MAX_PAUSE_SECONDS
    assert sum(time.sleeps) == pytest.approx(30)
    assert [record.getMessage() for record in caplog.records] == [
        "BROKER_URL: nothing accepts connections at rabbit:5673 (connection refused); trying again for up to 30s."
    ]


def test_a_refusal_ends_the_wait_at_once() -> None:
    time = FakeTime()
    wait = preflight.Wait(30, clock=time.clock, sleep=time.sleep)
    with pytest.raises(ServiceRefused) as raised:
        wait.until_ready("BROKER_URL", scripted(UNREACHABLE, REFUSED, time=time))
    assert str(raised.value) == "BROKER_URL: RabbitMQ at rabbit:5673 refused the credentials of user 'shop'"
    assert raised.value.exit_status == 78 and time.sleeps == [0.5]


def test_a_service_that_comes_up_within_the_wait_lets_the_process_start(caplog: pytest.LogCaptureFixture) -> None:
    time = FakeTime()
    wait = preflight.Wait(30, clock=time.clock, sleep=time.sleep)
    with caplog.at_level(logging.INFO, logger=preflight.__name__):
        wait.until_ready("DATABASE_URL", scripted(UNREACHABLE, UNREACHABLE, None, time=time))
    assert [record.levelname for record in caplog.records] == ["WARNING", "INFO"]
    assert caplog.records[-1].getMessage() == "DATABASE_URL: reachable after 1.5s."


def test_the_wait_is_shared_by_the_services_and_slow_tries_count() -> None:
    time = FakeTime()
    wait = preflight.Wait(30, clock=time.clock, sleep=time.sleep)
    wait.until_ready("DATABASE_URL", scripted(UNREACHABLE, None, taking=60, time=time))
    with pytest.raises(ServiceUnreachable) as raised:
        wait.until_ready("BROKER_URL", scripted(UNREACHABLE, taking=60, time=time))
    assert time.now - 100 <= 30 + preflight.CONNECT_TIMEOUT_SECONDS  # a last try may start just before the end
    assert "gave up after 2" in str(raised.value)  # the broker's own share of the 30 s


def test_no_wait_means_one_try() -> None:
    time = FakeTime()
    with pytest.raises(ServiceUnreachable):
        preflight.Wait(0, clock=time.clock, sleep=time.sleep).until_ready(
            "BROKER_URL", scripted(UNREACHABLE, time=time)
        )
    assert time.sleeps == []


def test_a_broker_cluster_is_ready_when_one_node_is_and_refused_when_one_refuses(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    answers: dict[str, Optional[Exception]] = {}

    class Connection:
        def __init__(self, parameters: pika.URLParameters) -> None:
            error = answers[parameters.host]
            if error is not None:
                raise error

        def close(self) -> None:
            pass

    monkeypatch.setattr(pika, "BlockingConnection", Connection)
    nodes = ["amqp://shop:pw@rabbit1:5672/%2F", "amqp://shop:pw@rabbit2:5672/%2F"]
    answers.update(rabbit1=refused_socket(), rabbit2=None)
    assert preflight.broker_probe(nodes, 2) is None
    answers.update(rabbit2=refused_socket())
    both = preflight.broker_probe(nodes, 2)
    assert both is not None and both.verdict is Verdict.UNREACHABLE
    assert "rabbit1:5672" in both.reason and "rabbit2:5672" in both.reason
    answers.update(rabbit2=pika.exceptions.ProbableAuthenticationError("(403) 'ACCESS_REFUSED - Login was refused'"))
    refused = preflight.broker_probe(nodes, 2)
    assert refused is not None and refused.verdict is Verdict.REFUSED and "rabbit2:5672" in refused.reason


# --- the schema -----------------------------------------------------------------------------------


def test_the_schema_must_be_the_codes(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    url = f"sqlite:///{tmp_path / 'shop.sqlite3'}"
    head = migrate.head_revision()
    empty = preflight.database_probe(url, 2, schema=True)
    assert empty is not None and empty.verdict is Verdict.REFUSED
    assert empty.reason == f"database '{tmp_path / 'shop.sqlite3'}' has no schema yet, code needs {head}: " + (
        "run `minalesh-workers db upgrade`"
    )
    assert preflight.database_probe(url, 2, schema=False) is None  # what `db upgrade` asks

    migrate.upgrade(url, "0009_ops_api")
    behind = preflight.database_probe(url, 2, schema=True)
    assert behind is not None and behind.verdict is Verdict.REFUSED
    assert behind.reason == f"schema at revision 0009_ops_api, code needs {head}: run `minalesh-workers db upgrade`"

    migrate.upgrade(url)
    assert preflight.database_probe(url, 2, schema=True) is None


def test_a_schema_newer_than_the_code_is_let_through_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger=preflight.__name__):
        assert preflight.schema_failure("0099_from_the_future", DATABASE) is None
    assert "schema at revision 0099_from_the_future, which this code does not ship" in caplog.text
