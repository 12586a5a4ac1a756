"""Dead messages the archive cannot take as messages, on the real RabbitMQ and PostgreSQL.

Before, a dead message PostgreSQL refused (a traceback that is an object, a retry
count past an integer column, a NaN in its arguments) was retried for ever inside
the archiver's only consumer callback: nothing else was archived, from any queue,
until RabbitMQ dropped the XQ's messages after seven days.
"""

from __future__ import annotations

import uuid

from tests.support.dlq_support import dramatiq_body, publish, queue_depth, raw_letters
from tests.support.helpers import wait_until
from tests.support.probe_support import (  # noqa: F401  (fixtures)
    Probe,
    body,
    letter_of,
    own_env,
    own_services,
    own_sessions,
    probe,
)

TRACEBACK = "Traceback (most recent call last):\n  ...\npipeline.core.errors.TransientError: Resend 500: down\n"


def test_what_postgresql_refuses_is_archived_raw_and_no_queue_waits_for_it(probe: Probe) -> None:  # noqa: F811
    run, xq, other_xq = uuid.uuid4().hex[:8], f"{probe.queue}.XQ", f"{probe.other_queue}.XQ"
    bad = [
        body(probe.queue, f"traceback-{run}", options={"retries": 3, "traceback": {"frames": [1, 2]}}),
        body(probe.queue, f"retries-{run}", options={"retries": 2**40, "traceback": TRACEBACK}),
        body(probe.queue, f"nan-{run}", args=[float("nan")], options={"retries": 3, "traceback": TRACEBACK}),
    ]
    good_id, good = dramatiq_body("probe", [5], queue=probe.queue, options={"retries": 3, "traceback": TRACEBACK})
    other_id, other = dramatiq_body("other_probe", [6], queue=probe.other_queue, options={"traceback": TRACEBACK})
    publish(probe.broker_url, xq, bad)  # first: before, the archiver stuck on the first of them
    publish(probe.broker_url, other_xq, [other])
    publish(probe.broker_url, xq, [good])

    archived = {
        message_id: wait_until(lambda m=message_id: letter_of(probe.sessions, m), what=f"dead letter {message_id}")
        for message_id in (other_id, good_id)
    }
    kept_raw = {
        case: wait_until(lambda c=case: raw_letters(probe.sessions, f"{c}-{run}"), what=f"the raw {case}")
        for case in ("traceback", "retries", "nan")
    }
    for queue in (xq, other_xq):
        wait_until(lambda q=queue: queue_depth(probe.broker_url, q) == 0, what=f"{queue} emptied (archived, acked)")

    for message_id, letter in archived.items():
        assert letter is not None and letter.raw_body is None, message_id
        assert letter.error == "pipeline.core.errors.TransientError: Resend 500: down"
    assert archived[good_id].args == [5] and archived[other_id].queue == other_xq
    assert {case: len(letters) for case, letters in kept_raw.items()} == {"traceback": 1, "retries": 1, "nan": 1}
    (traceback,), (retries,), (nan,) = kept_raw.values()
    assert traceback.error == "MalformedMessage: options.traceback must be a string, not {'frames': [1, 2]}"
    assert retries.error == "MalformedMessage: options.retries must be a count (0 to 2147483647), not 1099511627776"
    assert nan.error.startswith("Unarchivable: DataError: "), nan.error  # JSONB has no NaN
    assert all(letter.actor is None and letter.args is None and letter.queue == xq for letter in (traceback, nan))
    assert '"tag": "nan-' in (nan.raw_body or "") and "NaN" in (nan.raw_body or "")
