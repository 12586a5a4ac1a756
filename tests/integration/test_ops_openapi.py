"""The OpenAPI document checked against the running API (schemathesis, bounded to a few hundred requests).

Against an app on a database of its own (``own_services``): the generated requests
purge, replay and pause freely there, and the run's other tests never see it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import allow_header_conformance

from bench.harness import services
from pipeline.bootstrap import build_sending
from pipeline.core.runtime import Runtime
from storage.database import get_sessionmaker
from tests.support.dlq_support import own_services  # noqa: F401 - a fixture
from tests.support.ops_support import ADMIN_TOKEN, bearer, running_app, with_tokens

#: Examples per operation: about 20 operations, a few hundred requests in all.
EXAMPLES_PER_OPERATION = 10


@pytest.fixture(scope="module")
def isolated_api(runtime: Runtime, own_services: services.RunServices) -> Iterator[str]:  # noqa: F811
    sessions = get_sessionmaker(own_services.database_url)
    current = with_tokens(runtime)
    current = dataclasses.replace(
        current, sessions=sessions, sending=build_sending(current.settings, sessions, current.alerter, [current.mailer])
    )
    with running_app(current) as url:
        yield url


@pytest.fixture(scope="module")
def ops_schema(isolated_api: str) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{isolated_api}/api/ops/openapi.json")


schema = schemathesis.pytest.from_fixture("ops_schema")


@schema.parametrize()
@settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, suppress_health_check=list(HealthCheck))
def test_the_api_answers_as_its_document_says(case: schemathesis.Case) -> None:
    # Left out: the ``Allow`` of a 405. Starlette answers it from the first route matching the path, and a
    # path with one route per method (``/api/ops/session``; the cron paths, for distinct operation ids) has
    # several, as has ``/dead-letters/replay`` (``/dead-letters/{letter_id}`` matches its path too).
    case.call_and_validate(headers=bearer(ADMIN_TOKEN), timeout=30, excluded_checks=[allow_header_conformance])
