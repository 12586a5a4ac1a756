"""Shared fixtures: this run's database and vhost, the fake Resend, an in-process worker; skips fail CI."""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Iterator
from contextlib import ExitStack

import pytest
from dramatiq import Worker
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from sqlalchemy.orm import Session, sessionmaker

from bench.harness import services
from bench.harness.fake_resend import FakeResend
from bench.harness.private import Endpoints, PrivateServices, private_services
from pipeline.archiver import RabbitmqArchiver
from pipeline.bootstrap import bootstrap
from pipeline.core.runtime import Runtime
from pipeline.core.settings import Settings
from pipeline.providers.resend import ResendMailer
from storage import migrate
from storage.database import get_engine
from tests.support import ci_skips

#: Fast schedule for tests: retries after 0.3 s, 0.6 s, 1.2 s (the last in two hops of 0.6 s).
TEST_ENVIRONMENT = {
    "RESEND_API_KEY": "re_test_key",
    "EMAIL_FROM": "Minalesh Tests <tests@minalesh.test>",
    "EMAIL_MAX_RETRIES": "3",
    "EMAIL_RETRY_DELAY_MINUTES": "0.005",
    "EMAIL_MAX_RETRY_DELAY_MINUTES": "0.05",
    "EMAIL_LEASE_MINUTES": "0.5",
    "EMAIL_RATE_LIMIT_PER_SECOND": "500",
    "BROKER_MAX_HOLD_MINUTES": "0.01",
    "LOG_LEVEL": "WARNING",
    # Webhook retries after 0.12, 0.24, 0.48, then 0.72 s twice (capped; each in two hops).
    "WEBHOOK_INITIAL_RETRY_DELAY_MINUTES": "0.002",
    "WEBHOOK_MAX_RETRY_DELAY_MINUTES": "0.012",
    "WEBHOOK_MAX_RETRIES": "5",
    "PAYMENT_WEBHOOK_SECRET": "whsec_test_shared",
    "TELEBIRR_WEBHOOK_SECRET": "whsec_test_telebirr",
    # Two, as during a rotation (tests.support.delivery_support signs with either).
    "RESEND_WEBHOOK_SECRET": "whsec_bWluYWxlc2gtdGVzdC1yZXNlbmQtZXZlbnRzLW5ldyE= "
    "whsec_bWluYWxlc2gtdGVzdC1yZXNlbmQtZXZlbnRzLW9sZCE=",
}

#: The tests a CI run may skip (node id: why); any other skip fails a run with ``CI`` set
#: (``tests/support/ci_skips.py``). Empty: ``.ci/run`` provides every service and tool a test
#: asks for (PostgreSQL, RabbitMQ, Chromium, promtool). An entry needs a reason CI cannot fix.
CI_MAY_SKIP: dict[str, str] = {}


def pytest_configure(config: pytest.Config) -> None:
    ci_skips.register(config, CI_MAY_SKIP)


@pytest.fixture(scope="session")
def test_services() -> Iterator[services.RunServices]:
    created = services.create()
    migrate.upgrade(created.database_url)
    yield created
    get_engine(created.database_url).dispose()
    services.destroy(created)


@pytest.fixture(scope="session")
def private() -> Iterator[PrivateServices]:
    """A PostgreSQL cluster and a RabbitMQ node of this run alone, for the tests that restart or kill them.

    Started at the first test that asks (seconds), torn down at the end of the run.
    """
    with ExitStack() as stack:
        yield services.entered(stack, private_services(), "private PostgreSQL and RabbitMQ")


@pytest.fixture
def private_run(private: PrivateServices) -> Iterator[Endpoints]:
    """A database and a vhost of one test on the private services; both up again whatever the test broke."""
    with private.fresh(f"mw_private_{uuid.uuid4().hex[:10]}") as endpoints:
        yield endpoints
        get_engine(endpoints.database_url).dispose()


@pytest.fixture(scope="session")
def fake_resend() -> Iterator[FakeResend]:
    # A raised team limit: the fast tests follow it (as the defaults follow a provider's header).
    with FakeResend(api_key="re_test_key", advertised_limit=1000) as fake:
        yield fake


@pytest.fixture(scope="session")
def environment(test_services: services.RunServices, fake_resend: FakeResend) -> dict[str, str]:
    """The variables a worker of this run needs; subprocesses get them too."""
    return {
        **os.environ,
        **TEST_ENVIRONMENT,
        "DATABASE_URL": test_services.database_url,
        "BROKER_URL": test_services.broker_url,
        "RESEND_API_URL": fake_resend.url,
    }


@pytest.fixture(scope="session")
def settings(environment: dict[str, str]) -> Settings:
    return Settings.from_env(environment)


@pytest.fixture(scope="session")
def runtime(settings: Settings) -> Iterator[Runtime]:
    """This process bootstrapped on the run's RabbitMQ vhost, with a worker and an archiver."""
    # A short timeout, so a test of a request the provider answers too late runs in seconds.
    mailer = ResendMailer(api_key=settings.resend_api_key or "", api_url=settings.resend_api_url, timeout=3)
    current = bootstrap(settings, mailer=mailer)
    for actor in current.broker.actors.values():
        current.broker.declare_queue(actor.queue_name, ensure=True)
    worker = Worker(current.broker, worker_threads=8)
    worker.start()
    stop = threading.Event()
    assert isinstance(current.broker, RabbitmqBroker)
    archiver_of_run = RabbitmqArchiver(current.broker, current.sessions, alerter=current.alerter)
    archiver = threading.Thread(target=archiver_of_run.run, args=(stop,))
    archiver.start()
    yield current
    stop.set()
    archiver.join(timeout=10)
    worker.stop()
    current.broker.close()


@pytest.fixture
def sessions(runtime: Runtime) -> sessionmaker[Session]:
    return runtime.sessions


@pytest.fixture(autouse=True)
def _fresh_provider_script(request: pytest.FixtureRequest) -> Iterator[None]:
    """Scripted provider failures never leak into the next test."""
    yield
    if "fake_resend" in request.fixturenames:
        request.getfixturevalue("fake_resend").clear_failures()
