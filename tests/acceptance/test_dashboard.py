"""The dashboard end to end: the real ``serve``, a worker, an archiver and the fake Resend, in headless Chromium.

An operator signs in, finds a dead email by its recipient, replays it after the
confirmation, and sees it sent (on the page and at the provider). Signed out, the
dashboard shows the sign-in and the API refuses; a read-only session sees no action
button at all; an API that stops answering shows a banner over the last data. Each
page is saved as a screenshot (``SCREENSHOTS_DIR=docs/screenshots`` to refresh the
README's), and the page load is printed as a figure.
"""

from __future__ import annotations

import secrets
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest
import requests
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from bench.harness import services
from bench.harness.fake_resend import FakeResend
from bench.harness.processes import run_cli, running
from storage import dead_letters, migrate
from storage.database import get_engine, get_sessionmaker
from tests.support.browser_support import (  # noqa: F401  (fixtures)
    Page,
    api_status,
    browser,
    median_load_ms,
    open_page,
    page,
    screenshots,
    sign_in,
)
from tests.support.dlq_support import add_dead_letter
from tests.support.helpers import insert_email, unique_address, wait_until
from tests.support.webhook_support import add_order, payment, post, reserve_for

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Fleet:
    base: str
    sessions: sessionmaker[Session]
    admin_token: str
    read_token: str
    #: The recipient of the email the provider refused: dead-lettered, to be found and replayed.
    dead_recipient: str


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _answers(base: str) -> bool:
    try:
        return requests.get(f"{base}/healthz", timeout=1).status_code == 200
    except requests.ConnectionError:
        return False


def _dead_letters(sessions: sessionmaker[Session]) -> int:
    with sessions() as session:
        return int(session.scalar(text("SELECT COUNT(*) FROM dead_letters")) or 0)


def _seed(fleet_env: dict[str, str], sessions: sessionmaker[Session], fake: FakeResend, base: str, cwd: Path) -> str:
    """A few sent emails, one the provider refuses (dead), paid and unknown orders, a reservation."""
    dead = unique_address("refused")
    fake.fail_recipient(dead, status=422, name="validation_error", message="Invalid `to` field.")
    with sessions.begin() as session:
        for n in range(4):
            insert_email(session, unique_address(f"customer{n}"), subject=f"Order MN-10{n} confirmed")
        insert_email(session, dead, subject="Your receipt")
    assert run_cli("tick", "emails", env=fleet_env, cwd=cwd).returncode == 0
    paid = add_order(sessions, email=unique_address("buyer"))
    reserve_for(sessions, add_order(sessions))
    assert post(base, payment(paid)).status_code == 200
    assert post(base, payment("MN-missing")).status_code == 200  # no such order: retried, then dead
    wait_until(lambda: _dead_letters(sessions) == 2, timeout=60, what="the refused email and the event dead-lettered")
    return dead


@pytest.fixture(scope="module")
def fleet(
    environment: dict[str, str], fake_resend: FakeResend, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Fleet]:
    """``serve`` (CRON_SECRET and OPS_READ_TOKEN set), a worker and an archiver on a database and vhost of their own."""
    created = services.create()
    migrate.upgrade(created.database_url)
    admin, reader = secrets.token_hex(32), secrets.token_hex(32)
    env = {
        **environment,
        "DATABASE_URL": created.database_url,
        "BROKER_URL": created.broker_url,
        "CRON_SECRET": admin,
        "OPS_READ_TOKEN": reader,
        "EMAIL_PER_REQUEST": "1",  # the refusal is scripted per recipient
    }
    cwd = tmp_path_factory.mktemp("dashboard")
    base = f"http://127.0.0.1:{_free_port()}"
    sessions = get_sessionmaker(created.database_url)
    try:
        with (
            running(
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                base.rsplit(":", 1)[1],
                env=env,
                cwd=cwd,
                log=cwd / "serve.log",
            ),
            running("worker", "-p", "1", "-t", "4", env=env, cwd=cwd, log=cwd / "worker.log"),
            running("archiver", env=env, cwd=cwd, log=cwd / "archiver.log"),
        ):
            wait_until(lambda: _answers(base), timeout=30, what="serve to answer /healthz")
            dead = _seed(env, sessions, fake_resend, base, cwd)
            yield Fleet(base=base, sessions=sessions, admin_token=admin, read_token=reader, dead_recipient=dead)
    finally:
        get_engine(created.database_url).dispose()
        services.destroy(created)


