"""Dramatiq's Prometheus middleware in a real ``worker`` command, on WORKER_METRICS_PORT.

The worker processes count each message into files of a directory of this worker
command's own, emptied at start and removed at exit; a forked server sums them.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.orm import Session, sessionmaker

from bench.harness.shipped import fleet, statuses
from pipeline.core.worker_metrics import directory_for
from tests.support.dlq_support import own_env, own_services, own_sessions  # noqa: F401  (fixtures)
from tests.support.helpers import insert_email, unique_address, wait_until

pytestmark = pytest.mark.slow


def test_a_running_worker_answers_dramatiq_messages_total(
    own_env: dict[str, str], own_sessions: sessionmaker[Session], tmp_path: Path  # noqa: F811
) -> None:
    port = _free_port()
    stale = directory_for(port)
    stale.mkdir(parents=True, exist_ok=True)
    (stale / "counter_999999.db").write_bytes(b"left by an earlier run")
    with fleet({**own_env, "WORKER_METRICS_PORT": str(port)}, tmp_path) as running:
        with own_sessions.begin() as session:
            email_id = insert_email(session, unique_address("prom"))
        wait_until(lambda: statuses(own_sessions, [email_id]) == {"sent": 1}, timeout=30, what="the email sent")
        wait_until(lambda: _sent_messages(port) >= 1, timeout=30, what="dramatiq_messages_total of send_email")
        assert not (directory_for(port) / "counter_999999.db").exists(), "the stale file was not cleaned"
        assert all(running.alive().values()), running.logs()
    assert not directory_for(port).exists(), "the metrics directory outlived its worker command"


def _sent_messages(port: int) -> float:
    """``dramatiq_messages_total{actor_name="send_email"}`` as the worker command serves it; 0 if not yet."""
    try:
        answer = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
    except requests.ConnectionError:
        return 0.0
    return sum(
        sample.value
        for family in text_string_to_metric_families(answer.text)
        for sample in family.samples
        if sample.name == "dramatiq_messages_total" and sample.labels.get("actor_name") == "send_email"
    )


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
