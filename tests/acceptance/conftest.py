"""Fixtures of the acceptance tier: real processes on services of their own."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bench.harness import services
from storage.database import get_engine


@pytest.fixture
def run() -> Iterator[services.RunServices]:
    """A database and a vhost for this test alone: its processes see no other test's messages."""
    created = services.create()
    yield created
    get_engine(created.database_url).dispose()
    services.destroy(created)