def _row(tab: Page, card: str, first_cell: str) -> list[str]:
    """The cells' text of the row of ``card``'s table whose first cell is ``first_cell`` (none: empty)."""
    return tab.evaluate(  # type: ignore[no-any-return]
        """([card, first]) => {
          const section = [...document.querySelectorAll('section.card')]
            .find((s) => s.querySelector('h2')?.textContent === card);
          const row = [...(section?.querySelectorAll('tbody tr') ?? [])]
            .find((r) => r.cells[0].textContent.trim() === first);
          return row ? [...row.cells].map((cell) => cell.textContent.trim()) : [];
        }""",
        [card, first_cell],
    )


def test_signed_out_the_dashboard_asks_for_a_token_and_the_api_refuses(
    fleet: Fleet,
    page: Page,  # noqa: F811
    screenshots: Path,  # noqa: F811
) -> None:
    page.goto(f"{fleet.base}/ops/dead-letters")
    page.wait_for_selector("#token")
    page.screenshot(path=str(screenshots / "sign-in.png"))
    assert page.locator("table").count() == 0
    assert api_status(page, "/api/ops/dead-letters") == 401
    assert requests.get(f"{fleet.base}/api/ops/stats", timeout=5).status_code == 401

    page.fill("#token", "not-the-token-" + "x" * 40)
    page.click("form.sign-in-card button[type=submit]")
    page.wait_for_selector("#sign-in-error:not([hidden])")
    assert page.inner_text("#sign-in-error") == "That token is not valid."
    assert page.locator(".tiles").count() == 0


