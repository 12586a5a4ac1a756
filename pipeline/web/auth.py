"""Who may call the cron endpoints and the ops API: two bearer tokens, two roles, and a session cookie.

``CRON_SECRET`` is the role ``admin`` (everything: the shop's cron endpoints kept
their secret, and whoever holds it could run them anyway); ``OPS_READ_TOKEN``, when
set, is the role ``read``. A token is compared with ``hmac.compare_digest`` against
*every* candidate, whatever matched first, so the answer's timing tells nothing.

The dashboard signs in once (``POST /api/ops/session``) and then carries a cookie
rather than the token, so the token never sits in the browser's storage. The cookie
holds the role, a CSRF token and an expiry, signed with HMAC-SHA256 under a key
derived from CRON_SECRET and, for the read role, OPS_READ_TOKEN: rotating either
ends the sessions it opened, and nothing needs storing server-side. It is
``HttpOnly``, ``SameSite=Strict``, ``Path=/`` and ``Secure`` (OPS_COOKIE_SECURE).
A cookie-authenticated unsafe request must repeat the session's CSRF token in
``X-CSRF-Token`` (SameSite already stops cross-site sends in current browsers; the
header is the second lock). A bearer request needs none: a browser never adds one.

Tokens are 32+ characters, so guessing is hopeless; sign-in failures are still
logged and a client failing ``MAX_FAILURES`` times within ``FAILURE_WINDOW_SECONDS``
gets 429 until the window passes, which keeps a scanner out of the logs' way. The
client is the real one behind the proxies named in FORWARDED_ALLOW_IPS (never one a
client names itself), and the table keeps ``MAX_TRACKED_CLIENTS`` at most.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import hmac
import json
import logging
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Optional

from fastapi import Depends, Request
from fastapi.security import APIKeyCookie, HTTPAuthorizationCredentials, HTTPBearer

from pipeline.core.audit import audit as record
from pipeline.core.settings import Settings

logger = logging.getLogger(__name__)

#: The session cookie's name (the dashboard's contract).
COOKIE_NAME = "minalesh_ops"
#: The header a cookie-authenticated unsafe request repeats the session's CSRF token in.
CSRF_HEADER = "X-CSRF-Token"
#: A session ends this long after sign-in.
SESSION_SECONDS = 8 * 3600
#: A session cookie longer than this is refused unread (the ones issued here are under 200 characters).
MAX_COOKIE_CHARS = 512
#: Methods that change something: with a cookie, they need the CSRF header.
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
#: Failed sign-ins of one client within the window before it gets 429.
MAX_FAILURES = 10
FAILURE_WINDOW_SECONDS = 60.0
#: The failure table keeps this many clients at most, the most recent: a scan from many addresses
#: cannot grow it without end (each entry holds at most MAX_FAILURES times).
MAX_TRACKED_CLIENTS = 10_000


#: How the OpenAPI document names the two ways in (checking is ``OpsAuth.principal``'s).
_BEARER = HTTPBearer(auto_error=False, description="CRON_SECRET (admin) or OPS_READ_TOKEN (read)")
_COOKIE = APIKeyCookie(name=COOKIE_NAME, auto_error=False, description="From POST /api/ops/session")


class Role(str, enum.Enum):
    """What a caller may do."""

    #: CRON_SECRET: every route.
    ADMIN = "admin"
    #: OPS_READ_TOKEN: the routes that only read.
    READ = "read"


class ApiError(Exception):
    """A request answered with an error (401, 403, 429; 400 bad input; 404): ``message`` is safe to answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Principal:
    """The caller of one request: its role, how it proved it, and its session's CSRF token if any."""

    role: Role
    via: str
    csrf_token: Optional[str] = None


