"""In CI a skip fails the run unless the test is allowed; outside CI it is a skip as before."""

from __future__ import annotations

import pytest

from tests.support.ci_skips import CI_VARIABLE

pytest_plugins = ["pytester"]

#: A run's conftest as ``tests/conftest.py`` wires it, with one allowed test.
CONFTEST = """
from tests.support import ci_skips

def pytest_configure(config):
    ci_skips.register(config, {"test_skips.py::test_allowed": "cannot run in CI"})
"""

TESTS = """
import pytest

def test_runs():
    pass

@pytest.mark.skipif(True, reason="the tool is not installed")
def test_missing_tool():
    pass

@pytest.mark.parametrize("n", [1, 2])
def test_allowed(n):
    pytest.skip("allowed")

@pytest.mark.xfail(reason="a known bug")
def test_known_bug():
    assert False
"""


@pytest.fixture
def suite(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_skips=TESTS)
    return pytester


def test_in_ci_a_skip_not_allowed_fails_the_run_and_is_named(
    suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CI_VARIABLE, "true")
    result = suite.runpytest()
    result.assert_outcomes(passed=1, skipped=3, xfailed=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*skipped in CI*", "test_skips.py::test_missing_tool: the tool is not installed"])
    assert "test_allowed" not in result.stdout.str().split("skipped in CI")[1]


def test_in_ci_allowed_skips_and_xfails_pass(suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CI_VARIABLE, "true")
    result = suite.runpytest("-k", "not missing_tool")
    result.assert_outcomes(passed=1, skipped=2, xfailed=1)
    assert result.ret == pytest.ExitCode.OK


def test_in_ci_a_module_skipped_whole_fails_the_run(suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CI_VARIABLE, "true")
    suite.makepyfile(test_absent='import pytest\npytest.importorskip("no_such_module")\n')
    result = suite.runpytest("test_absent.py")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["test_absent.py: could not import 'no_such_module'*"])


def test_outside_ci_a_skip_is_only_a_skip(suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CI_VARIABLE, raising=False)
    result = suite.runpytest()
    result.assert_outcomes(passed=1, skipped=3, xfailed=1)
    assert result.ret == pytest.ExitCode.OK
    assert "skipped in CI" not in result.stdout.str()