def test_an_admin_finds_a_dead_email_by_recipient_and_replays_it(
    fleet: Fleet,
    page: Page,  # noqa: F811
    screenshots: Path,  # noqa: F811
    fake_resend: FakeResend,
) -> None:
    sign_in(page, fleet.base, fleet.admin_token)
    page.wait_for_selector(".chart .bar")
    page.screenshot(path=str(screenshots / "overview.png"))
    assert page.inner_text(".role") == "Admin"
    assert _row(page, "Emails by status", "pending") == ["pending", "0", "0", "0"]  # split by priority
    assert _row(page, "Emails by status", "sent")[:2] == ["sent", "5"]
    assert _row(page, "Dead letters by queue and actor", "emails.XQ")[:3] == ["emails.XQ", "send_email", "1"]

    page.click("nav.nav a:has-text('Dead letters')")
    page.wait_for_selector("table.data tbody tr")
    typed = fleet.dead_recipient.upper()[:-4]
    searched = f"q={quote(typed)}"
    with page.expect_response(lambda answer: "/api/ops/dead-letters?" in answer.url and searched in answer.url):
        page.fill("input[name=q]", typed)  # the server's search: a recipient's start, any case
    page.wait_for_selector(".summary:has-text('1 dead letter matches')")
    rows = page.locator("table.data tbody tr")
    assert rows.count() == 1 and "send_email(" in rows.first.inner_text()
    assert "q=" in page.url  # the search is in the address: a reload or a shared link shows the same
    page.screenshot(path=str(screenshots / "dead-letters.png"))

    with page.expect_request("**/api/ops/dead-letters/replay") as asked:
        page.click("button:has-text('Replay all matching')")  # the search's matches, counted by a dry run
    assert asked.value.post_data_json == {"filter": {"q": typed}, "dry_run": True}  # the filter, not ids
    dialog = page.locator("dialog[open]")
    dialog.wait_for()
    assert dialog.locator("h2").inner_text() == "Replay 1 dead letter?"
    assert f"matching “{typed}”: 1 found." in dialog.inner_text()
    dialog.locator("button:has-text('Cancel')").click()
    page.wait_for_selector("dialog", state="detached")
    assert len(fake_resend.deliveries_to(fleet.dead_recipient)) == 0  # a dry run and a "Cancel" send nothing

    fake_resend.clear_failures(fleet.dead_recipient)  # the cause is fixed: the provider takes it now
    rows.first.locator("input[type=checkbox]").check()
    page.click("button:has-text('Replay selected')")
    dialog.wait_for()
    assert dialog.locator("h2").inner_text() == "Replay 1 dead letter?"
    dialog.locator("button[type=submit]").click()
    page.wait_for_selector(".toast:has-text('Replayed 1 of 1 dead letter.')")
    wait_until(
        lambda: len(fake_resend.deliveries_to(fleet.dead_recipient)) == 1, timeout=30, what="the replayed email sent"
    )

    rows.first.click()
    page.wait_for_selector(".item-head .badge:has-text('sent')", timeout=30_000)  # the page refreshes itself
    assert "Resend 422 validation_error" in page.inner_text(".error-text")
    page.screenshot(path=str(screenshots / "dead-letter.png"))

    open_page(page, f"{fleet.base}/ops/emails?q={fleet.dead_recipient}", "table.data tbody tr")
    assert page.locator("table.data tbody tr").count() == 1
    assert page.inner_text("table.data tbody tr .badge") == "sent"
    page.screenshot(path=str(screenshots / "emails.png"))
    for name, ready in [("webhooks", "table.data tbody tr"), ("reservations", "table.data tbody tr")]:
        open_page(page, f"{fleet.base}/ops/{name}", ready)
        page.screenshot(path=str(screenshots / f"{name}.png"))
    assert len(fake_resend.deliveries_to(fleet.dead_recipient)) == 1

    overview = median_load_ms(page, f"{fleet.base}/ops", ".chart .bar")
    letters = median_load_ms(page, f"{fleet.base}/ops/dead-letters", "table.data tbody tr")
    print(
        f"\n[figures] dashboard page load, navigation to first data painted, median of 5: "
        f"overview {overview:.0f} ms, dead letters {letters:.0f} ms"
    )


def test_a_replay_that_may_deliver_twice_needs_the_risk_accepted_in_the_confirmation(
    fleet: Fleet,
    page: Page,  # noqa: F811
    screenshots: Path,  # noqa: F811
    fake_resend: FakeResend,
) -> None:
    """#18, part 5: an email whose last attempt may have reached SMTP (no idempotency keys)."""
    address = unique_address("maybe-smtp")
    with fleet.sessions.begin() as session:
        email_id = insert_email(session, address)
        session.execute(
            text(
                "UPDATE email_queue SET status = 'failed', attempts = 5, maybe_sent_by = 'smtp', "
                "maybe_sent_at = now() - interval '1 hour' WHERE id = :id"
            ),
            {"id": email_id},
        )
    dead = add_dead_letter(fleet.sessions, actor="send_email", args=[email_id])
    try:
        _replay_with_the_risk_accepted(fleet, page, screenshots, fake_resend, address, email_id)
    finally:  # the other tests count the seeded dead letters
        dead_letters.purge_ids(fleet.sessions, [dead])


def _replay_with_the_risk_accepted(
    fleet: Fleet, page: Page, screenshots: Path, fake_resend: FakeResend, address: str, email_id: int  # noqa: F811
) -> None:
    sign_in(page, fleet.base, fleet.admin_token)
    open_page(page, f"{fleet.base}/ops/dead-letters?q={quote(address)}", "table.data tbody tr")
    rows = page.locator("table.data tbody tr")
    rows.first.locator("input[type=checkbox]").check()
    page.click("button:has-text('Replay selected')")
    dialog = page.locator("dialog[open]")
    dialog.wait_for()
    risk = dialog.locator(".duplicate-risk")
    assert "Duplicate risk: 1 dead letter may deliver its email twice" in risk.inner_text()
    assert "smtp" in risk.inner_text() and "keeps no idempotency keys" in risk.inner_text()
    page.screenshot(path=str(screenshots / "replay-duplicate-risk.png"))
    dialog.locator("button[type=submit]").click()  # not accepted: nothing is sent
    page.wait_for_selector("dialog", state="detached")
    with fleet.sessions() as session:
        assert session.scalar(text("SELECT status FROM email_queue WHERE id = :id"), {"id": email_id}) == "failed"

    page.click("button:has-text('Replay selected')")
    dialog.wait_for()
    dialog.locator("input[name=accept_duplicate_risk]").check()
    dialog.locator("button[type=submit]").click()
    page.wait_for_selector(".toast:has-text('Replayed 1 of 1 dead letter.')")
    wait_until(lambda: len(fake_resend.deliveries_to(address)) == 1, timeout=30, what="the accepted replay sent")


