"""The operators' dashboard at ``/ops``: one HTML shell and its static assets, on the ops API.

Everything the dashboard knows it asks ``/api/ops/*`` for, from the browser, with
the session cookie the API sets at sign-in; this module serves files and nothing
else, so the API stays the one place that checks tokens, roles and CSRF.

``/ops`` and every ``/ops/<page>`` (deep links such as ``/ops/dead-letters/42``)
answer the same shell; its script reads the path and draws the page. Assets live
under ``/ops/static/<version>/``, where the version is a hash of their contents:
a deploy changes the path, so the assets can be cached for a year (``immutable``)
while the shell itself is never cached and always names the current ones.

Every answer carries a strict Content-Security-Policy (only this origin's
scripts, styles, images and API; no inline script or style, no framing, no
form posted elsewhere), ``X-Frame-Options: DENY`` and ``Referrer-Policy:
no-referrer``. Nothing is fetched from another host: the dashboard works
without internet access.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path

from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: Where the dashboard lives on ``serve``.
BASE_PATH = "/ops"
#: The stylesheet, the scripts and the icon (package data).
STATIC_DIR = Path(__file__).with_name("static")
#: The one HTML page (package data).
SHELL_FILE = Path(__file__).with_name("shell.html")
#: The shell's placeholder for the assets' versioned path.
ASSETS_PLACEHOLDER = "{{assets}}"

#: Only this origin, no inline code; ``data:`` images for the icon's fallbacks only.
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "font-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)
#: Sent with every answer of the dashboard.
SECURITY_HEADERS: Mapping[str, str] = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}
#: The shell names the assets of this deploy, so it is never kept.
SHELL_CACHE_CONTROL = "no-store"
#: An asset's path changes with its contents: a browser keeps it as long as it likes.
ASSET_CACHE_CONTROL = "public, max-age=31536000, immutable"


def assets_version(directory: Path = STATIC_DIR) -> str:
    """A short hash of every asset's name and bytes: the path segment that changes with a deploy."""
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        digest.update(path.relative_to(directory).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


class HeadersMiddleware:
    """Adds fixed headers to every HTTP answer of the app it wraps (here: the static files)."""

    def __init__(self, app: ASGIApp, headers: Mapping[str, str]) -> None:
        self.app = app
        self.headers = [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers.items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *self.headers]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


class Shell:
    """The one HTML page, with the assets' versioned path filled in once."""

    def __init__(self, assets_path: str) -> None:
        template = SHELL_FILE.read_text(encoding="utf-8")
        self.html = template.replace(ASSETS_PLACEHOLDER, assets_path)

    async def page(self, _request: Request) -> Response:
        """The shell, whichever page the path names (the script draws it)."""
        headers = {**SECURITY_HEADERS, "Cache-Control": SHELL_CACHE_CONTROL}
        return HTMLResponse(self.html, headers=headers)


def dashboard_routes() -> list[BaseRoute]:
    """The routes ``serve``'s app mounts beside the ops API: ``/ops``, ``/ops/{page}``, ``/ops/static/…``."""
    assets_path = f"{BASE_PATH}/static/{assets_version()}"
    shell = Shell(assets_path)
    static = HeadersMiddleware(
        StaticFiles(directory=STATIC_DIR), {**SECURITY_HEADERS, "Cache-Control": ASSET_CACHE_CONTROL}
    )
    return [
        Mount(assets_path, app=static),
        # An asset of another deploy is missing, not a page: it must not get the shell.
        Route(f"{BASE_PATH}/static/{{stale:path}}", _missing),
        Route(BASE_PATH, shell.page),
        Route(f"{BASE_PATH}/{{page:path}}", shell.page),
    ]


async def _missing(_request: Request) -> Response:
    return PlainTextResponse("Not Found", status_code=404, headers=SECURITY_HEADERS)
