"""Acceptance: delivery events and suppression through the commands we ship.

``serve`` takes a bounce signed by the ``svix`` package; the worker, ticker and
archiver (``bench.harness.shipped``: every other setting at its default) then hold
the next email to that address back without a request to the fake Resend;
``suppressions list|remove`` lift it and the email after that is sent.
"""

from __future__ import annotations

import json
import signal
import socket
import time
from pathlib import Path

import pytest
import requests
from sqlalchemy import text

from bench.harness import services
from bench.harness.fake_resend import FakeResend
from bench.harness.processes import run_cli, running
from bench.harness.shipped import default_environment, fleet, insert_emails, sessions_of, statuses
from tests.support.delivery_support import NEW_SECRET, OLD_SECRET, bounce, post_event
from tests.support.helpers import unique_address, wait_until

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _healthy(base: str) -> bool:
    try:
        return requests.get(base + "/healthz", timeout=2).status_code == 200
    except requests.RequestException:
        return False


def test_a_bounce_through_serve_suppresses_the_next_send_and_the_cli_lifts_it(
    run: services.RunServices, tmp_path: Path
) -> None:
    with FakeResend(api_key="re_events", max_requests_per_second=2) as provider:
        env = default_environment(run, provider, RESEND_WEBHOOK_SECRET=f"{NEW_SECRET} {OLD_SECRET}")
        sessions = sessions_of(run)
        address = unique_address("Shipped")
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        with fleet(env, tmp_path) as running:
            server = running.start("serve", "serve", "--host", "127.0.0.1", "--port", str(port))
            wait_until(lambda: _healthy(base), timeout=30, what="serve to answer /healthz")
            wait_until(lambda: "listening" in (tmp_path / "ticker.log").read_text(), timeout=30, what="the wake-up")

            (first,) = insert_emails(sessions, [address])
            wait_until(lambda: statuses(sessions, [first]) == {"sent": 1}, timeout=30, what="the first email sent")
            with sessions() as session:
                provider_id = session.execute(
                    text("SELECT provider_message_id FROM email_queue WHERE id = :i"), {"i": first}
                ).scalar_one()

            assert post_event(base, bounce(provider_id, to=address), secret="whsec_" + "A" * 32).status_code == 401
            bounced_at = time.monotonic()
            answer = post_event(base, bounce(provider_id, to=address), secret=OLD_SECRET)
            assert answer.status_code == 200, answer.text
            requests_before = provider.requests_to("/emails")

            inserted_at = time.monotonic()
            (second,) = insert_emails(sessions, [address.upper()])
            wait_until(lambda: statuses(sessions, [second]) == {"suppressed": 1}, timeout=30, what="held back")
            held_at = time.monotonic()
            assert provider.requests_to("/emails") == requests_before
            assert len(provider.deliveries_to(address)) == 1

            listed = run_cli("suppressions", "list", "--json", env=env, cwd=tmp_path)
            (item,) = json.loads(listed.stdout)
            assert (item["address"], item["reason"], item["email_id"]) == (
                address.lower(),
                "bounced (permanent)",
                first,
            )
            stats = json.loads(run_cli("stats", "--json", env=env, cwd=tmp_path).stdout)["delivery"]
            assert stats["rates"]["24h"] == {
                "sent": 1,
                "bounced": 1,
                "complained": 0,
                "bounce_rate": 1.0,
                "complaint_rate": 0.0,
            }
            assert stats["suppressed_emails"] == 1

            removed = run_cli("suppressions", "remove", address, env=env, cwd=tmp_path)
            assert removed.returncode == 0, removed.stderr
            (third,) = insert_emails(sessions, [address])
            wait_until(lambda: statuses(sessions, [third]) == {"sent": 1}, timeout=30, what="the email after the lift")
            assert len(provider.deliveries_to(address)) == 2
            assert running.terminate("serve") in (0, -signal.SIGTERM), running.logs()
            assert server.returncode is not None
    print(
        f"\nbounce accepted -> next email held back: {held_at - bounced_at:.3f} s "
        f"(of which insert -> suppressed: {held_at - inserted_at:.3f} s)"
    )


def test_serve_without_a_secret_refuses_every_event(run: services.RunServices, tmp_path: Path) -> None:
    with FakeResend(api_key="re_none") as provider:
        env = default_environment(run, provider)
        upgraded = run_cli("db", "upgrade", env=env, cwd=tmp_path)
        assert upgraded.returncode == 0, upgraded.stderr
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        log = tmp_path / "serve.log"
        with running("serve", "--host", "127.0.0.1", "--port", str(port), env=env, cwd=tmp_path, log=log):
            wait_until(lambda: _healthy(base), timeout=30, what="serve to answer /healthz")
            assert post_event(base, bounce("re_1")).status_code == 401
        assert "No RESEND_WEBHOOK_SECRET" in log.read_text()