def test_the_limiter_panel_shows_a_providers_outage_and_the_emails_page_which_provider_sent(
    fleet: Fleet,
    page: Page,  # noqa: F811
    screenshots: Path,  # noqa: F811
) -> None:
    """#18: the outage pause shows on the overview; each email names the provider that took it."""
    outage = (
        "UPDATE rate_limit_slots SET pause_reason = 'outage', paused_since = extract(epoch FROM now()) - 42, "
        "paused_until = extract(epoch FROM now()) + 600 WHERE name = 'resend'"
    )
    with fleet.sessions.begin() as session:
        assert session.execute(text(outage)).rowcount == 1
    try:
        sign_in(page, fleet.base, fleet.admin_token)
        callout = page.locator("#limiter .callout.outage")
        callout.wait_for()
        assert "resend is down" in callout.inner_text() and "Paused for an outage" in callout.inner_text()
        assert "resend: outage" in page.inner_text("#limiter")
        page.screenshot(path=str(screenshots / "limiter-outage.png"))
    finally:
        with fleet.sessions.begin() as session:
            session.execute(
                text("UPDATE rate_limit_slots SET pause_reason = NULL, paused_since = NULL, paused_until = NULL")
            )
    open_page(page, f"{fleet.base}/ops/emails?status=sent", "table.data tbody tr")
    provider_cells = page.evaluate(
        """() => {
          const column = [...document.querySelectorAll('table.data thead th')]
            .findIndex((th) => th.textContent.trim() === 'Provider');
          return [...document.querySelectorAll('table.data tbody tr')].map((row) => row.cells[column].textContent);
        }"""
    )
    assert provider_cells and set(provider_cells) == {"resend"}


def test_a_read_only_session_sees_no_action_button(
    fleet: Fleet,
    page: Page,  # noqa: F811
    screenshots: Path,  # noqa: F811
) -> None:
    sign_in(page, fleet.base, fleet.read_token)
    assert page.inner_text(".role") == "Read only"
    assert page.locator("#limiter button").count() == 0

    open_page(page, f"{fleet.base}/ops/dead-letters", "table.data tbody tr")
    assert page.locator("table.data tbody tr").count() == 2
    assert page.locator(".view button:not(.pager button), .view table input[type=checkbox], .bulk-bar").count() == 0
    page.screenshot(path=str(screenshots / "dead-letters-read-only.png"))

    page.locator("table.data tbody tr").first.click()
    page.wait_for_selector(".detail-grid")
    assert page.locator(".view button").count() == 0
    assert api_status(page, "/api/ops/dead-letters/replay", method="POST", csrf=True) == 403


def test_an_api_that_stops_answering_shows_a_banner_over_the_last_data(
    fleet: Fleet,
    page: Page,  # noqa: F811
) -> None:
    sign_in(page, fleet.base, fleet.read_token)
    page.route("**/api/ops/**", lambda route: route.abort())  # the network between browser and API breaks
    page.wait_for_selector(".banner:not([hidden])", timeout=15_000)
    assert "The ops API did not answer" in page.inner_text(".banner")
    assert page.locator(".tiles .tile").count() >= 5  # the last figures stay on the page

    page.unroute("**/api/ops/**")
    page.wait_for_selector(".banner", state="hidden", timeout=15_000)  # and it picks up again by itself
