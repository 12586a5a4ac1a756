"""In CI a skipped test fails the run, unless it is on the run's short allow-list.

Locally a missing service or tool skips a test (``bench.harness.services.unavailable``,
the ``promtool`` mark of ``tests/unit/test_alert_rules.py``). CI starts and installs them
all (``.ci/run``), so a skip there is a check that silently stopped running: the run
fails, and its summary names each such test and why it skipped. ``tests/conftest.py``
registers this plugin when ``CI`` is set, with its ``CI_MAY_SKIP``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import pytest

#: The environment variable CI sets (``CI=true bash .ci/run``); any value but empty turns this on.
CI_VARIABLE = "CI"


class SkipsFailCi:
    """Notes every skip of the run not on ``allowed``; fails the run at the end when there is one."""

    def __init__(self, allowed: Mapping[str, str]) -> None:
        #: Node ids (a file, a test, or a test with all its parameters) that may skip, with why.
        self.allowed = allowed
        #: Node id and reason of each skip not allowed, in the order they happened.
        self.refused: list[tuple[str, str]] = []

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self._note(report)

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        self._note(report)  # a module skipped whole (``pytest.importorskip`` at its top)

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if self.refused and exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if not self.refused:
            return
        terminalreporter.section("skipped in CI, so the run fails (allowed: tests/conftest.py CI_MAY_SKIP)", red=True)
        for nodeid, reason in self.refused:
            terminalreporter.line(f"{nodeid}: {reason}")

    def _note(self, report: pytest.TestReport | pytest.CollectReport) -> None:
        if report.skipped and not hasattr(report, "wasxfail") and not self._is_allowed(report.nodeid):
            self.refused.append((report.nodeid, _reason(report)))

    def _is_allowed(self, nodeid: str) -> bool:
        return any(nodeid == key or nodeid.startswith((f"{key}::", f"{key}[")) for key in self.allowed)


def register(config: pytest.Config, allowed: Mapping[str, str]) -> None:
    """Make skips fail this run when ``CI`` is set; nothing otherwise."""
    if os.environ.get(CI_VARIABLE):
        config.pluginmanager.register(SkipsFailCi(allowed), "skips-fail-ci")


def _reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    """The skip's message (pytest keeps it as the last item of a (path, line, message) tuple)."""
    longrepr = report.longrepr
    message = str(longrepr[-1]) if isinstance(longrepr, tuple) else str(longrepr)
    return message.removeprefix("Skipped: ")
