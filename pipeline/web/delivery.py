"""The ops API's delivery routes: an email's delivery events, and the suppression list.

Reading needs either role; adding and removing a suppression need the admin role,
and each change is an audit line (``pipeline.ops.suppressions``). The rates are in
``/api/ops/stats`` (``delivery``), with the rest of the figures.
"""

# No ``from __future__ import annotations``: FastAPI reads these routes' annotations at run time,
# and they name dependencies built in ``router``'s scope.

from typing import Annotated, Any, Optional

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, Field

from pipeline.core.runtime import Runtime
from pipeline.ops import suppressions
from pipeline.web.auth import ApiError, OpsAuth, Principal
from pipeline.web.ops_api import OPS_PREFIX, REFUSALS, fits_bigint
from pipeline.web.schemas import ErrorBody
from storage import delivery_events
from storage import suppressions as suppression_list

#: The longest address a path or body may name.
Address = Annotated[
    str,
    Field(min_length=3, max_length=suppression_list.MAX_ADDRESS_LENGTH, pattern=suppression_list.ADDRESS_PATTERN),
]


class SuppressionItem(BaseModel):
    address: str
    reason: str
    email_id: Optional[int]
    event_id: Optional[int]
    created_by: str
    created_at: str


class SuppressionPage(BaseModel):
    items: list[SuppressionItem]
    next_cursor: Optional[str]


class SuppressionRequest(BaseModel):
    address: Address
    reason: Optional[Annotated[str, Field(max_length=suppression_list.MAX_REASON_LENGTH)]] = None


class SuppressionChange(BaseModel):
    address: str
    changed: bool


class EmailEventItem(BaseModel):
    id: int
    type: str
    occurred_at: Optional[Any]
    received_at: Any
    bounce: Optional[Any] = None


class EmailEvents(BaseModel):
    email_id: int
    items: list[EmailEventItem]


def router(current: Runtime, auth: OpsAuth) -> APIRouter:
    routes = APIRouter(prefix=OPS_PREFIX, tags=["delivery"], responses=REFUSALS)
    Reader = Annotated[Principal, Depends(auth.reader)]
    Admin = Annotated[Principal, Depends(auth.admin)]

    @routes.get("/emails/{email_id:rowid}/events", response_model=EmailEvents, responses={404: {"model": ErrorBody}})
    def email_events(_principal: Reader, email_id: int) -> Any:
        """The email's delivery events, in the order they happened."""
        if not fits_bigint(email_id):
            return {"email_id": email_id, "items": []}
        with current.sessions() as session:
            return {"email_id": email_id, "items": delivery_events.events_of(session, email_id)}

    @routes.get("/suppressions", response_model=SuppressionPage)
    def list_suppressions(
        _principal: Reader,
        prefix: Annotated[Optional[str], Query(max_length=suppression_list.MAX_ADDRESS_LENGTH)] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 100,
        cursor: Annotated[Optional[str], Query(max_length=suppression_list.MAX_ADDRESS_LENGTH)] = None,
    ) -> Any:
        """Suppressed addresses by address; ``cursor`` is the last address of the previous page."""
        items = suppressions.listing(current.sessions, prefix=_clean(prefix), after=cursor, limit=limit)
        return {"items": items, "next_cursor": items[-1]["address"] if len(items) == limit else None}

    @routes.post("/suppressions", response_model=SuppressionChange, responses={400: {"model": ErrorBody}})
    def add_suppression(principal: Admin, request: SuppressionRequest) -> Any:
        """Suppress an address: no email goes to it until it is removed."""
        try:
            added = suppressions.add(current.sessions, request.address, reason=request.reason, who=principal.role.value)
        except suppressions.InvalidAddress as exc:
            raise ApiError(400, str(exc)) from None
        return {"address": suppression_list.normalize(request.address), "changed": added}

    @routes.delete("/suppressions/{address}", response_model=SuppressionChange, responses={404: {"model": ErrorBody}})
    def remove_suppression(principal: Admin, address: str) -> Any:
        """Lift a suppression: the next email to the address is sent."""
        if len(address) > suppression_list.MAX_ADDRESS_LENGTH:
            raise ApiError(404, "no such suppression")
        try:
            removed = suppressions.remove(current.sessions, address, who=principal.role.value)
        except suppressions.InvalidAddress:
            raise ApiError(404, "no such suppression") from None
        if not removed:
            raise ApiError(404, "no such suppression")
        return {"address": suppression_list.normalize(address), "changed": True}

    return routes


def _clean(prefix: Optional[str]) -> Optional[str]:
    """A prefix without NUL (PostgreSQL's text has none)."""
    return prefix.replace("\x00", "") if prefix else prefix
