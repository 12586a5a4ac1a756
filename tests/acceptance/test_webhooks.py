"""Payment webhooks through the real commands: serve, tick webhooks, stats."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from sqlalchemy.orm import Session, sessionmaker

from storage import leases, webhooks
from tests.support.helpers import unique_address, wait_until
from tests.support.webhook_support import (
    add_order,
    emails_for,
    order,
    payment,
    post,
    store_lost,
    wait_for_event,
)

CLI = str(Path(sys.executable).with_name("minalesh-workers"))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.slow
def test_serve_tick_and_stats_commands(environment: dict[str, str], sessions: sessionmaker[Session]) -> None:
    port = free_port()
    address = unique_address("served")
    order_id = add_order(sessions, email=address)
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [CLI, "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_until(lambda: _healthy(base), timeout=20, what="serve to answer /healthz")
        body = payment(order_id)
        assert post(base, body, secret="forged").status_code == 401
        assert post(base, body).status_code == 200
        wait_for_event(sessions, "generic", body["event_id"], lambda r: r.status == "processed", what="processed")
        assert order(sessions, order_id)["payment_status"] == "paid"
        assert [e.template for e in emails_for(sessions, address)] == ["order_confirmation"]
    finally:
        server.terminate()
        output = server.communicate(timeout=20)[0].decode()
    assert server.returncode in (0, -signal.SIGTERM), output  # uvicorn re-raises the signal once shut down

    (given_up,) = store_lost(sessions, 1)  # an archived event of this test's own, for the figures below
    with sessions.begin() as session:
        leases.give_up(webhooks.TABLE, session, given_up, error="E: given up")
    ticked = subprocess.run([CLI, "tick", "webhooks"], env=environment, capture_output=True, text=True, timeout=60)
    assert ticked.returncode == 0 and ticked.stdout.startswith("Enqueued "), ticked.stderr
    shown = subprocess.run([CLI, "stats", "--json"], env=environment, capture_output=True, text=True, timeout=60)
    figures = json.loads(shown.stdout)["webhooks"]
    assert set(figures) == {"by_status", "awaiting_retry", "archived", "average_retries", "due_now"}
    assert figures["by_status"]["processed"] >= 1 and figures["archived"] >= 1


def _healthy(base: str) -> bool:
    try:
        return requests.get(f"{base}/healthz", timeout=1).status_code == 200
    except requests.ConnectionError:
        return False
