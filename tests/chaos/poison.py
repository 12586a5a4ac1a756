"""Malformed message bodies of every kind, for every queue and dead-letter queue.

Each kind is a way a body can reach a queue that no code of ours produced it in:
a foreign producer, a bug in an older release, a hand-edited replay. None can run;
the contract is that each ends in ``dead_letters`` (its raw body kept where it did
not decode) while the good work around it goes on and no process dies.

The item a poison body names, if any, does not exist, so a body run by mistake
changes nothing: the only way to see it was handled is its dead letter.
"""

from __future__ import annotations

import hashlib
import json
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dramatiq.common import xq_name

#: Each main queue and the actor that lives on it.
QUEUE_ACTORS = {
    "emails": "send_email",
    "emails_bulk": "send_bulk_email",
    "webhooks": "process_webhook_event",
    "ticks": "fan_out_emails",
}
#: Every queue the storm reaches: the main ones and their dead-letter queues.
QUEUES = [*QUEUE_ACTORS, *(xq_name(queue) for queue in QUEUE_ACTORS)]
#: Item ids that no row has.
NO_SUCH_ITEM = 900_000_000


@dataclass(frozen=True)
class Poison:
    queue: str
    kind: str
    body: bytes
    #: The dead letter's ``message_id``: the body's own, or ``raw-<sha>`` where it does not decode.
    acceptable_ids: tuple[str, ...]
    #: True when nothing could decode the body: its dead letter must keep ``raw_body``.
    undecodable: bool


def raw_id(body: bytes) -> str:
    """The message id the archiver gives a body it cannot decode."""
    return f"raw-{hashlib.sha256(body).hexdigest()[:32]}"


def _message(queue: str, actor: str, n: int, **changes: Any) -> dict[str, Any]:
    """A well-formed Dramatiq message of ``actor`` on ``queue``'s main queue; ``changes`` spoil it."""
    args = [] if actor == "fan_out_emails" else [NO_SUCH_ITEM + n]
    return {
        "queue_name": queue,
        "actor_name": actor,
        "args": args,
        "kwargs": {},
        "options": {},
        "message_id": str(uuid.uuid4()),
        "message_timestamp": 1_700_000_000_000 + n,
        **changes,
    }


def _undecodable(queue: str, actor: str, n: int) -> bytes:
    return b"\x00\xff chaos poison " + f"{queue} {n}".encode() + b" {"


def _not_a_message(queue: str, actor: str, n: int) -> bytes:
    return json.dumps({"chaos": n, "queue": queue, "hello": "not a message"}).encode()


def _options_not_an_object(queue: str, actor: str, n: int) -> bytes:
    return json.dumps(_message(queue, actor, n, options=5)).encode()


def _wrong_queue_name(queue: str, actor: str, n: int) -> bytes:
    return json.dumps(_message("elsewhere", actor, n)).encode()


def _unknown_actor(queue: str, actor: str, n: int) -> bytes:
    return json.dumps(_message(queue, "chaos_no_such_actor", n)).encode()


def _misfitting_arguments(queue: str, actor: str, n: int) -> bytes:
    return json.dumps(_message(queue, actor, n, args=["x", "y", "z"], kwargs={"bogus": n})).encode()


def _traceback_not_a_string(queue: str, actor: str, n: int) -> bytes:
    return json.dumps(_message(queue, actor, n, options={"traceback": 5, "retries": 3})).encode()


def _retries_huge(queue: str, actor: str, n: int) -> bytes:
    return json.dumps(_message(queue, actor, n, options={"retries": 10**30})).encode()


#: Every kind of malformed body, by name.
KINDS: dict[str, Callable[[str, str, int], bytes]] = {
    "undecodable bytes": _undecodable,
    "JSON, not a message": _not_a_message,
    '"options": 5': _options_not_an_object,
    "queue_name of another queue": _wrong_queue_name,
    "unknown actor": _unknown_actor,
    "misfitting arguments": _misfitting_arguments,
    "options.traceback not a string": _traceback_not_a_string,
    "options.retries huge": _retries_huge,
}


def _ids(body: bytes) -> tuple[tuple[str, ...], bool]:
    try:
        fields = json.loads(body)
    except (UnicodeDecodeError, ValueError):
        return (raw_id(body),), True
    message_id = fields.get("message_id") if isinstance(fields, dict) else None
    if isinstance(message_id, str):
        return (message_id, raw_id(body)), False
    return (raw_id(body),), True


def storm(per_kind: int) -> list[Poison]:
    """``per_kind`` bodies of every kind, dealt round the queues so every queue gets every kind."""
    bodies = []
    for kind, make in KINDS.items():
        for n in range(per_kind):
            queue = QUEUES[n % len(QUEUES)]
            body = make(queue, QUEUE_ACTORS[queue.removesuffix(".XQ")], n)
            ids, undecodable = _ids(body)
            bodies.append(Poison(queue=queue, kind=kind, body=body, acceptable_ids=ids, undecodable=undecodable))
    return bodies


def waves(bodies: list[Poison], count: int, *, seed: int = 11) -> list[list[Poison]]:
    """The bodies in ``count`` waves, each a seeded shuffle of kinds and queues, to interleave with the good traffic."""
    shuffled = list(bodies)
    random.Random(seed).shuffle(shuffled)
    return [shuffled[start::count] for start in range(count)]
