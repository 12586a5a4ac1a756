"""Acceptance: Ctrl-C stops the ticker and ``serve`` quietly, as it does the worker and the archiver.

click turns the KeyboardInterrupt into ``Aborted!`` and status 1; an operator
stopping a process at a terminal should see neither.
"""

from __future__ import annotations

import signal
import socket
import subprocess
from pathlib import Path

import pytest
import requests

from bench.harness.processes import CLI
from tests.support.helpers import wait_until

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _scheduled(log: Path) -> bool:
    return "Scheduling" in log.read_text()


def _serving(base: str) -> bool:
    try:
        return requests.get(f"{base}/healthz", timeout=1).status_code == 200
    except requests.ConnectionError:
        return False


@pytest.mark.parametrize("command", ["ticker", "serve"])
def test_ctrl_c_stops_the_process_quietly(environment: dict[str, str], tmp_path: Path, command: str) -> None:
    env = {**environment, "LOG_LEVEL": "INFO"}
    port = free_port()
    args = ["serve", "--port", str(port)] if command == "serve" else ["ticker"]
    log = tmp_path / f"{command}.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [CLI, *args],
            env=env,
            cwd=tmp_path,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            # SIGINT as at a terminal, even when this run ignores it (started in the background by a shell).
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        try:
            if command == "serve":
                wait_until(lambda: _serving(f"http://127.0.0.1:{port}"), timeout=30, what="serve to answer")
            else:
                wait_until(lambda: _scheduled(log), timeout=30, what="the ticker to schedule")
            process.send_signal(signal.SIGINT)
            status = process.wait(timeout=30)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)
    written = log.read_text()
    assert status == 0, written
    assert "Aborted!" not in written and "Traceback" not in written, written
