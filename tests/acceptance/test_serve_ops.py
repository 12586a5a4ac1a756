"""``serve``'s cron endpoints and its start-up checks, and ``sending pause|resume``, through the real commands."""

from __future__ import annotations

import json
import signal
import socket
import subprocess

import pytest
import requests
from sqlalchemy.orm import Session, sessionmaker

from storage.models import EmailQueue
from tests.acceptance.test_webhooks import CLI, _healthy, free_port
from tests.support.helpers import insert_email, unique_address, wait_until
from tests.support.ops_support import ADMIN_TOKEN, bearer


def test_serve_refuses_to_start_with_a_short_cron_secret(environment: dict[str, str]) -> None:
    port = free_port()
    started = subprocess.run(
        [CLI, "serve", "--port", str(port)],
        env={**environment, "CRON_SECRET": "short"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert started.returncode != 0
    assert "CRON_SECRET" in started.stderr and "at least 32 characters" in started.stderr
    assert "'short'" not in started.stderr  # a secret's value is never printed
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0  # it never listened


@pytest.mark.slow
def test_the_cron_endpoint_of_a_served_process_claims_due_emails(
    environment: dict[str, str], sessions: sessionmaker[Session]
) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with sessions.begin() as session:
        email_id = insert_email(session, unique_address("served-cron"))
    server = subprocess.Popen(
        [CLI, "serve", "--port", str(port)],
        env={**environment, "CRON_SECRET": ADMIN_TOKEN, "LOG_LEVEL": "INFO"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_until(lambda: _healthy(base), timeout=20, what="serve to answer /healthz")
        refused = requests.get(f"{base}/api/cron/process-email-queue", timeout=10)
        assert refused.status_code == 401 and _status(sessions, email_id) == "pending"
        answer = requests.get(f"{base}/api/cron/process-email-queue", headers=bearer(ADMIN_TOKEN), timeout=30)
        body = answer.json()
        assert answer.status_code == 200 and body["success"] is True and body["processed"] >= 1
        assert set(body) == {"success", "processed", "succeeded", "failed"}
        assert _status(sessions, email_id) != "pending"
    finally:
        server.terminate()
        output = server.communicate(timeout=20)[0].decode()
    assert server.returncode in (0, -signal.SIGTERM), output
    assert "action=cron:process-email-queue" in output and ADMIN_TOKEN not in output


def test_sending_pause_and_resume_commands(environment: dict[str, str]) -> None:
    def run(*args: str) -> str:
        done = subprocess.run([CLI, "sending", *args], env=environment, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout

    try:
        assert "Paused bulk sending" in run("pause", "--bulk", "--reason", "check the campaign")
        state = json.loads(run("status", "--json"))
        assert state["bulk_paused"] is True and state["operator_pauses"]["bulk"]["reason"] == "check the campaign"
    finally:
        assert "Resumed bulk sending" in run("resume", "--bulk")
    assert json.loads(run("status", "--json"))["bulk_paused"] is False


def _status(sessions: sessionmaker[Session], email_id: int) -> str:
    with sessions() as session:
        row = session.get(EmailQueue, email_id)
        assert row is not None
        return row.status
