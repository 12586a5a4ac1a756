"""Chaos: issue 11's scenarios, each a fault in the middle of 1,000 emails and 200 webhook events.

One runner (``tests.chaos.runner``), parameterised by the fault (``tests.chaos.faults``).
Each asserts from the fake provider's own count and the database: nothing lost,
nothing delivered or applied twice, nothing stuck, and the last item done within
60 s of the fault's end. ``make chaos`` runs this tier alone and writes the figures of
the run into ``docs/RELIABILITY.md`` (``WRITE_RELIABILITY=1``); ``make test`` writes nothing.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bench.harness.private import Endpoints, PrivateServices
from tests.chaos import faults, runner
from tests.chaos.reliability import Report

pytestmark = [pytest.mark.chaos, pytest.mark.slow]


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


@pytest.mark.parametrize("fault", faults.ALL, ids=[_slug(fault.id) for fault in faults.ALL])
def test_nothing_lost_twice_or_stuck_and_done_within_60s_of_the_fault(
    fault: runner.Fault,
    private: PrivateServices,
    private_run: Endpoints,
    tmp_path: Path,
    reliability_report: Report,
) -> None:
    outcome = runner.run(fault, private, private_run, tmp_path)
    reliability_report.add(outcome)
    print(f"\n[figures] {outcome.explain()}")
    assert outcome.passed, outcome.explain()
