"""The ops API's actions: replay and purge dead letters, pause and resume sending (admin role only)."""

# No ``from __future__ import annotations``: FastAPI reads these routes' annotations at run time,
# and they name dependencies built in ``router``'s scope.

from fastapi import APIRouter

from pipeline.core.runtime import Runtime
from pipeline.web.auth import OpsAuth
from pipeline.web.ops_api import OPS_PREFIX, REFUSALS


def router(current: Runtime, auth: OpsAuth) -> APIRouter:
    routes = APIRouter(prefix=OPS_PREFIX, tags=["ops actions"], responses=REFUSALS)
    return routes
