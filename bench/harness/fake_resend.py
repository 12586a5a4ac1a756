"""A fake Resend HTTP API served on loopback for integration tests.

Why: the email actors talk to Resend through the real ``resend`` SDK, and the
failure modes that matter (rate limits, quotas, idempotent retries, a provider
that rejects one recipient, a slow provider, a client that times out while the
provider still delivers) can only be exercised honestly over real HTTP.  This
server speaks the parts of the Resend API the workers use (``POST /emails``,
``POST /emails/batch``, ``GET /emails/{id}``) over HTTP/1.1 with keep-alive,
answers with the same status codes, error names and ``ratelimit-*`` headers,
records every request so tests can assert on what was really sent, and can be
scripted while it runs.  It uses the standard library only so it adds no
dependency.

Every request passes, in order: ``fail_next``/``delay_next`` slots (taken on
arrival; without one, a ``storm``'s draw), routing, authentication, the team's limiter (``rate_limit_next``,
then the sliding one-second window, shared with ``consume_from_other_app``),
the sending quota (sends only), validation, the Idempotency-Key, and
``fail_recipient``.  The request rules live in ``fake_resend_rules``, the
limits in ``fake_resend_limits``.

Typical use::

    with FakeResend() as fake:
        resend.api_url = fake.url
        resend.api_key = fake.api_key
        ...
        fake.wait_for(lambda: fake.delivery_count() == 1)
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Callable, TypeVar

from bench.harness.fake_resend_limits import (
    DEFAULT_RATE_LIMIT,
    Quota,
    RateWindow,
    rate_headers,
    rate_limit_error,
)
from bench.harness.fake_resend_rules import (
    MISSING_API_KEY_MESSAGE,
    Answer,
    ApiError,
    BatchPlan,
    batch_mode,
    idempotency_key,
    method_not_allowed,
    normalize_address,
    plan_batch,
    recipients_of,
    validated_send,
)
from bench.harness.fake_resend_storm import Storm

__all__ = ["ApiError", "Delivery", "FakeResend", "RecordedRequest", "normalize_address", "recipients_of"]

POLL_INTERVAL_SECONDS = 0.02

_EMAIL_PATH = re.compile(r"/emails/(?P<id>[^/]+)")


@dataclass
class RecordedRequest:
    """One HTTP request as the fake saw it, kept so tests can assert on real traffic."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any
    """Parsed JSON when the body was JSON, otherwise the raw body decoded as text."""
    is_json: bool
    arrived_at: float
    """``time.monotonic()`` when the request arrived."""
    status: int | None = None
    """The status answered; None while the request is still being handled."""

    @property
    def to(self) -> list[str]:
        """The recipients named in the body, if any."""
        return recipients_of(self.body)


@dataclass(frozen=True)
class Delivery:
    """An accepted, non-replayed send: what a real provider would have delivered."""

    id: str
    to: list[str]
    from_: str
    subject: str
    html: str | None
    text: str | None
    idempotency_key: str | None
    """The request's key; a batch's one key covers all its emails."""
    created_at: str
    batch_index: int | None = None
    """Index of this email in its ``POST /emails/batch`` request; None for a single send."""

    @property
    def in_batch(self) -> bool:
        """True when the email came in a batch request."""
        return self.batch_index is not None

    def as_resource(self) -> dict[str, Any]:
        """The JSON shape of ``GET /emails/{id}``."""
        return {
            "object": "email",
            "id": self.id,
            "to": list(self.to),
            "from": self.from_,
            "subject": self.subject,
            "html": self.html,
            "text": self.text,
            "created_at": self.created_at,
        }


@dataclass
class _Failure:
    """A scripted error for one recipient; ``remaining`` None means forever.

    ``{attempt}`` in the message becomes the count of errors answered so far, so a
    test can tell the final error from the earlier ones.
    """

    status: int
    name: str
    message: str
    remaining: int | None
    answered: int = 0


@dataclass(frozen=True)
class _Delay:
    """A ``delay_next`` slot: hold the answer ``seconds``; ``delivered`` says whether the send goes through."""

    seconds: float
    delivered: bool
    #: Only a request naming this recipient takes the slot (None: any request).
    to: str | None = None


