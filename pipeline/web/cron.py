"""The shop's cron endpoints, unchanged: ``GET``/``POST /api/cron/<job>``, ``Authorization: Bearer $CRON_SECRET``.

The shop's TypeScript workers did the work inside the request and answered
``{"success": true, "processed": N, "succeeded": N, "failed": N}``; an existing
Vercel Cron or GitHub Actions configuration pointed at ``serve`` keeps working.
Here the work is the same periodic job the ticker runs (``minalesh-workers tick``),
declared once with its endpoint's name (``@periodic(cron=...)``), and a call is
stamped in ``periodic_runs`` as the ticker's runs are; two of the three hand the
work to the workers rather than doing it inline:

* ``process-email-queue``: one email fan-out. ``processed``: emails claimed;
  ``succeeded``: emails whose send message RabbitMQ confirmed (batch members
  counted one by one; the sending itself happens in a worker, and its outcome shows
  in ``email_queue`` and ``/api/ops/emails``); ``failed``: 0, since a message
  RabbitMQ refuses makes the fan-out hand every unsent claim straight back and the
  request fail with 500 (the emails stay due and the next run takes them);
* ``retry-webhooks``: claims due webhook events (at most WEBHOOK_BATCH_SIZE), one
  message each; the numbers count as for emails;
* ``cleanup-reservations``: done inline: ``processed`` = ``succeeded`` = reservations
  expired and their stock given back; ``failed``: 0 (a batch that fails rolls back
  whole and the request answers 500).

Only the admin role may call them, by its bearer token: they are actions. A missing
or wrong token is 401 and nothing runs; so is a dashboard session's cookie, on any
method (a GET carries no CSRF token, and any page of the site can make one).
An error is 500 ``{"success": false, "error": ...}`` without
internals (the log has them). Every call is in the audit log.
"""

# No ``from __future__ import annotations``: FastAPI reads these routes' annotations at run time,
# and they name dependencies built in ``router``'s scope.

import logging
from collections.abc import Callable
from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from pipeline.bootstrap import periodic_jobs
from pipeline.core.declare import PeriodicJob
from pipeline.web.auth import OpsAuth, Principal, audit
from pipeline.web.schemas import CronBody, CronFailure, ErrorBody

logger = logging.getLogger(__name__)

#: Where the shop's cron endpoints live.
CRON_PREFIX = "/api/cron"


def router(auth: OpsAuth) -> APIRouter:
    """One endpoint per periodic job declared with a ``cron`` name, the registry the ticker reads."""
    routes = APIRouter(prefix=CRON_PREFIX, tags=["cron"])
    for job in periodic_jobs():
        if job.cron is None:
            continue
        run = _endpoint(job.cron, job, auth)
        for method in ("GET", "POST"):
            routes.add_api_route(
                f"/{job.cron}",
                run,
                methods=[method],
                response_model=CronBody,
                responses={401: {"model": ErrorBody}, 403: {"model": ErrorBody}, 500: {"model": CronFailure}},
                operation_id=f"cron_{job.cron.replace('-', '_')}_{method.lower()}",
                summary=f"Run {job.cron} now (the shop's cron endpoint)",
            )
    return routes


def _endpoint(name: str, job: PeriodicJob, auth: OpsAuth) -> Callable[..., JSONResponse]:
    def run(principal: Annotated[Principal, Depends(auth.cron)]) -> JSONResponse:
        try:
            done = job.run_scheduled().processed
        except Exception:
            logger.exception("The cron endpoint %s failed.", name)
            audit(principal, f"cron:{name}", success=False)
            return JSONResponse({"success": False, "error": f"{name} failed; see the server's log"}, status_code=500)
        audit(principal, f"cron:{name}", processed=done, succeeded=done, failed=0)
        return JSONResponse({"success": True, "processed": done, "succeeded": done, "failed": 0})

    return run
