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
from typing import Any

import pytest

from bench.harness.private import Endpoints, PrivateServices
from tests.chaos import faults, runner
from tests.chaos.reliability import Report

pytestmark = [pytest.mark.chaos, pytest.mark.slow]


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


#: Scenarios that do not hold on this tree, with why: kept running, so a fix shows as XPASS.
KNOWN_FAILING = {
    "provider storm": (
        "#18 open: under 30% 500s and 10% held answers the outage pause begins (5 failures with no success "
        "between, 16 threads in flight) and does not end after the storm calms: 390-490 emails still "
        "'retrying' 90 s later, 0 lost, 0 twice (before #18: settled 15.7 s after)"
    ),
}


def _cases() -> list[Any]:
    return [
        pytest.param(fault, marks=pytest.mark.xfail(reason=KNOWN_FAILING[fault.id], strict=False))
        if fault.id in KNOWN_FAILING
        else fault
        for fault in faults.ALL
    ]


@pytest.mark.parametrize("fault", _cases(), ids=[_slug(fault.id) for fault in faults.ALL])
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
