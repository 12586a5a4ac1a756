"""Fixtures of the chaos tier: the private services (``tests/conftest.py``) and the report written at the end."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from bench.harness.private import PrivateServices
from tests.chaos.faults import ALL
from tests.chaos.reliability import WRITE_VARIABLE, Report


@pytest.fixture(scope="session")
def reliability_report(private: PrivateServices) -> Iterator[Report]:
    """Collects every scenario's outcome; writes ``docs/RELIABILITY.md`` once the last one is done, if asked."""
    report = Report(private, order=[fault.id for fault in ALL])
    yield report
    if os.environ.get(WRITE_VARIABLE):
        report.write()
