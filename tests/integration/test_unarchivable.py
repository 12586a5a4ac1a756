"""Dead messages the archive cannot take as messages, on the real RabbitMQ and PostgreSQL.

Before, a dead message PostgreSQL refused (a traceback that is an object, a retry
count past an integer column, a NaN in its arguments) was retried for ever inside
the archiver's only consumer callback: nothing else was archived, from any queue,
until RabbitMQ dropped the XQ's messages after seven days. And a raw body's id was
a hash of the body alone, so the same bytes dead on two queues, or twice, were
archived once.
"""

from __future__ import annotations

import secrets
import threading
import uuid

import dramatiq
import pika
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from bench.harness import services
from pipeline.archiver import RabbitmqArchiver, archive_body
from pipeline.bootstrap import build_broker
from pipeline.core.broker import RabbitmqBroker
from pipeline.core.settings import Settings
from storage.models import DeadLetter
from tests.support.dlq_support import dramatiq_body, garbage, publish, queue_depth, raw_letters
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
        body(probe.queue, f"long-id-{run}", message_id=secrets.token_hex(2000)),  # past a btree index row
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
        for case in ("traceback", "retries", "nan", "long-id")
    }
    for queue in (xq, other_xq):
        wait_until(lambda q=queue: queue_depth(probe.broker_url, q) == 0, what=f"{queue} emptied (archived, acked)")

    for message_id, letter in archived.items():
        assert letter is not None and letter.raw_body is None, message_id
        assert letter.error == "pipeline.core.errors.TransientError: Resend 500: down"
    assert archived[good_id].args == [5] and archived[other_id].queue == other_xq
    assert {case: len(letters) for case, letters in kept_raw.items()} == dict.fromkeys(kept_raw, 1)
    (traceback,), (retries,), (nan,), (long_id,) = kept_raw.values()
    assert traceback.error == "MalformedMessage: options.traceback must be a string, not {'frames': [1, 2]}"
    assert retries.error == "MalformedMessage: options.retries must be a count (0 to 2147483647), not 1099511627776"
    assert nan.error.startswith("Unarchivable: DataError: "), nan.error  # JSONB has no NaN
    assert long_id.error.startswith("Unarchivable: OperationalError: "), long_id.error  # not an outage: no retry
    assert all(letter.actor is None and letter.args is None and letter.queue == xq for letter in (traceback, nan))
    assert '"tag": "nan-' in (nan.raw_body or "") and "NaN" in (nan.raw_body or "")


def test_the_same_bytes_dead_on_two_queues_or_twice_are_all_kept(probe: Probe) -> None:  # noqa: F811
    run = uuid.uuid4().hex[:8]
    nacked, direct = garbage(f"nacked-{run}"), garbage(f"direct-{run}")
    publish(probe.broker_url, probe.queue, [nacked, nacked])  # the worker nacks both, within the same second
    publish(probe.broker_url, probe.other_queue, [nacked])
    publish(probe.broker_url, f"{probe.queue}.XQ", [direct, direct])  # no x-death at all: one delivery each
    publish(probe.broker_url, f"{probe.other_queue}.XQ", [direct])

    for marker in (f"nacked-{run}", f"direct-{run}"):
        wait_until(lambda m=marker: len(raw_letters(probe.sessions, m)) == 3, what=f"three dead letters of {marker}")
    for queue in (probe.queue, probe.other_queue):
        wait_until(lambda q=queue: queue_depth(probe.broker_url, f"{q}.XQ") == 0, what=f"{queue}.XQ emptied")

    for marker in (f"nacked-{run}", f"direct-{run}"):
        letters = raw_letters(probe.sessions, marker)
        assert sorted(letter.queue for letter in letters) == sorted(
            [f"{probe.queue}.XQ", f"{probe.queue}.XQ", f"{probe.other_queue}.XQ"]
        ), marker
        assert len({letter.message_id for letter in letters}) == 3
        assert all(letter.error == "DecodeError: Failed to decode message." for letter in letters)


def test_a_redelivery_after_an_archiver_crash_is_archived_once(
    own_env: dict[str, str],  # noqa: F811
    own_services: services.RunServices,  # noqa: F811
    own_sessions: sessionmaker[Session],  # noqa: F811
) -> None:
    broker = build_broker(Settings.from_env(own_env))
    assert isinstance(broker, RabbitmqBroker)
    queue = f"crash-{uuid.uuid4().hex[:8]}"
    dramatiq.actor(lambda: None, actor_name="crash_probe", queue_name=queue, broker=broker)
    broker.declare_queue(queue, ensure=True)
    xq, bytes_ = f"{queue}.XQ", garbage(f"crash-{queue}")
    publish(own_services.broker_url, xq, [bytes_])

    connection = pika.BlockingConnection(pika.URLParameters(own_services.broker_url))
    method, properties, delivered = connection.channel().basic_get(xq)  # an archiver takes it ...
    assert method is not None and not method.redelivered
    first_sight = not method.redelivered
    assert archive_body(own_sessions, broker, xq, delivered, properties=properties, first_sight=first_sight)
    connection.close()  # ... commits, and dies before its ack: RabbitMQ delivers it again
    publish(own_services.broker_url, xq, [bytes_])  # and then another message, byte for byte the same

    stop = threading.Event()
    archiver = threading.Thread(target=RabbitmqArchiver(broker, own_sessions, alerter=None).run, args=(stop,))
    archiver.start()
    try:
        wait_until(lambda: queue_depth(own_services.broker_url, xq) == 0, what="the XQ emptied by the next archiver")
    finally:
        stop.set()
        archiver.join(timeout=10)
        broker.close()

    with own_sessions() as session:
        count = session.scalar(select(func.count()).select_from(DeadLetter).where(DeadLetter.queue == xq))
    assert count == 2  # the crashed delivery once, and the second message
