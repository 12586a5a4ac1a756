"""Dead letters, archiving, replay and delays pass their own tests again on quorum queues.

The tests are the integration and acceptance ones, unchanged, run in a pytest of their own with
``TEST_RABBITMQ_QUEUE_TYPE=quorum``: the run's vhost is then created with ``--default-queue-type
quorum`` on the machine's RabbitMQ (a one-node cluster is enough for a quorum queue), and
``tests/integration/test_queue_type.py``, run with them, fails unless every queue was a quorum queue.
What a real cluster adds (a node lost, the delivery limit) is in this folder's other tests.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
#: Dead-lettering into the XQs (and their TTL), poison bodies, the archiver, replay, long delays in hops.
ON_QUORUM = (
    "tests/integration/test_queue_type.py",
    "tests/integration/test_dlq.py",
    "tests/integration/test_unarchivable.py",
    "tests/integration/test_malformed_messages.py",
    "tests/integration/test_broker.py",
    "tests/acceptance/test_dlq_processes.py",
    "tests/acceptance/test_dlq.py::test_an_archived_webhook_event_is_replayed_once_its_order_exists",
)
#: Forces a publisher-confirm nack with a ``max-length: 0`` ``reject-publish`` policy, which a quorum queue
#: checks after the enqueue: with a consumer attached it never refuses. Confirms are the same code either way.
CLASSIC_ONLY = "tests/integration/test_broker.py::test_enqueue_refused_by_rabbitmq_raises_and_hands_the_claim_back"


def test_the_dead_letter_archive_replay_and_delay_tests_pass_on_quorum_queues() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *ON_QUORUM, "--deselect", CLASSIC_ONLY],
        cwd=ROOT, env={**os.environ, "TEST_RABBITMQ_QUEUE_TYPE": "quorum"},
        capture_output=True, text=True, timeout=900,
    )
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    print(f"\n[figures] on quorum queues: {summary}")
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "passed" in summary and "skipped" not in summary, summary
