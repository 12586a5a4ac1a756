"""`minalesh-workers dev --demo`: the newcomer's first run, on SQLite with nothing else."""

from __future__ import annotations

import os
import re
import signal
import socket
import sqlite3
import subprocess
from pathlib import Path
from typing import Any, Optional

import pytest
import requests

from bench.harness.processes import run_cli, running
from tests.support.helpers import wait_until

pytestmark = pytest.mark.slow

#: What dev prints once its web app answers: the dashboard's address, and the run's token unless CRON_SECRET is set.
BANNER = re.compile(r"Dashboard: (http://127\.0\.0\.1:\d+)/ops  (?:sign-in token: (\S+)|sign in with your CRON_SECRET)")
#: What the demo settles on: 5 greetings and the 2 payment emails sent, 3 emails failed and dead-lettered.
SETTLED = ({"sent": 7, "failed": 3}, 3)
#: A CRON_SECRET of one's own (32+ characters), which dev must never print.
OWN_SECRET = "own-cron-secret-of-the-test-0123456789"


def counts(database: Path) -> tuple[dict[str, int], int]:
    if not database.exists():
        return {}, 0
    with sqlite3.connect(database) as connection:
        try:
            statuses = dict(connection.execute("SELECT status, COUNT(*) FROM email_queue GROUP BY status").fetchall())
            dead = connection.execute("SELECT COUNT(*) FROM dead_letters").fetchone()[0]
        except sqlite3.OperationalError:  # not migrated yet
            return {}, 0
    return statuses, dead


def dev_environment(tmp_path: Path, **extra: str) -> dict[str, str]:
    """This environment without any setting dev would take from it; fast retries, the outbox in ``tmp_path``."""
    kept = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("RESEND_", "EMAIL_", "DATABASE_", "BROKER_", "CRON_", "OPS_", "PAYMENT_"))
        and not name.endswith("_WEBHOOK_SECRET")
    }
    return kept | {"EMAIL_RETRY_DELAY_MINUTES": "0.005", "EMAIL_OUTBOX_DIR": str(tmp_path / "outbox"), **extra}


def banner(log: Path) -> Optional[tuple[str, Optional[str]]]:
    """The printed base URL and sign-in token (None with CRON_SECRET), once dev has printed them."""
    found = BANNER.search(log.read_text(errors="replace"))
    return (found.group(1), found.group(2)) if found else None


def read(base: str, path: str, token: str) -> Any:
    answer = requests.get(f"{base}{path}", headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert answer.status_code == 200, answer.text
    return answer.json()


def interrupt(process: subprocess.Popen[bytes], log: Path) -> str:
    """Ctrl-C: the process must stop by itself, cleanly; what it printed from then on."""
    printed = len(log.read_bytes())
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=30) in (0, 130)
    return log.read_bytes()[printed:].decode(errors="replace")


def run_demo(tmp_path: Path, database: Path, log: Path) -> str:
    """One ``dev --demo`` on ``database``, checked through its printed address and token, then Ctrl-C; its output."""
    command = ("dev", "--demo", "--port", "0", "--database", str(database))
    with running(*command, env=dev_environment(tmp_path), cwd=tmp_path, log=log) as process:
        base, token = wait_until(lambda: banner(log), timeout=60, what="the dashboard's address and token")
        assert token is not None
        assert requests.get(f"{base}/ops", timeout=10).status_code == 200
        assert requests.get(f"{base}/healthz", timeout=10).status_code == 200
        signed_in = requests.post(f"{base}/api/ops/session", json={"token": token}, timeout=10)
        assert signed_in.status_code == 200 and signed_in.json()["role"] == "admin"
        wait_until(lambda: counts(database) == SETTLED, timeout=60, what="7 sent, 3 failed, 3 dead letters")
        events = read(base, "/api/ops/webhooks", token)["items"]
        assert sorted((e["order_id"], e["type"], e["status"]) for e in events) == [
            ("MN-1001", "payment.succeeded", "processed"),
            ("MN-1002", "payment.failed", "processed"),
        ]
        held = {r["order_id"]: r["state"] for r in read(base, "/api/ops/reservations", token)["items"]}
        assert held == {"MN-1001": "committed", "MN-1002": "released", "MN-1003": "active"}
        stopping = interrupt(process, log)
    assert "Traceback" not in stopping and "KeyboardInterrupt" not in stopping, stopping
    output = log.read_text()
    assert "Aborted!" not in output
    assert f"{database} and emails in {tmp_path / 'outbox'}, reset for this run" in output
    return output


def test_demo_serves_the_dashboard_and_starts_afresh_each_run(tmp_path: Path) -> None:
    database = tmp_path / "dev.sqlite3"
    for run in (1, 2):
        output = run_demo(tmp_path, database, tmp_path / f"dev-{run}.log")
        # A fresh demo each time, not the seeds of the last one piled up.
        assert sum(counts(database)[0].values()) == 10
        assert len(list((tmp_path / "outbox").glob("*.eml"))) == 7
    assert "RESEND_API_KEY is not set" in output
    assert "outcome=retrying" in output and "Archived dead message" in output


def test_without_demo_the_data_is_kept_and_an_own_cron_secret_is_not_printed(tmp_path: Path) -> None:
    database = tmp_path / "dev.sqlite3"
    log = tmp_path / "dev.log"
    environment = dev_environment(tmp_path, CRON_SECRET=OWN_SECRET)
    with running("dev", "--port", "0", "--database", str(database), env=environment, cwd=tmp_path, log=log) as process:
        base, token = wait_until(lambda: banner(log), timeout=60, what="the dashboard's address")
        assert token is None
        assert read(base, "/api/ops/session", OWN_SECRET)["role"] == "admin"
        interrupt(process, log)
    output = log.read_text()
    assert OWN_SECRET not in output
    assert "kept from earlier runs (`minalesh-workers dev --reset` starts afresh)" in output


def test_a_taken_port_is_one_line(tmp_path: Path) -> None:
    database = tmp_path / "dev.sqlite3"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        command = ("dev", "--port", str(port), "--database", str(database))
        done = run_cli(*command, env=dev_environment(tmp_path), cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"Error: cannot listen on 127.0.0.1:{port} (Address already in use): "
        "choose another port with --port (0: any free one)"
    ]
    assert not database.exists()  # it failed before touching anything
