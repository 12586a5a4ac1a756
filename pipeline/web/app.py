"""The app ``minalesh-workers serve`` runs, and the running of it.

One FastAPI app (FastAPI is Starlette underneath, so the webhook intake stays the
plain Starlette route it always was, byte for byte):

* ``POST /api/payments/webhook/{provider}``: the intake (``pipeline.web.intake``);
* ``POST /api/email-events/resend``: Resend's delivery events (``pipeline.web.email_events``);
* ``GET /healthz``, ``GET /readyz``: health, no auth (``pipeline.web.health``);
* with CRON_SECRET only: ``/api/cron/*`` (``pipeline.web.cron``), ``/api/ops/*``
  (``session``, ``ops_api``, ``ops_actions``) and the OpenAPI document
  ``GET /api/ops/openapi.json`` (no auth: it says what the routes are, not what they
  hold, and the README says as much), and the dashboard at ``/ops`` (``pipeline.web.dashboard``:
  static files; it signs in to the ops API like any client). Without CRON_SECRET none of them
  exists (404).

``/metrics`` (Prometheus) is ``pipeline.web.metrics.metrics_route``, sharing the ops API's ``QueueDepths``.
"""

from __future__ import annotations

import logging

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.types import ASGIApp
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from pipeline.core.runtime import Runtime
from pipeline.core.settings import PAYMENT_PROVIDERS
from pipeline.web import cron, delivery, email_events, health, ops_actions, ops_api, session
from pipeline.web.auth import ApiError, OpsAuth
from pipeline.web.dashboard import dashboard_routes
from pipeline.web.depths import QueueDepths
from pipeline.web.intake import WEBHOOK_PATH, intake_for
from pipeline.web.limits import BodyLimit, OneValueEach, validation_errors
from pipeline.web.metrics import metrics_route

logger = logging.getLogger(__name__)

#: Default address of ``serve``; put it behind the TLS-terminating proxy (``--host 0.0.0.0`` in a container).
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
#: uvicorn closes a keep-alive connection idle for this long (its default, stated here on purpose).
KEEP_ALIVE_SECONDS = 5

#: The OpenAPI document of the cron, ops and health routes.
OPENAPI_PATH = "/api/ops/openapi.json"


def build_app(current: Runtime) -> FastAPI:
    """Every route this process serves, wired to ``current``."""
    settings = current.settings
    served = settings.cron_secret is not None
    app = FastAPI(
        title="minalesh-workers ops API",
        version="1",
        description="The shop's cron endpoints, health, and the operators' API (see the README).",
        openapi_url=OPENAPI_PATH if served else None,
        docs_url=None,
        redoc_url=None,
        # Refusals in this API's shape; given here, as add_exception_handler is typed for handlers of any Exception.
        exception_handlers={
            ApiError: _answer_error,
            HTTPException: _answer_http_error,
            RequestValidationError: validation_errors,
        },
    )
    app.add_route(WEBHOOK_PATH, intake_for(current).handle, methods=["POST"], include_in_schema=False)
    events = email_events.intake_for(current)
    app.add_route(email_events.EVENTS_PATH, events.handle, methods=["POST"], include_in_schema=False)
    app.include_router(health.router(sessions=current.sessions, broker_url=settings.broker_url))
    # Bodies are read bounded before any route sees them; the intake bounds its own.
    app.add_middleware(BodyLimit, exempt=[WEBHOOK_PATH.split("{", 1)[0], email_events.EVENTS_PATH])
    app.add_middleware(OneValueEach)
    if settings.ops_allowed_hosts:  # another Host is a browser sent here by DNS rebinding: 400
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(settings.ops_allowed_hosts))
    if settings.forwarded_allow_ips:  # outermost: everything inside sees the real client
        app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=list(settings.forwarded_allow_ips))
    #: One per process, shared by the ops API and /metrics: a thread and a RabbitMQ connection of its own.
    depths = QueueDepths(current.broker)
    if served:
        auth = OpsAuth.from_settings(settings)
        app.include_router(cron.router(auth))
        app.include_router(session.router(auth))
        app.include_router(ops_api.router(current, auth, depths))
        app.include_router(ops_actions.router(current, auth))
        app.include_router(delivery.router(current, auth))
        app.router.routes.extend(dashboard_routes())
    # GET /metrics: the domain gauges for Prometheus (METRICS_TOKEN if set).
    app.router.routes.append(metrics_route(current, depths))
    return app


async def _answer_error(_request: Request, error: ApiError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if error.status == 401 else None
    return JSONResponse({"error": error.message}, status_code=error.status, headers=headers)


async def _answer_http_error(_request: Request, error: HTTPException) -> JSONResponse:
    """Starlette's own refusals (404, 405, a body that is not JSON) in this API's shape: ``{"error": ...}``."""
    return JSONResponse({"error": str(error.detail)}, status_code=error.status_code, headers=error.headers)


def server_config(current: Runtime, *, host: str, port: int) -> uvicorn.Config:
    """uvicorn's configuration for ``build_app(current)``; tests build their server from it.

    uvicorn's own proxy headers stay off (``uvicorn_config``): the app applies them itself,
    for FORWARDED_ALLOW_IPS only, so in-process tests see what a served request sees.
    """
    return uvicorn_config(build_app(current), host=host, port=port)


def uvicorn_config(app: ASGIApp, *, host: str, port: int) -> uvicorn.Config:
    """uvicorn's production options for ``app``.

    uvicorn (the encode team's, the usual production ASGI server; h11 here, httptools
    when installed) bounds a slow client by its keep-alive timeout between requests; it
    sets no deadline on request headers, which is the TLS-terminating proxy's job
    (nginx's ``client_header_timeout``).
    """
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http="auto",
        ws="none",
        lifespan="off",
        log_config=None,
        # uvicorn believes X-Forwarded-For from 127.0.0.1 by default; ``build_app`` applies
        # the proxies of FORWARDED_ALLOW_IPS itself.
        proxy_headers=False,
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
        timeout_graceful_shutdown=10,
    )


def serve(current: Runtime, *, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> None:
    """Run the app until SIGINT or SIGTERM; in-flight requests finish first."""
    settings = current.settings
    for provider in PAYMENT_PROVIDERS:
        if settings.webhook_secret(provider) is None:
            logger.warning(
                "No %s_WEBHOOK_SECRET nor PAYMENT_WEBHOOK_SECRET: %s webhooks will be refused (401).",
                provider.upper(),
                provider,
            )
    if not settings.resend_webhook_secrets:
        logger.warning("No RESEND_WEBHOOK_SECRET: Resend's delivery events will be refused (401).")
    if settings.cron_secret is None:
        logger.warning("No CRON_SECRET: the cron endpoints, the ops API and the dashboard are not served.")
    ops = ", cron endpoints, the ops API and the dashboard (/ops)"
    served = "webhooks, health" + (ops if settings.cron_secret else "")
    logger.info("Serving %s on http://%s:%d (webhooks at %s).", served, host, port, WEBHOOK_PATH)
    uvicorn.Server(server_config(current, host=host, port=port)).run()