@dataclass(frozen=True)
class _ForcedFailure:
    """A ``fail_next`` slot: answer ``error`` before deciding anything."""

    error: ApiError
    #: Only a request naming this recipient takes the slot (None: any request).
    to: str | None = None


_Script = TypeVar("_Script", _Delay, _ForcedFailure)


def _take_first(scripts: deque[_Script], record: RecordedRequest) -> _Script | None:
    """Spend the first slot of ``scripts`` that applies to ``record``, if any.

    A slot aimed at a recipient lets a test script its own email's request on a
    fake shared by the whole session: a straggler of an earlier test (a retry, a
    periodic fan-out) cannot take it first.
    """
    for script in scripts:
        if script.to is None or normalize_address(script.to) in {normalize_address(a) for a in record.to}:
            scripts.remove(script)
            return script
    return None


@dataclass
class _IdempotencyEntry:
    """A claimed key; ``response`` stays None while the first request is in flight."""

    fingerprint: str
    response: dict[str, Any] | None = None


@dataclass
class _Outcome:
    """What was decided before the (optional) delay; completed after it.

    Why: the decision claims the idempotency key, and the key must stay
    claimed while the answer is held (``delay_seconds``, ``delay_next``) so
    concurrent retries can be observed.  The endpoint functions fill it in as they go, so whatever they raise, the
    rate headers and the claimed key are still known when answering.
    """

    ready: Answer | None = None
    error: ApiError | None = None
    send: dict[str, Any] | None = None
    batch: BatchPlan | None = None
    key: str | None = None
    """Set only once this request has claimed the key, so only it may release it."""
    rate: dict[str, str] | None = None
    """The ``ratelimit-*`` headers as of this request's admission (or arrival, if never admitted)."""
    delay: float = 0.0
    """Seconds to hold the answer after deciding."""
    delivered: bool = True
    """False when ``delay_next(delivered=False)`` dropped this request: nothing is delivered."""


