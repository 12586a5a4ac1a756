"""No request without credentials ends in a 5xx: a property-based fuzz of ``serve``'s whole app.

Hypothesis builds requests over every route the app has (read from ``app.routes``,
so a new route is fuzzed the day it is added) and some it has not: every method,
path parameters of thousands of digits and of any text, query parameters of the
routes' names and others, headers (bearer tokens that are not, forwarded
addresses, hosts, signatures), session cookies forged, oversized, nested or
holding ``1e400``, and bodies of every shape (JSON of any structure with lone
surrogates and huge numbers, nesting thousands deep, bytes that are not UTF-8).
The app runs in-process on the run's PostgreSQL and RabbitMQ, as ``serve`` runs it.

Each route gets its own examples (hypothesis, left to pick routes, keeps to a few),
over 10,000 requests in all, in about a minute on CI's two cores; ``derandomize``
makes each run the same requests, so a failure repeats. The distribution of
answers is printed (``[figures]``).
"""

from __future__ import annotations

import base64
import json
import re
from collections import Counter
from collections.abc import Iterator
from typing import Any, Optional
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.routing import BaseRoute

from pipeline.core.runtime import Runtime
from pipeline.web.app import build_app
from pipeline.web.auth import COOKIE_NAME, CSRF_HEADER
from tests.support.asgi_support import InProcess
from tests.support.ops_support import READ_TOKEN, with_tokens

#: Requests per route of each shape below (32 routes and 7 stray paths: 10,136 requests in all).
ANY_REQUESTS = 110
COOKIE_REQUESTS = 60
BODY_REQUESTS = 150
PATH_REQUESTS = 150
READ_REQUESTS = 80
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "TRACE", "CONNECT", "PROPFIND")
#: Paths no route has, next to the app's own.
STRAY_PATHS = ("/", "/api", "/api/ops", "/api/cron", "/api/payments/webhook", "/ops/../api/ops/stats", "/.env")
#: Query parameter names the routes take, and some they do not.
QUERY_NAMES = (
    "q", "status", "priority", "limit", "cursor", "provider", "state", "queue", "actor", "since",
    "unreplayed", "minutes", "token", "secret", "id", "ids", "filter", "dry_run", "scope",
)  # fmt: skip
#: Header names worth varying, with values chosen below.
HEADER_NAMES = (
    "Authorization", "Content-Type", "X-CSRF-Token", "X-Forwarded-For", "X-Forwarded-Proto", "Forwarded",
    "X-Real-IP", "Host", "X-Webhook-Timestamp", "X-Webhook-Signature", "Accept", "Accept-Encoding",
    "Origin", "Referer", "If-None-Match", "Range", "Transfer-Encoding", "X-Anything",
)  # fmt: skip

counts: Counter[int] = Counter()
fives: list[str] = []


@pytest.fixture(scope="module")
def app(runtime: Runtime) -> Iterator[InProcess]:
    client = InProcess(build_app(with_tokens(runtime)))
    yield client
    client.close()
    total = sum(counts.values())
    shown = ", ".join(f"{status}: {count}" for status, count in sorted(counts.items()))
    print(f"\n[figures] fuzz: {total} requests, {sum(n for s, n in counts.items() if s >= 500)} answered 5xx; {shown}")


def routes_of(client: InProcess) -> list[tuple[str, tuple[str, ...]]]:
    """(path template, methods) of every route of the app, those of included routers among them."""
    app: Any = client.client._transport.app  # type: ignore[attr-defined]
    while not hasattr(app, "routes"):  # the middleware around the app
        app = app.app
    found: list[tuple[str, tuple[str, ...]]] = []
    for route in _flat(app.routes):
        path = getattr(route, "path", None)
        if isinstance(path, str):
            found.append((path, tuple(sorted(getattr(route, "methods", None) or ("GET",)))))
    return found


def _flat(routes: list[BaseRoute]) -> Iterator[BaseRoute]:
    """FastAPI keeps an included router's routes in the router (``original_router``), not in the app's list."""
    for route in routes:
        included = getattr(route, "original_router", None)
        if included is not None:
            yield from _flat(included.routes)
        else:
            yield route


# --- strategies -------------------------------------------------------------------------------------

