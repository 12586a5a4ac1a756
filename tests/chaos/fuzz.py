"""The webhook intake fuzzed over loopback: generated bodies, signatures, timestamps and providers.

Why hypothesis rather than a list of bad inputs: the intake parses bytes it does not
control, and the inputs that hurt are the ones nobody thought to list (a NUL or a lone
surrogate in a JSON string, a timestamp of 13 digits, a signature header of nothing but
commas). Every example is sent and answered; failures are collected rather than raised
at the first, so one run says how many of the 10,000 answers were 5xx and shows a few. They are posted
over a few connections at once, as a shop's callers would.

The contract, while PostgreSQL is up: no answer is 5xx, and nothing is stored unless
validly signed (the run keeps the event ids of the validly signed bodies it sent).
"""

from __future__ import annotations

import json
import queue
import string
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import requests
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as fixed_seed
from hypothesis import strategies as st

from pipeline.web.intake import signature_header
from tests.chaos.load import WEBHOOK_SECRET

#: Header values that ``requests`` will send (printable ASCII, no CR/LF).
_HEADER_TEXT = st.text(alphabet=string.printable.strip(), max_size=60)
#: Strings a JSON field may hold: anything, now and then a NUL or a lone surrogate.
_FIELD_TEXT = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1, max_size=3),
    st.sampled_from(["\u0000", "a\u0000b", "MN-\ud800", ""]),
)
_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), _FIELD_TEXT)
_JSON = st.recursive(_SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_FIELD_TEXT, inner,
                                                                                           max_size=4), max_leaves=12)


@st.composite
def _events(draw: st.DrawFn) -> dict[str, Any]:
    """Event-shaped objects: each field now valid, now of any JSON type, now missing."""
    valid = {
        "event_id": f"fuzz-{draw(st.uuids()).hex}",
        "type": draw(st.sampled_from(["payment.succeeded", "payment.failed"])),
        "order_id": f"MN-fuzz-{draw(st.integers(0, 10**6))}",
        "amount": draw(st.sampled_from(["250.00", 250, 1.5, "0"])),
        "currency": "ETB",
    }
    event: dict[str, Any] = {}
    for name, value in valid.items():
        choice = draw(st.sampled_from(["valid", "valid", "valid", "other", "missing"]))
        if choice == "valid":
            event[name] = value
        elif choice == "other":
            event[name] = draw(_JSON)
    event.update(draw(st.dictionaries(_FIELD_TEXT, _JSON, max_size=3)))
    return event


_BODIES = st.one_of(
    st.binary(max_size=2048),
    _JSON.map(lambda value: json.dumps(value).encode()),
    _events().map(lambda value: json.dumps(value).encode()),
    _events().map(lambda value: json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")),
)


@dataclass(frozen=True)
class Request:
    provider: str
    body: bytes
    headers: dict[str, str]
    #: Signed with the right secret and a current timestamp: the intake may store it.
    validly_signed: bool


@st.composite
def requests_(draw: st.DrawFn) -> Request:
    """One generated request: a provider, a body, and headers from valid to absurd."""
    provider = draw(st.sampled_from(["generic", "telebirr", "cbe", "awash", "GENERIC", "nope", "%00", "a" * 300]))
    body = draw(_BODIES)
    now = str(int(time.time()))
    timestamp = draw(st.one_of(st.just(now), st.just(now), _HEADER_TEXT, st.integers(-10**13, 10**13).map(str),
                               st.none()))
    scheme = draw(st.sampled_from(["valid", "valid", "forged", "garbage", "missing", "extra"]))
    headers = {"Content-Type": draw(st.sampled_from(["application/json", "text/plain", "", "application/json; x"]))}
    if timestamp is not None:
        headers["X-Webhook-Timestamp"] = timestamp
    signed_with = timestamp if timestamp is not None else now
    if scheme in ("valid", "extra"):
        headers["X-Webhook-Signature"] = signature_header([WEBHOOK_SECRET], signed_with, body)
        if scheme == "extra":
            headers["X-Webhook-Signature"] += "," + draw(_HEADER_TEXT)
    elif scheme == "forged":
        headers["X-Webhook-Signature"] = signature_header(["whsec_forged"], signed_with, body)
    elif scheme == "garbage":
        headers["X-Webhook-Signature"] = draw(_HEADER_TEXT)
    validly = scheme in ("valid", "extra") and timestamp == now and provider in ("generic", "telebirr", "cbe",
                                                                                 "awash", "GENERIC")
    return Request(provider=provider, body=body, headers=headers, validly_signed=validly)


@dataclass
class FuzzResult:
    sent: int = 0
    by_status: dict[int, int] = field(default_factory=dict)
    server_errors: list[str] = field(default_factory=list)
    #: ``event_id`` of every validly signed body that had one: only these may be stored.
    signed_event_ids: set[str] = field(default_factory=set)


def _event_id(body: bytes) -> str | None:
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    event_id = value.get("event_id") if isinstance(value, dict) else None
    return str(event_id).strip() if isinstance(event_id, (str, int)) and not isinstance(event_id, bool) else None


#: Connections the generated requests are posted over, each from a thread of its own.
CONNECTIONS = 4


def fuzz(base: str, examples: int, *, seed: int = 20_261_129) -> FuzzResult:
    """Send ``examples`` generated requests to the intake at ``base`` over ``CONNECTIONS`` connections.

    Hypothesis generates them in this thread (about 4 ms each) while the senders post
    them: one connection, one request after another, took 113 s of the chaos tier for
    10,000, most of it waiting for the answers.
    """
    result = FuzzResult()
    lock = threading.Lock()
    pending: queue.Queue[Request | None] = queue.Queue(maxsize=CONNECTIONS * 50)

    def post_all() -> None:
        with requests.Session() as session:
            while (request := pending.get()) is not None:
                status, error = _post(session, base, request)
                with lock:
                    _count(result, request, status, error)

    @fixed_seed(seed)  # a run can be repeated
    @settings(max_examples=examples, deadline=None, database=None, phases=[Phase.generate], derandomize=False,
              suppress_health_check=list(HealthCheck))
    @given(requests_())
    def generate(request: Request) -> None:
        pending.put(request)

    senders = [threading.Thread(target=post_all, name=f"fuzz-{n}") for n in range(CONNECTIONS)]
    for sender in senders:
        sender.start()
    try:
        generate()
    finally:
        for _ in senders:
            pending.put(None)
        for sender in senders:
            sender.join()
    return result


def _post(session: requests.Session, base: str, request: Request) -> tuple[int, str | None]:
    """The intake's status for ``request`` (0 when it did not answer), and what to report of a failure."""
    try:
        status = session.post(f"{base}/api/payments/webhook/{request.provider}", data=request.body,
                              headers=request.headers, timeout=10).status_code
    except requests.RequestException as exc:
        return 0, f"no answer ({type(exc).__name__}) to {request.body[:80]!r}"
    return status, f"{status} to {request.provider} {request.body[:120]!r}" if status >= 500 else None


def _count(result: FuzzResult, request: Request, status: int, error: str | None) -> None:
    if request.validly_signed:
        event_id = _event_id(request.body)
        if event_id is not None:
            result.signed_event_ids.add(event_id)
    result.sent += 1
    result.by_status[status] = result.by_status.get(status, 0) + 1
    if error is not None:
        result.server_errors.append(error)