class FakeResend:
    """Loopback fake of the Resend API with scripting and recording.

    All state is guarded by one lock so tests may script and inspect it while
    worker threads or processes are sending.
    """

    def __init__(
        self,
        api_key: str = "re_test_key",
        *,
        max_requests_per_second: float | None = None,
        advertised_limit: float | None = None,
        delay_seconds: float = 0.0,
    ) -> None:
        """``max_requests_per_second`` None enforces nothing; ``advertised_limit``
        is the ``ratelimit-limit`` answered, by default the enforced limit or
        Resend's default of 2, so clients that pace on headers see one either way.
        """
        self.api_key = api_key
        self.max_requests_per_second = max_requests_per_second
        self._advertised_limit = advertised_limit
        self.delay_seconds = delay_seconds
        self._lock = threading.Lock()
        self._requests: list[RecordedRequest] = []
        self._deliveries: list[Delivery] = []
        self._failures: dict[str, _Failure] = {}
        self._forced_rate_limits: deque[int] = deque()
        self._delays: deque[_Delay] = deque()
        self._forced_failures: deque[_ForcedFailure] = deque()
        self._storm: Storm | None = None
        #: While set, every request is answered this at once (``go_down``): the provider is down as a whole.
        self._outage: ApiError | None = None
        self._window = RateWindow()
        self._quota: Quota | None = None
        self._idempotency: dict[str, _IdempotencyEntry] = {}
        self._connections: set[socket.socket] = set()
        self._connections_opened = 0
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------

    def start(self) -> FakeResend:
        """Bind 127.0.0.1 on a free port and serve in a daemon thread."""
        if self._server is not None:
            raise RuntimeError("FakeResend is already running")
        self._server = _Server(("127.0.0.1", 0), _Handler, self)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="fake-resend",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, close the listening socket and every kept-alive connection; safe to call twice.

        Why close kept-alive connections too: otherwise a pooled client would
        keep talking to a "stopped" fake through a connection it already had.
        """
        server, thread = self._server, self._thread
        self._server, self._thread = None, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        with self._lock:
            open_connections = list(self._connections)
        for connection in open_connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already closed by its handler
        if thread is not None:
            thread.join(timeout=5)

    def __enter__(self) -> FakeResend:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """Base URL to put in ``resend.api_url``, e.g. ``http://127.0.0.1:54321``."""
        if self._server is None:
            raise RuntimeError("FakeResend is not running")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    # -- scripting -------------------------------------------------------

    def fail_recipient(
        self,
        address: str,
        status: int = 422,
        name: str = "validation_error",
        message: str = "The recipient was rejected by the fake provider.",
        times: int | None = None,
    ) -> None:
        """Answer requests whose ``to`` contains ``address`` with this error.

        ``times=None`` fails forever; an int fails only the next N such
        requests, after which sends to the address succeed again.
        """
        if times is not None and times <= 0:
            self.clear_failures(address)
            return
        with self._lock:
            self._failures[normalize_address(address)] = _Failure(status, name, message, times)

    def clear_failures(self, address: str | None = None) -> None:
        """Forget the scripted failure of one address, or of all when None."""
        with self._lock:
            if address is None:
                self._failures.clear()
            else:
                self._failures.pop(normalize_address(address), None)

    def rate_limit_next(self, n: int, retry_after: int = 1) -> None:
        """Answer the next ``n`` sends (any recipient) with 429 ``rate_limit_exceeded``."""
        with self._lock:
            self._forced_rate_limits.extend([retry_after] * n)

    def delay_next(self, n: int, seconds: float, *, delivered: bool = True, to: str | None = None) -> None:
        """Hold the answers to the next ``n`` requests (any endpoint; or naming ``to``) for ``seconds``.

        The request is decided on arrival (its key is claimed, so a retry meanwhile
        gets 409 ``concurrent_idempotent_requests``) and completed after the delay
        whether or not the client is still waiting, as a real server would.
        ``delivered=True`` delivers a send even though its client timed out: the
        hard case, where only the Idempotency-Key keeps a retry from sending twice.
        ``delivered=False`` drops it: nothing delivered, the key released, and 500
        ``application_error`` answered after the delay.
        """
        with self._lock:
            self._delays.extend([_Delay(seconds, delivered, to)] * n)

    def fail_next(
        self,
        n: int,
        status: int = 500,
        name: str = "application_error",
        message: str = "An unexpected error occurred.",
        *,
        to: str | None = None,
    ) -> None:
        """Answer the next ``n`` requests (any endpoint; or naming ``to``) with this error, deciding nothing.

        Why before authentication and the limiter: a crashing or overloaded
        server fails a request before looking at it, so it spends no slot, no
        quota and no key, and nothing is delivered.
        """
        with self._lock:
            self._forced_failures.extend([_ForcedFailure(ApiError(status, name, message), to)] * n)

    def storm(self, *, server_errors: float = 0.0, timeouts: float = 0.0, hold_seconds: float = 0.0,
              seed: int = 0) -> None:
        """From now on, fail a share of requests (any endpoint) rather than the next n.

        ``server_errors``: answered 500 ``application_error`` at once, deciding
        nothing (as ``fail_next``); ``timeouts``: held ``hold_seconds`` and then
        delivered (as ``delay_next(delivered=True)``). ``fail_next``/``delay_next``
        slots still come first. See ``fake_resend_storm``.
        """
        with self._lock:
            self._storm = Storm(server_errors=server_errors, timeouts=timeouts, hold_seconds=hold_seconds, seed=seed)

    def go_down(self, status: int = 500, name: str = "application_error") -> None:
        """From now on every request, of any endpoint, is answered ``status`` at once, deciding nothing.

        The provider-wide outage switch: nothing is delivered, no slot, quota or key is
        spent, until ``come_back``. Requests are still recorded (``requests_between``).
        """
        with self._lock:
            self._outage = ApiError(status, name, "The service is unavailable (fake outage).")

    def come_back(self) -> None:
        """End ``go_down``: requests arriving from now on are handled normally."""
        with self._lock:
            self._outage = None

    def requests_between(self, start: float, end: float) -> int:
        """Requests that arrived between two ``time.monotonic()`` readings, whatever they were answered."""
        with self._lock:
            return sum(1 for request in self._requests if start <= request.arrived_at < end)

    def calm(self) -> None:
        """End a ``storm``: requests arriving from now on are handled normally."""
        with self._lock:
            self._storm = None

    def set_rate_limit(self, n: float) -> None:
        """Enforce and advertise ``n`` requests per second from now on, as when Resend raises a team's limit."""
        if n <= 0:
            raise ValueError("a rate limit must be positive")
        with self._lock:
            self.max_requests_per_second = n
            self._advertised_limit = n

    @property
    def advertised_limit(self) -> float:
        """The ``ratelimit-limit`` answered: explicit, else the enforced limit, else Resend's default."""
        return self._advertised_limit or self.max_requests_per_second or DEFAULT_RATE_LIMIT

    def consume_from_other_app(self, n: int) -> None:
        """Take ``n`` slots of the current window, as another app of the same team would.

        Why: Resend's limit is per team, so our sender can meet 429s and a low
        ``ratelimit-remaining`` it did not cause; the slots free one second later.
        """
        with self._lock:
            self._window.occupy(time.monotonic(), n)

    def exhaust_quota(self, kind: str = "daily_quota_exceeded", reset_after: float = 86_400.0) -> None:
        """Answer every send (single and batch) 429 ``kind`` for ``reset_after`` seconds.

        ``kind`` is ``daily_quota_exceeded`` or ``monthly_quota_exceeded``;
        ``retry-after`` and ``ratelimit-reset`` count down to the reset, so a
        sender can tell "stop for hours" from "slow down for a second".
        """
        if reset_after <= 0:
            raise ValueError("reset_after must be positive")
        quota = Quota(kind, time.monotonic() + reset_after)
        with self._lock:
            self._quota = quota

    def restore_quota(self) -> None:
        """End an exhausted quota now, as a plan upgrade would."""
        with self._lock:
            self._quota = None

    # -- recordings ------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        """Snapshot of every request, in the order their handling began."""
        with self._lock:
            return list(self._requests)

    @property
    def deliveries(self) -> list[Delivery]:
        """Snapshot of accepted, non-replayed sends."""
        with self._lock:
            return list(self._deliveries)

    def deliveries_to(self, address: str) -> list[Delivery]:
        """Accepted sends whose ``to`` contains ``address``."""
        wanted = normalize_address(address)
        return [d for d in self.deliveries if wanted in map(normalize_address, d.to)]

    def delivery_count(self) -> int:
        """Number of accepted, non-replayed sends."""
        with self._lock:
            return len(self._deliveries)

    def attempts_for(self, address: str) -> int:
        """POSTs whose ``to`` contains ``address``, whatever they were answered."""
        wanted = normalize_address(address)
        return sum(
            1
            for r in self.requests
            if r.method == "POST" and wanted in map(normalize_address, r.to)
        )

    def count_429(self) -> int:
        """Requests answered 429, whatever the cause (rate limit, quota, scripted)."""
        with self._lock:
            return sum(1 for r in self._requests if r.status == 429)

    def requests_to(self, path: str) -> int:
        """Requests to ``path`` (query string ignored), any method, whatever they were answered."""
        with self._lock:
            return sum(1 for r in self._requests if _path_of(r) == path)

    def connections_opened(self) -> int:
        """TCP connections the server accepted; fewer than requests means a client reused them."""
        with self._lock:
            return self._connections_opened

    def wait_for(
        self,
        predicate: Callable[[], object],
        timeout: float = 10.0,
        description: str | None = None,
    ) -> None:
        """Poll ``predicate`` until it is true; raise AssertionError at the deadline.

        Why: tests synchronise on observable effects instead of fixed sleeps,
        which are both slow and flaky.
        """
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() >= deadline:
                raise AssertionError(self._timeout_message(predicate, timeout, description))
            time.sleep(POLL_INTERVAL_SECONDS)

    def _timeout_message(
        self, predicate: Callable[[], object], timeout: float, description: str | None
    ) -> str:
        """Say what was awaited and what the fake saw, to make a timeout diagnosable."""
        what = description or getattr(predicate, "__qualname__", repr(predicate))
        statuses = [r.status for r in self.requests]
        return (
            f"FakeResend.wait_for timed out after {timeout:.2f}s waiting for {what}; "
            f"{self.delivery_count()} deliveries, {len(statuses)} requests "
            f"answered {statuses}"
        )

    # -- request handling (called from server threads) -------------------

    def _connection_opened(self, connection: socket.socket) -> None:
        """Count and remember an accepted connection, so ``stop`` can close it."""
        with self._lock:
            self._connections_opened += 1
            self._connections.add(connection)

    def _connection_closed(self, connection: socket.socket) -> None:
        """Forget a connection its handler is done with."""
        with self._lock:
            self._connections.discard(connection)

    def _respond_to(self, record: RecordedRequest) -> Answer:
        """Decide, hold the answer (``delay_seconds`` or ``delay_next``), then complete.

        The key stays claimed while the answer is held, so retries meanwhile see 409.
        """
        outcome = _Outcome()
        try:
            self._take_scripts(record, outcome)
            self._decide(record, outcome)
        except ApiError as error:
            outcome.error = error
        finally:
            with self._lock:
                self._requests.append(record)
                if outcome.rate is None:
                    outcome.rate = self._rate_headers(time.monotonic())
        try:
            if outcome.delay > 0:
                time.sleep(outcome.delay)
        finally:
            answer = self._complete(outcome)
            answer.headers = _with_rate_headers(answer, outcome.rate or {})
            with self._lock:
                record.status = answer.status
        return answer

    def _take_scripts(self, record: RecordedRequest, outcome: _Outcome) -> None:
        """Spend this request's ``delay_next`` and ``fail_next`` slots, if any are left; else draw from a ``storm``."""
        with self._lock:
            if self._outage is not None:
                outcome.delay = 0.0
                raise ApiError(self._outage.status, self._outage.name, self._outage.message)
            delay = _take_first(self._delays, record)
            forced = _take_first(self._forced_failures, record)
            failure = forced.error if forced is not None else None
            if delay is None and failure is None and self._storm is not None:
                drawn = self._storm.draw()
                failure = drawn.error
                delay = _Delay(drawn.hold_seconds, delivered=True) if drawn.hold_seconds > 0 else None
        outcome.delay = self.delay_seconds if delay is None else delay.seconds
        outcome.delivered = True if delay is None else delay.delivered
        if failure is not None:
            raise ApiError(failure.status, failure.name, failure.message)

    def _decide(self, record: RecordedRequest, outcome: _Outcome) -> None:
        """Route the request to its endpoint; an endpoint raises ApiError to refuse."""
        path = _path_of(record)
        match = _EMAIL_PATH.fullmatch(path)
        if path in ("/emails", "/emails/batch"):
            if record.method != "POST":
                raise method_not_allowed()
            if path == "/emails":
                self._decide_send(record, outcome)
            else:
                self._decide_batch(record, outcome)
        elif match is not None:
            if record.method != "GET":
                raise method_not_allowed()
            self._decide_get(record, outcome, match["id"])
        else:
            raise ApiError(404, "not_found", "The requested endpoint does not exist.")

    def _decide_get(self, record: RecordedRequest, outcome: _Outcome, email_id: str) -> None:
        """``GET /emails/{id}``: the stored delivery or 404."""
        self._authorize(record.headers)
        with self._lock:
            self._admit(outcome, send=False, arrived_at=record.arrived_at)
            found = next((d for d in self._deliveries if d.id == email_id), None)
        if found is None:
            raise ApiError(404, "not_found", "Email not found")
        outcome.ready = Answer(200, found.as_resource())

    def _decide_send(self, record: RecordedRequest, outcome: _Outcome) -> None:
        """``POST /emails``: auth, the limiter, the quota, validation, idempotency, then scripted errors."""
        self._authorize(record.headers)
        with self._lock:
            self._admit(outcome, send=True, arrived_at=record.arrived_at)
            self._check_quota(outcome)
        key = idempotency_key(record.headers)
        send = validated_send(record.body, record.is_json)
        with self._lock:
            replay = self._claim_key(key, record)
            if replay is not None:
                outcome.ready = replay
                return
            outcome.key = key
            outcome.send = send
            outcome.error = self._recipient_failure(send["to"])

    def _decide_batch(self, record: RecordedRequest, outcome: _Outcome) -> None:
        """``POST /emails/batch``: one request for the limiter, the quota and the key; emails judged one by one."""
        self._authorize(record.headers)
        with self._lock:
            self._admit(outcome, send=True, arrived_at=record.arrived_at)
            self._check_quota(outcome)
        key = idempotency_key(record.headers)
        plan = plan_batch(record.body, record.is_json, batch_mode(record.headers))
        with self._lock:
            replay = self._claim_key(key, record)
            if replay is not None:
                outcome.ready = replay
                return
            outcome.key = key
            try:
                self._script_batch(plan)
            except ApiError as error:
                outcome.error = error
                return
            outcome.batch = plan

    def _script_batch(self, plan: BatchPlan) -> None:
        """Apply ``fail_recipient`` per email (lock held).

        A 5xx-scripted recipient fails the whole request, as a server error
        would, before any email is judged (so no 4xx countdown is spent on a
        request that crashed); a 4xx-scripted one is refused like an invalid
        email: the whole batch in strict mode, only that email in permissive.
        """
        for _, send in plan.items:
            address = self._failing_address(send["to"], server_error=True)
            if address is not None:
                raise self._spend_failure(address)
        for index, send in list(plan.items):
            error = self._recipient_failure(send["to"])
            if error is not None:
                plan.reject(index, error)

    def _authorize(self, headers: dict[str, str]) -> None:
        """401 without a bearer token, 403 with the wrong one, like Resend."""
        scheme, _, token = headers.get("authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise ApiError(401, "missing_api_key", MISSING_API_KEY_MESSAGE)
        if token != self.api_key:
            raise ApiError(403, "invalid_api_key", "API key is invalid")

    def _claim_key(self, key: str | None, record: RecordedRequest) -> Answer | None:
        """Claim ``key`` for this request, or return the stored answer to replay (lock held).

        The endpoint is part of the payload, so a key reused across
        ``/emails`` and ``/emails/batch`` is a different request (409).
        """
        if key is None:
            return None
        fingerprint = json.dumps([_path_of(record), record.body], sort_keys=True)
        entry = self._idempotency.get(key)
        if entry is None:
            self._idempotency[key] = _IdempotencyEntry(fingerprint)
            return None
        if entry.response is None:
            raise ApiError(
                409,
                "concurrent_idempotent_requests",
                "Same idempotency key used while original request is still in "
                "progress. Try the request again later.",
            )
        if entry.fingerprint != fingerprint:
            raise ApiError(
                409,
                "invalid_idempotent_request",
                "Same idempotency key used with a different request payload. "
                "Change your idempotency key or payload.",
            )
        return Answer(200, json.loads(json.dumps(entry.response)))

    def _admit(self, outcome: _Outcome, *, send: bool, arrived_at: float) -> None:
        """The team's limiter (lock held): forced 429s for sends, then the window.

        Why here, after authentication and before validation: Resend limits
        per team, so it must know the team, and a malformed request still
        spends a slot.  A refused request takes no slot.  The window counts the
        request at its arrival, as the provider's edge does, not when a busy
        handler thread gets to it (a 100-email batch takes a while to read).
        """
        now = arrived_at
        limit = self.advertised_limit
        if send and self._forced_rate_limits:
            raise rate_limit_error(limit, int(self._forced_rate_limits.popleft()))
        enforced = self.max_requests_per_second
        if enforced is not None and self._window.used(now) >= enforced:
            raise rate_limit_error(limit, self._window.reset_seconds(now))
        self._window.occupy(now)
        outcome.rate = self._rate_headers(now)

    def _check_quota(self, outcome: _Outcome) -> None:
        """429 while the sending quota is used up (lock held); forget it once it has reset.

        Checked after the limiter (the request spent a slot) and before
        validation and idempotency, so every send meets it, replays included.
        """
        if self._quota is None:
            return
        now = time.monotonic()
        if self._quota.seconds_left(now) <= 0:
            self._quota = None
            return
        raise self._quota.error(now, outcome.rate or self._rate_headers(now))

    def _rate_headers(self, now: float) -> dict[str, str]:
        """``ratelimit-*`` as of ``now`` (lock held): what is left of the advertised limit."""
        limit = self.advertised_limit
        return rate_headers(limit, int(limit) - self._window.used(now), self._window.reset_seconds(now))

    def _recipient_failure(self, to: list[str]) -> ApiError | None:
        """The scripted error of the first failing recipient, counting down ``times`` (lock held)."""
        address = self._failing_address(to)
        return None if address is None else self._spend_failure(address)

    def _failing_address(self, to: list[str], *, server_error: bool = False) -> str | None:
        """The first recipient with a scripted failure (only 5xx ones if ``server_error``), spending nothing."""
        for address in map(normalize_address, to):
            failure = self._failures.get(address)
            if failure is not None and (not server_error or failure.status >= 500):
                return address
        return None

    def _spend_failure(self, address: str) -> ApiError:
        """Answer one scripted failure of ``address``: count down ``times`` and number the attempt."""
        failure = self._failures[address]
        if failure.remaining is not None:
            failure.remaining -= 1
            if failure.remaining <= 0:
                del self._failures[address]
        failure.answered += 1
        message = failure.message.replace("{attempt}", str(failure.answered))
        return ApiError(failure.status, failure.name, message)

    def _complete(self, outcome: _Outcome) -> Answer:
        """Turn a decision into the answer: release a failed key or store the delivery."""
        if outcome.ready is not None:
            return outcome.ready
        if outcome.error is not None:
            self._release_key(outcome.key)
            return outcome.error.answer()
        if not outcome.delivered:
            self._release_key(outcome.key)
            return ApiError(500, "application_error", "The request timed out; nothing was sent.").answer()
        if outcome.batch is not None:
            return self._accept_batch(outcome.batch, outcome.key)
        assert outcome.send is not None
        return self._accept(outcome.send, outcome.key)

    def _release_key(self, key: str | None) -> None:
        """Free a key whose request failed, so a retry with it is processed afresh."""
        if key is None:
            return
        with self._lock:
            entry = self._idempotency.get(key)
            if entry is not None and entry.response is None:
                del self._idempotency[key]

    def _accept(self, send: dict[str, Any], key: str | None) -> Answer:
        """Record the delivery and remember the response for idempotent replays."""
        delivery = _delivery(send, key)
        return self._deliver([delivery], key, {"id": delivery.id})

    def _accept_batch(self, plan: BatchPlan, key: str | None) -> Answer:
        """Deliver the batch's valid emails in request order; permissive mode also lists the refused."""
        deliveries = [_delivery(send, key, index) for index, send in plan.items]
        response: dict[str, Any] = {"data": [{"id": d.id} for d in deliveries]}
        if plan.mode == "permissive":
            response["errors"] = list(plan.errors)
        return self._deliver(deliveries, key, response)

    def _deliver(self, deliveries: list[Delivery], key: str | None, response: dict[str, Any]) -> Answer:
        """Store the deliveries and the answer a replay of ``key`` will get, in one step."""
        with self._lock:
            self._deliveries.extend(deliveries)
            if key is not None and key in self._idempotency:
                self._idempotency[key].response = response
        return Answer(200, json.loads(json.dumps(response)))


def _delivery(send: dict[str, Any], key: str | None, batch_index: int | None = None) -> Delivery:
    """What a provider would deliver for one validated email."""
    return Delivery(
        id=str(uuid.uuid4()),
        to=list(send["to"]),
        from_=send["from"],
        subject=send["subject"],
        html=send.get("html"),
        text=send.get("text"),
        idempotency_key=key,
        created_at=datetime.now(timezone.utc).isoformat(),
        batch_index=batch_index,
    )


def _with_rate_headers(answer: Answer, rate: dict[str, str]) -> dict[str, str]:
    """The answer's headers over the request's rate headers; any 429 also says when to retry.

    Why every answer: Resend sends ``ratelimit-*`` on successes and errors
    alike, so a sender can pace itself before it is ever refused.
    """
    headers = {**rate, **answer.headers}
    if answer.status == 429:
        headers.setdefault("retry-after", headers["ratelimit-reset"])
    return headers


def _path_of(record: RecordedRequest) -> str:
    """The request path without its query string."""
    return record.path.split("?", 1)[0]


class _Server(ThreadingHTTPServer):
    """ThreadingHTTPServer that knows its FakeResend, so handlers can reach the state."""

    daemon_threads = True
    #: The listen backlog. socketserver's default of 5 overflows when 16 senders each open a
    #: connection per request (the SDK's own client does): the kernel then drops the handshake's
    #: last ACK and the request stalls 0.2 s, 0.4 s, 0.8 s… in TCP retransmits, which Resend's
    #: servers never make a client do.
    request_queue_size = 1024

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        fake: FakeResend,
    ) -> None:
        super().__init__(address, handler)
        self.fake = fake

    def process_request(self, request: Any, client_address: Any) -> None:
        """One accepted TCP connection: counted, then served in its own thread."""
        self.fake._connection_opened(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        """The connection's handler is done (the client closed it, or asked to)."""
        self.fake._connection_closed(request)
        super().shutdown_request(request)


class _Handler(BaseHTTPRequestHandler):
    """Thin HTTP adapter: read, delegate to FakeResend, write JSON.

    HTTP/1.1 with keep-alive, as Resend's API is, so a pooled client reuses
    connections and ``connections_opened`` can show it; ``Connection: close``
    from the client is honoured and echoed.
    """

    server: _Server
    protocol_version = "HTTP/1.1"
    #: Each answer leaves in one write (the buffer is flushed after every request), without
    #: Nagle's delay. Unbuffered, the headers and the body went out as two segments, and on a
    #: kept-alive connection the body waited for the client's delayed ACK of the headers: up
    #: to 40 ms per request, paid only by clients that reuse connections.
    wbufsize = 64 * 1024
    disable_nagle_algorithm = True

    def do_GET(self) -> None:  # noqa: N802 - http.server naming
        self._serve()

    def do_POST(self) -> None:  # noqa: N802
        self._serve()

    def do_PUT(self) -> None:  # noqa: N802
        self._serve()

    def do_PATCH(self) -> None:  # noqa: N802
        self._serve()

    def do_DELETE(self) -> None:  # noqa: N802
        self._serve()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        """Silent, so pytest output shows only what the tests print."""

    def _serve(self) -> None:
        """Record the request, let the fake answer it, write the answer."""
        answer = self.server.fake._respond_to(self._record())
        self._write(answer)

    def _record(self) -> RecordedRequest:
        """Capture the request before anything else, stamping its arrival time."""
        arrived_at = time.monotonic()
        raw = self._read_body()
        body, is_json = _parse_body(raw)
        return RecordedRequest(
            method=self.command,
            path=self.path,
            headers={k.lower(): v for k, v in self.headers.items()},
            body=body,
            is_json=is_json,
            arrived_at=arrived_at,
        )

    def _read_body(self) -> bytes:
        """Read exactly the body, so the next request on a kept-alive connection starts where it should."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = 0
        return self.rfile.read(length) if length > 0 else b""

    def _read_chunked(self) -> bytes:
        """A chunked body (RFC 9112 section 7.1), trailers skipped."""
        chunks = []
        while True:
            size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                break
            chunks.append(self.rfile.read(size))
            self.rfile.readline()  # the CRLF after each chunk
        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
            pass
        return b"".join(chunks)

    def _write(self, answer: Answer) -> None:
        """Send JSON; a client that already hung up (timeout) is not an error here."""
        payload = json.dumps(answer.body).encode()
        try:
            self.send_response(answer.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            for name, value in answer.headers.items():
                self.send_header(name, value)
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(payload)
            self.wfile.flush()
        except OSError:  # the client hung up (timeout) or stop() closed the connection
            self.close_connection = True


def _parse_body(raw: bytes) -> tuple[Any, bool]:
    """Parsed JSON and True, or the body as text and False when it is not JSON."""
    if not raw:
        return None, False
    try:
        return json.loads(raw), True
    except (UnicodeDecodeError, json.JSONDecodeError):
        return raw.decode("utf-8", errors="replace"), False