surrogates = st.integers(0xD800, 0xDFFF).map(chr)
texts = st.one_of(
    st.text(max_size=40),
    st.text(st.one_of(st.characters(), surrogates), max_size=10),
    st.sampled_from(["", "0", "-1", "1e400", "NaN", "null", "%00", "%ff%fe", "../", "\x00", "ａｄｍｉｎ", "' OR 1=1"]),
    st.integers(1, 6000).map(lambda n: "9" * n),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(1, 4200).map(lambda n: 10**n),
    st.floats(allow_nan=True, allow_infinity=True),
    texts,
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(texts, inner, max_size=4)),
    max_leaves=12,
)
#: Known shapes of the routes' bodies, with junk in their fields.
route_bodies = st.fixed_dictionaries(
    {},
    optional={
        "token": json_values, "ids": json_values, "filter": json_values, "dry_run": json_values,
        "scope": json_values, "minutes": json_values, "reason": json_values, "event_id": json_values,
        "type": json_values, "order_id": json_values, "amount": json_values, "currency": json_values,
    },
)  # fmt: skip


def _quoted(text: str) -> str:
    """``text`` percent-encoded whole, its lone surrogates as the bytes a careless client would send."""
    return quote(text.encode("utf-8", "surrogatepass"), safe="")


def _deep(levels: int, opener: bytes = b"[", closer: bytes = b"]") -> bytes:
    return opener * levels + closer * levels


def _encoded(value: Any) -> bytes:
    """JSON text of ``value`` (NaN and infinities as Python writes them; surrogates escaped)."""
    return json.dumps(value, ensure_ascii=True).encode()


bodies = st.one_of(
    st.none(),
    st.builds(_encoded, json_values),
    st.builds(_encoded, route_bodies),
    st.binary(max_size=200),
    st.integers(1, 200_000).map(_deep),
    st.integers(1, 50_000).map(lambda n: b'{"a":' * n + b"1" + b"}" * n),
    st.integers(1, 6000).map(lambda n: b'{"ids": [' + b"9" * n + b"]}"),
    st.sampled_from([b'{"token": "\\ud800"}', b'{"\\udfff": 1}', b"1e400", b"[1e400]", b"NaN", b'"\\u0000"', b"{"]),
    st.integers(60_000, 70_000).map(lambda n: b'{"token": "' + b"x" * n + b'"}'),
)
forged_payloads = st.one_of(
    st.builds(_encoded, json_values),
    st.just(b'{"r": "admin", "c": "x", "e": 1e400}'),
    st.just(b'{"r": "admin", "c": "x", "e": 99999999999999999999999999}'),
    st.integers(1, 3000).map(_deep),
    st.binary(max_size=60),
)
cookie_values = st.one_of(
    st.builds(
        lambda p, s: base64.urlsafe_b64encode(p).decode().rstrip("=") + "." + s,
        forged_payloads,
        st.text(st.characters(min_codepoint=0x21, max_codepoint=0xFF, exclude_characters=';,\\"'), max_size=50),
    ),
    st.integers(1, 20_000).map(lambda n: "A" * n + ".sig"),
    st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters=';,\\"'), max_size=80),
)
#: Header values as bytes a server would pass on: printable Latin-1, no line breaks.
header_texts = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=60
).map(lambda text: text.strip())
header_values = st.one_of(
    header_texts,
    st.sampled_from(
        [
            "Bearer", "Bearer ", "Bearer x", "Basic YWRtaW46YWRtaW4=", "bearer " + "z" * 40, "Bearer " + "é" * 40,
            "application/json", "application/json; charset=latin-1", "text/plain", "multipart/form-data; boundary=x",
            "1.2.3.4", "1.2.3.4, 5.6.7.8, unknown", "for=1.2.3.4;proto=https", "evil.example", "127.0.0.1:1",
            "ops.test", "chunked", "99999999999999999999", "v1=" + "0" * 64, "bytes=0-99999999999",
        ]
    ),
    st.integers(1, 9000).map(lambda n: "x" * n),
)  # fmt: skip


def fuzz(examples: int) -> settings:
    """The same requests each run, no example database, no deadline (a request's time is the app's),
    no health check about slow or large examples."""
    return settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )


def _quoted_params(query: dict[str, str]) -> list[tuple[bytes, bytes]]:
    return [(k.encode("utf-8", "surrogatepass"), v.encode("utf-8", "surrogatepass")) for k, v in query.items()]


def _filled(template: str, value: str) -> str:
    """``template`` with every path parameter ``value``, percent-encoded."""
    return re.sub(r"\{[^}]+\}", _quoted(value) or "0", template)


queries = st.dictionaries(st.one_of(st.sampled_from(QUERY_NAMES), texts), texts, max_size=4)
headers = st.dictionaries(st.sampled_from(HEADER_NAMES), header_values, max_size=4)


