"""``GET /healthz`` (the process is up) and ``GET /readyz`` (PostgreSQL and RabbitMQ answer), without auth.

A load balancer or an orchestrator calls them often and anonymously, so they say
as little as can be useful: ``/readyz`` answers 503 ``{"status": "unavailable"}``
without saying which service failed or why (that would map the network for an
attacker); the reason goes to this server's log. Each check has a deadline
(``CHECK_TIMEOUT_SECONDS``): a service that hangs is a service that is not ready.
"""

from __future__ import annotations

import asyncio
import logging

import pika
from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from pipeline.core.errors import describe
from pipeline.web.schemas import HealthBody
from storage.database import ping

logger = logging.getLogger(__name__)

#: A check not done within this many seconds fails.
CHECK_TIMEOUT_SECONDS = 3.0


def router(*, sessions: sessionmaker[Session], broker_url: str) -> APIRouter:
    """The two health routes, checking this database and this broker."""
    routes = APIRouter(tags=["health"])

    @routes.get("/healthz", response_model=HealthBody)
    async def healthz() -> HealthBody:
        """The process is up and serving."""
        return HealthBody(status="ok")

    @routes.get("/readyz", response_model=HealthBody, responses={503: {"model": HealthBody}})
    async def readyz() -> JSONResponse:
        """200 when PostgreSQL and RabbitMQ answer within a few seconds; 503 otherwise, without details."""
        try:
            async with asyncio.timeout(CHECK_TIMEOUT_SECONDS):
                await run_in_threadpool(_check_database, sessions)
                await run_in_threadpool(_check_broker, broker_url)
        except Exception as exc:
            logger.warning("Not ready: %s", describe(exc))
            return JSONResponse({"status": "unavailable"}, status_code=503)
        return JSONResponse({"status": "ready"})

    return routes


def _check_database(sessions: sessionmaker[Session]) -> None:
    with sessions() as session:
        ping(session)


def _check_broker(broker_url: str) -> None:
    """A connection to the first node that takes one (BROKER_URL may list a cluster's nodes)."""
    failure: Exception = RuntimeError("no broker node configured")
    for node in broker_url.split(";"):
        parameters = pika.URLParameters(node.strip())
        parameters.socket_timeout = CHECK_TIMEOUT_SECONDS
        parameters.connection_attempts = 1
        try:
            pika.BlockingConnection(parameters).close()
            return
        except Exception as exc:
            failure = exc
    raise failure