class OpsAuth:
    """Checks bearer tokens and session cookies; issues sessions."""

    def __init__(
        self,
        *,
        admin_token: str,
        read_token: Optional[str] = None,
        cookie_secure: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._tokens = [(admin_token.encode(), Role.ADMIN)]
        if read_token:
            self._tokens.append((read_token.encode(), Role.READ))
        root = hmac.new(admin_token.encode(), b"minalesh-ops-session-v1", hashlib.sha256).digest()
        self._keys = {role: hmac.new(root, token, hashlib.sha256).digest() for token, role in self._tokens}
        self.cookie_secure = cookie_secure
        self.clock = clock
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> OpsAuth:
        assert settings.cron_secret is not None, "the ops API is served only with CRON_SECRET"
        return cls(
            admin_token=settings.cron_secret,
            read_token=settings.ops_read_token,
            cookie_secure=settings.ops_cookie_secure,
        )

    # --- tokens -----------------------------------------------------------------------------

    def role_of(self, token: str) -> Optional[Role]:
        """The role ``token`` grants, or None; compared with every candidate in constant time."""
        offered = token.encode("utf-8", "replace")
        found: Optional[Role] = None
        for candidate, role in self._tokens:
            if hmac.compare_digest(candidate, offered) and found is None:
                found = role
        return found

    def principal(self, request: Request) -> Principal:
        """The caller of ``request``, by bearer token or session cookie; ApiError(401) otherwise."""
        header = request.headers.get("authorization")
        if header is not None:
            scheme, _, token = header.partition(" ")
            role = self.role_of(token.strip()) if scheme.lower() == "bearer" else None
            if role is None:
                logger.warning("Refused a bearer token from %s on %s.", client_of(request), request.url.path)
                raise ApiError(401, "missing or invalid credentials")
            return Principal(role, "bearer")
        session = self.read_session(request.cookies.get(COOKIE_NAME, ""))
        if session is None:
            raise ApiError(401, "missing or invalid credentials")
        if request.method in UNSAFE_METHODS:
            offered = request.headers.get(CSRF_HEADER, "")
            expected = session.csrf_token  # a cookie's session always has one (read_session)
            if expected is None or not hmac.compare_digest(offered.encode(), expected.encode()):
                raise ApiError(403, f"a session's {request.method} needs its {CSRF_HEADER} header")
        return session

    def reader(
        self,
        request: Request,
        _bearer: Annotated[Optional[HTTPAuthorizationCredentials], Depends(_BEARER)],
        _cookie: Annotated[Optional[str], Depends(_COOKIE)],
    ) -> Principal:
        """The dependency of a route that reads: either role."""
        return self.principal(request)

    def admin(
        self,
        request: Request,
        _bearer: Annotated[Optional[HTTPAuthorizationCredentials], Depends(_BEARER)],
        _cookie: Annotated[Optional[str], Depends(_COOKIE)],
    ) -> Principal:
        """The dependency of a route that acts: the admin role only (403 for the read role)."""
        principal = self.principal(request)
        if principal.role is not Role.ADMIN:
            audit(principal, "refused", path=request.url.path, method=request.method)
            raise ApiError(403, "the read role may not do this")
        return principal

    def cron(
        self,
        request: Request,
        _bearer: Annotated[Optional[HTTPAuthorizationCredentials], Depends(_BEARER)],
    ) -> Principal:
        """The dependency of a cron endpoint: the admin's bearer token, never a session cookie.

        The cron paths answer GET (Vercel Cron calls them so), and a cookie rides along
        with any GET a page of the same site makes (``<img src=...>``), where no CSRF
        header is asked for. So a cookie is not even looked at here: without the
        ``Authorization`` header the answer is 401, whatever cookie came with it.
        """
        if request.headers.get("authorization") is None:
            raise ApiError(401, "missing or invalid credentials")
        return self.admin(request, _bearer, None)

    # --- sessions ---------------------------------------------------------------------------

    def issue(self, role: Role) -> tuple[str, Principal]:
        """A signed cookie value for ``role`` and the session it carries."""
        csrf = secrets.token_urlsafe(24)
        payload = _b64(json.dumps({"r": role.value, "c": csrf, "e": int(self.clock()) + SESSION_SECONDS}).encode())
        return f"{payload}.{self._sign(role, payload)}", Principal(role, "cookie", csrf)

    def read_session(self, value: str) -> Optional[Principal]:
        """The session of a cookie value, or None when it is forged, malformed or expired.

        The signature is checked before anything of the payload is read: a forged
        cookie is refused unparsed, so no client without a key can make the JSON
        reader meet ``1e400`` or nesting thousands deep. A value longer than any
        cookie this server issues is refused unread.
        """
        if len(value) > MAX_COOKIE_CHARS:
            return None
        payload, _, signature = value.partition(".")
        role = self._signed_by(payload, signature)
        if role is None:
            return None
        try:
            fields: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
            claimed = Role(fields["r"])
            csrf, expires = str(fields["c"]), int(fields["e"])
        except (ValueError, KeyError, TypeError, OverflowError, RecursionError):  # signed, so never expected
            return None
        if claimed is not role:
            return None
        return Principal(role, "cookie", csrf) if expires > self.clock() else None

    def _signed_by(self, payload: str, signature: str) -> Optional[Role]:
        """The role whose key signed ``payload``, or None; every key is tried, in constant time each."""
        offered = signature.encode("utf-8", "replace")
        found: Optional[Role] = None
        for role in self._keys:
            if hmac.compare_digest(self._sign(role, payload).encode(), offered) and found is None:
                found = role
        return found

    def _sign(self, role: Role, payload: str) -> str:
        return _b64(hmac.new(self._keys[role], payload.encode("utf-8", "replace"), hashlib.sha256).digest())

    # --- sign-in throttle -------------------------------------------------------------------

    def check_throttle(self, client: str) -> None:
        """ApiError(429) while ``client`` is over its failed sign-ins."""
        with self._lock:
            recent = self._recent(client)
            if not recent:
                del self._failures[client]
            elif len(recent) >= MAX_FAILURES:
                raise ApiError(429, "too many failed sign-ins; wait a minute")

    def record_failure(self, client: str) -> None:
        with self._lock:
            recent = self._recent(client)
            recent.append(self.clock())
            while len(recent) > MAX_FAILURES:  # more are never needed to answer 429
                recent.popleft()
            while len(self._failures) > MAX_TRACKED_CLIENTS:  # the least recently failing first
                del self._failures[next(iter(self._failures))]

    def _recent(self, client: str) -> deque[float]:
        """``client``'s failures within the window; a client without any is forgotten."""
        cutoff = self.clock() - FAILURE_WINDOW_SECONDS
        failures = self._failures.pop(client, deque())
        while failures and failures[0] < cutoff:
            failures.popleft()
        self._failures[client] = failures
        return failures


def audit(principal: Principal | str, action: str, **details: Any) -> None:
    """``pipeline.core.audit.audit`` with the caller's role (never its token)."""
    record(principal.role.value if isinstance(principal, Principal) else principal, action, **details)


def client_of(request: Request) -> str:
    """The client's address: the peer's, or the one a proxy named in FORWARDED_ALLOW_IPS forwarded."""
    return request.client.host if request.client else "unknown"


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")
