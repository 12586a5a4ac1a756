"""Fixtures of the integration tier."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pipeline.core.runtime import Runtime
from tests.support.webhook_support import running_intake


@pytest.fixture(scope="module")
def intake(runtime: Runtime) -> Iterator[str]:
    """The webhook intake served by this process, on its runtime."""
    with running_intake(runtime) as url:
        yield url
