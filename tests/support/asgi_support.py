"""``serve``'s app called in-process, no socket: for tests that send thousands of requests.

Starlette's TestClient trips a deprecation of anyio's (warnings are errors here), so
requests go through ``httpx.ASGITransport`` on one event loop kept for the client's
life. ``raise_app_exceptions=False``: an exception the app lets through answers 500,
as uvicorn would, so a test sees the status a client would see.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any, Optional

import httpx
from starlette.types import ASGIApp

#: The address requests are sent to (any name the app accepts as ``Host``).
BASE_URL = "http://ops.test"


class InProcess:
    """An httpx client bound to an ASGI app; ``close()`` when done."""

    def __init__(self, app: ASGIApp, *, client: tuple[str, int] = ("127.0.0.1", 50000), base_url: str = BASE_URL):
        self.loop = asyncio.new_event_loop()
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False, client=client)
        self.client = httpx.AsyncClient(transport=transport, base_url=base_url, timeout=60)

    def request(
        self,
        method: str,
        path: str,
        *,
        headers: Optional[Mapping[str, str]] = None,
        content: Optional[bytes] = None,
        **options: Any,
    ) -> httpx.Response:
        answer = self.loop.run_until_complete(
            self.client.request(method, path, headers=headers, content=content, **options)
        )
        self.client.cookies.clear()  # each request carries what it says, nothing an earlier answer set
        return answer

    def close(self) -> None:
        self.loop.run_until_complete(self.client.aclose())
        self.loop.close()
