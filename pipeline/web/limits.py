"""Bounds on what a request may make this server read: ids, bodies, and the errors that describe them.

Each bound answers a client error (404, 408, 413, 422) where the unbounded input ended
in a 500 and a traceback, which any client without credentials could repeat to
flood the log:

* ``{name:rowid}`` in a path matches 1 to 19 digits (a PostgreSQL bigint has 19 at
  most). Starlette's ``int`` matches any number of them and Python refuses to read
  an int of more than 4,300 digits, inside routing, so a long id was a 500;
* ``BodyLimit`` reads a body before any route does, at most ``MAX_REQUEST_BYTES``
  (413 beyond) within ``BODY_TIMEOUT_SECONDS`` (408 after). FastAPI would read any
  size into memory. The webhook intake keeps its own reader (1 MiB, its own
  deadline) and is left alone;
* ``OneValueEach`` refuses a query that names a parameter twice (400). Every query
  parameter of this API takes one value, and FastAPI would quietly keep the last
  of several, answering a request its document says is invalid;
* ``validation_errors`` is the answer of a request that does not validate (422):
  where and what, never the input. FastAPI's own echoes the input, which cannot be
  encoded when it holds a lone surrogate (``"\\ud800"`` is valid JSON), and which
  sends back whatever a client planted, up to the whole body.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from urllib.parse import parse_qsl

from fastapi.exceptions import RequestValidationError
from starlette.convertors import Convertor, register_url_convertor
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pipeline.web.intake import BODY_TIMEOUT_SECONDS

#: The largest body of a request to the ops API, cron or session routes: the largest
#: real one (replaying 1,000 ids) is about 20 KB.
MAX_REQUEST_BYTES = 64 * 1024
#: The validation errors a 422 lists (a body can break every rule at once).
MAX_ERRORS = 10
#: A string of a validation error (a location, a message) is cut to this many characters.
MAX_ERROR_TEXT = 120


class RowIdConvertor(Convertor[int]):
    """A row id in a path: 1 to 19 digits (a bigint), so reading it as an int cannot fail."""

    regex = "[0-9]{1,19}"

    def convert(self, value: str) -> int:
        return int(value)

    def to_string(self, value: int) -> str:
        return str(value)


register_url_convertor("rowid", RowIdConvertor())


class BodyTooLarge(Exception):
    """The body is over the limit."""


class BodyLimit:
    """Reads each request's body first, bounded in size and time, and hands it to the app.

    Paths under ``exempt`` (the webhook intake) are passed through as they come.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        limit: int = MAX_REQUEST_BYTES,
        timeout: float = BODY_TIMEOUT_SECONDS,
        exempt: Sequence[str] = (),
    ) -> None:
        self.app = app
        self.limit = limit
        self.timeout = timeout
        self.exempt = tuple(exempt)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or str(scope["path"]).startswith(self.exempt):
            await self.app(scope, receive, send)
            return
        try:
            body = await self._read(scope, receive)
        except BodyTooLarge:
            await _refuse(413, f"the body is over {self.limit} bytes", scope, receive, send)
            return
        except TimeoutError:
            # The rest may still come: the connection is closed rather than kept alive.
            await _refuse(408, f"the body did not arrive within {self.timeout:g} s", scope, receive, send, close=True)
            return
        if body is None:  # the client went away
            return
        given = False

        async def replay() -> Message:
            nonlocal given
            if given:
                return await receive()
            given = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def _read(self, scope: Scope, receive: Receive) -> bytes | None:
        declared = dict(scope["headers"]).get(b"content-length", b"").strip()
        if declared.isdigit() and int(declared) > self.limit:
            raise BodyTooLarge()
        body = bytearray()
        async with asyncio.timeout(self.timeout):
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return None
                body += message.get("body", b"")
                if len(body) > self.limit:
                    raise BodyTooLarge()
                if not message.get("more_body", False):
                    return bytes(body)


class OneValueEach:
    """Refuses (400) a request whose query string gives a parameter more than once."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope.get("query_string"):
            repeated = _repeated(scope["query_string"].decode("latin-1"))
            if repeated is not None:
                message = f"the query parameter {_printable(repeated)!r} is given more than once"
                await _refuse(400, message, scope, receive, send)
                return
        await self.app(scope, receive, send)


def _repeated(query: str) -> str | None:
    """The first parameter ``query`` names twice, or None."""
    seen: set[str] = set()
    for name, _ in parse_qsl(query, keep_blank_values=True):
        if name in seen:
            return name[:MAX_ERROR_TEXT]
        seen.add(name)
    return None


async def _refuse(
    status: int, message: str, scope: Scope, receive: Receive, send: Send, *, close: bool = False
) -> None:
    headers = {"Connection": "close"} if close else None
    await JSONResponse({"error": message}, status_code=status, headers=headers)(scope, receive, send)


async def validation_errors(_request: Request, error: RequestValidationError) -> JSONResponse:
    """422 ``{"error": ..., "detail": [{"loc", "msg", "type"}]}``: FastAPI's shape, without ``input`` and ``ctx``.

    Every string is cut short and made encodable (a lone surrogate becomes ``?``):
    a key of the body is part of a location, and it is the client's text.
    """
    detail = [
        {
            "loc": [_printable(part) if isinstance(part, str) else part for part in item.get("loc", ())],
            "msg": _printable(str(item.get("msg", ""))),
            "type": _printable(str(item.get("type", ""))),
        }
        for item in list(error.errors())[:MAX_ERRORS]
    ]
    summary = "; ".join(f"{'.'.join(map(str, item['loc']))}: {item['msg']}" for item in detail)
    return JSONResponse({"error": f"invalid request: {summary}", "detail": detail}, status_code=422)


def _printable(text: str) -> str:
    """``text`` cut to ``MAX_ERROR_TEXT`` characters, anything UTF-8 cannot encode replaced."""
    short = text if len(text) <= MAX_ERROR_TEXT else text[: MAX_ERROR_TEXT - 1] + "…"
    return short.encode("utf-8", "replace").decode("utf-8")
