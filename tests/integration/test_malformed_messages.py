"""Malformed bodies on the real RabbitMQ: dead-lettered raw at once, the queue and the worker threads go on.

Each body below is a message in every respect but one field; before the consumer
checked them, the first stalled its queue (the consumer thread raising on
``"eta" in 5`` and handed the same body again after each restart) and the queue
mismatches killed worker threads. A worker with one worker thread runs behind
them, so a single dead thread would leave the good messages unrun.
"""

from __future__ import annotations

import uuid

from tests.support.dlq_support import publish, queue_depth, raw_letters
from tests.support.helpers import wait_until
from tests.support.probe_support import (  # noqa: F401  (fixtures)
    Probe,
    body,
    own_env,
    own_services,
    own_sessions,
    probe,
)


def send_good(probe: Probe, run: str) -> None:  # noqa: F811
    """Three good messages behind the bad ones, the third through ``probe.DQ`` as every retry goes."""
    actor = probe.broker.get_actor("probe")
    actor.send(1, tag=run)
    actor.send(2, tag=run)
    actor.send_with_options(args=(3,), kwargs={"tag": run}, delay=50)


def assert_dead_lettered_raw_and_the_worker_went_on(
    probe: Probe,  # noqa: F811
    run: str,
    markers: list[str],
) -> dict[str, str]:
    """Each marker's body archived raw exactly once, the good messages run once, every thread alive; the errors."""
    wait_until(lambda: len(probe.ran) >= 3, timeout=30, what="the good messages behind the malformed ones")
    letters = {m: wait_until(lambda m=m: raw_letters(probe.sessions, m), what=f"the dead letter {m}") for m in markers}
    xq = f"{probe.queue}.XQ"
    wait_until(lambda: queue_depth(probe.broker_url, xq) == 0, what="the XQ emptied (archived, acked)")

    # Each good message ran once, and no malformed one.
    assert sorted(probe.ran) == [("probe", 1, run), ("probe", 2, run), ("probe", 3, run)]
    for marker, (letter, *more) in letters.items():
        assert more == [], f"{marker} archived more than once"
        assert letter.queue == xq and letter.actor is None and letter.args is None, marker
        assert letter.message_id.startswith("raw-"), marker
    assert all(thread.is_alive() for thread in probe.worker.workers), "a worker thread died"
    assert all(thread.is_alive() for thread in probe.worker.consumers.values()), "a consumer thread died"
    assert queue_depth(probe.broker_url, probe.queue) == queue_depth(probe.broker_url, f"{probe.queue}.DQ") == 0
    return {marker: letter.error for marker, (letter, *_) in letters.items()}


def test_a_body_the_consumer_thread_chokes_on_no_longer_stalls_its_queue(probe: Probe) -> None:  # noqa: F811
    run, queue = uuid.uuid4().hex[:8], probe.queue
    publish(
        probe.broker_url,
        queue,
        [body(queue, f"options-{run}", options=5), body(queue, f"actor-list-{run}", actor_name=["probe"])],
    )
    send_good(probe, run)

    errors = assert_dead_lettered_raw_and_the_worker_went_on(probe, run, [f"options-{run}", f"actor-list-{run}"])

    assert errors == {
        f"options-{run}": "MalformedMessage: options must be an object, not int",
        f"actor-list-{run}": "MalformedMessage: actor_name must be a string, not list",
    }


def test_a_message_for_another_queue_no_longer_kills_the_worker_thread(probe: Probe) -> None:  # noqa: F811
    run, queue = uuid.uuid4().hex[:8], probe.queue
    publish(
        probe.broker_url,
        queue,
        [body(queue, f"other-{run}", queue_name="elsewhere"), body(queue, f"dq-name-{run}", queue_name=f"{queue}.DQ")],
    )
    publish(probe.broker_url, f"{queue}.DQ", [body(queue, f"main-name-on-dq-{run}")])  # the main queue's name
    send_good(probe, run)

    errors = assert_dead_lettered_raw_and_the_worker_went_on(
        probe, run, [f"other-{run}", f"dq-name-{run}", f"main-name-on-dq-{run}"]
    )

    arrived = "MalformedMessage: queue_name is {!r}, but the message arrived on {!r}"
    assert errors == {
        f"other-{run}": arrived.format("elsewhere", queue),
        f"dq-name-{run}": arrived.format(f"{queue}.DQ", queue),
        f"main-name-on-dq-{run}": arrived.format(queue, f"{queue}.DQ"),
    }


def test_every_other_malformed_body_is_dead_lettered_raw_unrun(probe: Probe) -> None:  # noqa: F811
    run, queue = uuid.uuid4().hex[:8], probe.queue
    publish(
        probe.broker_url,
        queue,
        [
            body(queue, "", args=f"positional-{run}"),  # Dramatiq would call probe("p", "o", "s", ...)
            body(queue, "", kwargs=[f"kwargs-{run}"]),
            body(queue, f"timestamp-{run}", message_timestamp="yesterday"),
            body(queue, f"no-id-{run}", message_id=...),  # Dramatiq would make up a new id at every delivery
            body(queue, f"retries-{run}", options={"retries": "many"}),
            body(queue, f"throws-{run}", options={"throws": "ValueError"}),
        ],
    )
    send_good(probe, run)

    errors = assert_dead_lettered_raw_and_the_worker_went_on(
        probe, run, [f"{case}-{run}" for case in ("positional", "kwargs", "timestamp", "no-id", "retries", "throws")]
    )

    assert errors == {
        f"positional-{run}": "MalformedMessage: args must be an array, not str",
        f"kwargs-{run}": "MalformedMessage: kwargs must be an object, not list",
        f"timestamp-{run}": "MalformedMessage: message_timestamp must be an integer, not str",
        f"no-id-{run}": "MalformedMessage: message_id is missing",
        f"retries-{run}": "MalformedMessage: options.retries must be a count (0 to 2147483647), not 'many'",
        f"throws-{run}": "MalformedMessage: options.throws cannot travel in a message",
    }
