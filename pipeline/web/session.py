"""``/api/ops/session``: sign in with a token for a cookie, see who one is, sign out.

Sign-in requires ``Content-Type: application/json``: a cross-site HTML form cannot
send it without a CORS preflight, which this server never grants, so a page
elsewhere cannot sign a browser in (login CSRF). The cookie carries the role and a
CSRF token, never the token itself (``pipeline.web.auth``).
"""

# No ``from __future__ import annotations``: FastAPI reads these routes' annotations at run time,
# and they name dependencies built in ``router``'s scope.

from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response

from pipeline.web.auth import COOKIE_NAME, SESSION_SECONDS, ApiError, OpsAuth, Principal, audit, client_of
from pipeline.web.schemas import ErrorBody, SessionBody, SignedOut, SignIn

#: The session routes' path.
SESSION_PATH = "/api/ops/session"


def router(auth: OpsAuth) -> APIRouter:
    routes = APIRouter(tags=["session"])

    @routes.post(
        SESSION_PATH,
        response_model=SessionBody,
        responses={code: {"model": ErrorBody} for code in (400, 401, 415, 429)},
    )
    def sign_in(body: SignIn, request: Request, response: Response) -> SessionBody:
        """Trade CRON_SECRET or OPS_READ_TOKEN for a session cookie (8 h) and its CSRF token."""
        if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
            raise ApiError(415, "send the token as application/json")
        client = client_of(request)
        auth.check_throttle(client)
        role = auth.role_of(body.token)
        if role is None:
            auth.record_failure(client)
            audit("anonymous", "sign_in_failed", client=client)
            raise ApiError(401, "missing or invalid credentials")
        cookie, principal = auth.issue(role)
        response.set_cookie(
            COOKIE_NAME,
            cookie,
            max_age=SESSION_SECONDS,
            path="/",
            secure=auth.cookie_secure,
            httponly=True,
            samesite="strict",
        )
        audit(principal, "sign_in", client=client)
        return SessionBody(role=role.value, csrf_token=principal.csrf_token)

    @routes.get(SESSION_PATH, response_model=SessionBody, responses={401: {"model": ErrorBody}})
    def who(principal: Annotated[Principal, Depends(auth.reader)]) -> SessionBody:
        """The caller's role, and its session's CSRF token (null with a bearer token)."""
        return SessionBody(role=principal.role.value, csrf_token=principal.csrf_token)

    @routes.delete(
        SESSION_PATH, response_model=SignedOut, responses={401: {"model": ErrorBody}, 403: {"model": ErrorBody}}
    )
    def sign_out(response: Response, principal: Annotated[Principal, Depends(auth.reader)]) -> SignedOut:
        """Clear the session cookie (with a cookie, the CSRF header is required)."""
        response.delete_cookie(COOKIE_NAME, path="/", secure=auth.cookie_secure, httponly=True, samesite="strict")
        audit(principal, "sign_out")
        return SignedOut(signed_out=True)

    return routes