def send(
    app: InProcess,
    method: str,
    url: str,
    *,
    headers: dict[str, str],
    content: Optional[bytes] = None,
    query: Optional[dict[str, str]] = None,
    token: Optional[str] = None,
) -> None:
    """The request as a client would send it; its answer counted, and a 5xx fails the test naming the request."""
    raw = {name: value.encode("latin-1") for name, value in headers.items()}
    if token is not None:
        raw["Authorization"] = f"Bearer {token}".encode()
    encoded = "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in _quoted_params(query or {}))
    url = url + (f"?{encoded}" if encoded else "")
    answer = app.request(method, url, headers=raw, content=content)  # type: ignore[arg-type]
    counts[answer.status_code] += 1
    assert answer.status_code < 500, f"{method} {url[:300]} -> {answer.status_code} {answer.text[:300]}"


# --- the shapes: each for every route -----------------------------------------------------------------


def test_any_request_to_any_route(app: InProcess) -> None:
    """Any method, path parameters, query, headers, maybe a forged cookie, and a body of any shape."""
    for template, methods in [*routes_of(app), *[(path, ("GET",)) for path in STRAY_PATHS]]:
        _any_request(app, template, methods)


def _any_request(app: InProcess, template: str, methods: tuple[str, ...]) -> None:
    @fuzz(ANY_REQUESTS)
    @given(
        st.one_of(st.sampled_from(methods), st.sampled_from(METHODS)),
        texts,
        queries,
        headers,
        st.one_of(st.none(), cookie_values),
        bodies,
    )
    def run(
        method: str,
        value: str,
        query: dict[str, str],
        sent: dict[str, str],
        cookie: Optional[str],
        body: Optional[bytes],
    ) -> None:
        if cookie is not None:
            sent = {**sent, "Cookie": f"{COOKIE_NAME}={cookie}"}
        send(app, method, _filled(template, value), headers=sent, content=body, query=query)

    run()


def test_forged_session_cookies(app: InProcess) -> None:
    for template, methods in routes_of(app):
        _forged_cookies(app, template, methods)


def _forged_cookies(app: InProcess, template: str, methods: tuple[str, ...]) -> None:
    @fuzz(COOKIE_REQUESTS)
    @given(st.sampled_from(methods), cookie_values, st.sampled_from(["", "x" * 32]))
    def run(method: str, cookie: str, csrf: str) -> None:
        send(app, method, _filled(template, "1"), headers={"Cookie": f"{COOKIE_NAME}={cookie}", CSRF_HEADER: csrf})

    run()


def test_bodies_of_every_shape_on_routes_that_take_one(app: InProcess) -> None:
    for template, methods in routes_of(app):
        for method in {"POST", "DELETE"} & set(methods):
            _bodies(app, template.replace("{provider}", "generic"), method)


def _bodies(app: InProcess, template: str, method: str) -> None:
    @fuzz(BODY_REQUESTS)
    @given(bodies, st.sampled_from(["application/json", "text/plain", "application/x-www-form-urlencoded", ""]))
    def run(body: Optional[bytes], kind: str) -> None:
        send(app, method, _filled(template, "1"), headers={"Content-Type": kind}, content=body)

    run()


def test_ids_and_strings_in_paths(app: InProcess) -> None:
    for template, methods in routes_of(app):
        if "{" in template:
            _path_values(app, template, methods)


def _path_values(app: InProcess, template: str, methods: tuple[str, ...]) -> None:
    @fuzz(PATH_REQUESTS)
    @given(st.one_of(texts, st.integers().map(str)), st.sampled_from(methods))
    def run(value: str, method: str) -> None:
        send(app, method, _filled(template, value), headers={})

    run()


def test_junk_queries_and_headers_with_the_read_token(app: InProcess) -> None:
    """Past the credentials, into PostgreSQL: junk in every filter is a 4xx, never a 5xx. The read role acts
    on nothing, so the run's other tests see no change."""
    for template, methods in routes_of(app):
        if "GET" in methods and "/cron/" not in template:
            _read_queries(app, template)


def _read_queries(app: InProcess, template: str) -> None:
    @fuzz(READ_REQUESTS)
    @given(texts, queries, headers)
    def run(value: str, query: dict[str, str], sent: dict[str, str]) -> None:
        sent = {name: text for name, text in sent.items() if name != "Authorization"}
        send(app, "GET", _filled(template, value), headers=sent, query=query, token=READ_TOKEN)

    run()
