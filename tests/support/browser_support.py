"""Helpers of the dashboard's browser test: Debian's Chromium driven by Playwright, screenshots, sign-in.

Playwright's own browser builds are never downloaded (``playwright install`` is not
run anywhere): the test drives the system's ``/usr/bin/chromium``, which ``.ci/run``
installs with apt-get when it is missing. A machine without it skips the test
locally and fails it in CI, like a missing PostgreSQL.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from bench.harness import services

#: Debian's package (``apt-get install chromium``); Playwright drives it, it downloads nothing.
CHROMIUM = Path(os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium"))
#: The size the screenshots are taken at (a laptop's 1440x900).
VIEWPORT = {"width": 1440, "height": 900}
#: Where screenshots go when set (``SCREENSHOTS_DIR=docs/screenshots``); pytest's tmp dir otherwise.
SCREENSHOTS_VARIABLE = "SCREENSHOTS_DIR"
#: The mark the dashboard sets once a page's first data is painted (``app.js``).
FIRST_DATA_MARK = "ops:first-data"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Headless Chromium of the system, for this module's tests."""
    if not CHROMIUM.exists():
        services.unavailable(f"{CHROMIUM} is missing (apt-get install chromium; .ci/run does it)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh browser context (no cookie) at the screenshots' size."""
    context = browser.new_context(viewport=VIEWPORT)
    opened = context.new_page()
    yield opened
    context.close()


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    chosen = os.environ.get(SCREENSHOTS_VARIABLE)
    folder = Path(chosen) if chosen else tmp_path_factory.mktemp("screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def sign_in(page: Page, base: str, token: str) -> None:
    """Sign in through the form and wait for the overview's first figures."""
    page.goto(f"{base}/ops")
    page.fill("#token", token)
    page.click("form.sign-in-card button[type=submit]")
    page.wait_for_selector(".tiles .tile")
    wait_for_data(page)


def wait_for_data(page: Page) -> None:
    """Until the page shown has painted its first data (every part of it)."""
    # A function, not an expression: an expression would be eval'd, which the dashboard's CSP refuses.
    page.wait_for_function(f"() => performance.getEntriesByName('{FIRST_DATA_MARK}').length > 0")


def open_page(page: Page, url: str, ready: str) -> None:
    """Go to ``url`` and wait for ``ready`` (a selector) and the page's first data."""
    page.goto(url)
    page.wait_for_selector(ready)
    wait_for_data(page)


def first_data_ms(page: Page, url: str, ready: str) -> float:
    """Milliseconds from the navigation's start to the first data painted (the dashboard's mark)."""
    open_page(page, url, ready)
    return float(page.evaluate(f"performance.getEntriesByName('{FIRST_DATA_MARK}')[0].startTime"))


def median_load_ms(page: Page, url: str, ready: str, loads: int = 5) -> float:
    return statistics.median(first_data_ms(page, url, ready) for _ in range(loads))


def api_status(page: Page, path: str, method: str = "GET", csrf: bool = False) -> int:
    """The status the API answers this page's session (its cookie), optionally with its CSRF token."""
    script = """async ([path, method, csrf]) => {
        const headers = {'Content-Type': 'application/json'};
        if (csrf) {
            const session = await fetch('/api/ops/session').then((r) => r.json());
            headers['X-CSRF-Token'] = session.csrf_token;
        }
        const body = method === 'GET' ? undefined : JSON.stringify({ids: [1], dry_run: true});
        return (await fetch(path, {method, headers, body})).status;
    }"""
    return int(page.evaluate(script, [path, method, csrf]))
