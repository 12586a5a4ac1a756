"""The ops API's reads: stats, activity, emails, webhook events, reservations, dead letters.

Every route here needs either role (``pipeline.web.auth``). Lists are keyset
pages (never OFFSET): ``cursor`` is where the previous page stopped, so a deep page
costs what the first does, and rows inserted meanwhile neither repeat nor shift
the pages. The statements are ``storage``'s; this module shapes the answers.
"""

# No ``from __future__ import annotations``: FastAPI reads these routes' annotations at run time,
# and they name dependencies built in ``router``'s scope.

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal, Optional, get_args

from fastapi import APIRouter, Depends, Query
from starlette.concurrency import run_in_threadpool

from pipeline.core.runtime import Runtime
from pipeline.ops import dlq
from pipeline.ops.stats import collect
from pipeline.web import limits  # noqa: F401 - registers the ``rowid`` path convertor the routes use
from pipeline.web.auth import ApiError, OpsAuth, Principal
from pipeline.web.depths import QueueDepths
from pipeline.web.schemas import (
    MAX_PAGE,
    MAX_SEARCH,
    NO_NUL,
    ActivityBody,
    DeadLetterDetail,
    DeadLetterPage,
    EmailItem,
    EmailPage,
    ErrorBody,
    ReservationPage,
    Since,
    StatsBody,
    WebhookDetail,
    WebhookPage,
)
from storage import emails, inventory, webhooks
from storage.clock import utcnow
from storage.dead_letters import LetterFilter
from storage.models import EmailPriority, EmailStatus, WebhookStatus

#: Where the ops API lives.
OPS_PREFIX = "/api/ops"
#: What every route of the ops API may answer besides its own.
REFUSALS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody},
    401: {"model": ErrorBody},
    403: {"model": ErrorBody},
}
#: The longest window of ``/activity``: a day of minutes.
MAX_ACTIVITY_MINUTES = 24 * 60

EmailStatusName = Literal["pending", "queued", "sending", "retrying", "sent", "failed", "suppressed"]
PriorityName = Literal["transactional", "bulk"]
WebhookStatusName = Literal["pending", "processed", "failed"]
ReservationState = Literal["active", "expired", "released", "committed"]
Limit = Annotated[int, Query(ge=1, le=MAX_PAGE)]
#: Where the previous page stopped (its ``next_cursor``); empty or absent: the first page.
Cursor = Annotated[Optional[str], Query(pattern=r"^[0-9]{0,18}$")]
LetterCursor = Annotated[Optional[str], Query(pattern=r"^([0-9]{1,17}\.[0-9]{1,18})?$")]
Name = Annotated[Optional[str], Query(max_length=200, pattern=NO_NUL)]
RecipientPrefix = Annotated[
    Optional[str], Query(max_length=MAX_SEARCH, pattern=NO_NUL, description="Recipient prefix, any case")
]
LetterSearch = Annotated[
    Optional[str],
    Query(
        max_length=MAX_SEARCH,
        pattern=NO_NUL,
        description="A recipient's start (any case), an email, batch or webhook event id, an event or order id, "
        "a message id, or text of the error",
    ),
]
EventOrOrder = Annotated[Optional[str], Query(max_length=200, pattern=NO_NUL, description="An event id or an order id")]
SinceQuery = Annotated[Optional[Since], Query(description="30m, 2h, 7d back from now, or an ISO 8601 time")]


def router(current: Runtime, auth: OpsAuth, depths: QueueDepths) -> APIRouter:
    routes = APIRouter(prefix=OPS_PREFIX, tags=["ops"], responses=REFUSALS)
    Reader = Annotated[Principal, Depends(auth.reader)]
    max_retries = current.settings.email_max_retries

    @routes.get("/stats", response_model=StatsBody)
    async def stats(_principal: Reader) -> dict[str, Any]:
        """Everything ``stats --json`` has, RabbitMQ's depths of every queue, and the oldest email waiting."""
        figures = await run_in_threadpool(_figures, current)
        figures["queues"] = await run_in_threadpool(depths.depths)
        return figures

    @routes.get("/activity", response_model=ActivityBody)
    def activity(_principal: Reader, minutes: Annotated[int, Query(ge=1, le=MAX_ACTIVITY_MINUTES)] = 60) -> Any:
        """Emails sent and emails given up (status ``failed``, by when) per minute, oldest minute first."""
        now = utcnow().replace(second=0, microsecond=0)
        start = now - timedelta(minutes=minutes - 1)
        with current.sessions() as session:
            counts = emails.activity(session, since=start)
        by_minute = {at.astimezone(UTC): figures for at, figures in counts.items()}
        window = [start + timedelta(minutes=i) for i in range(minutes)]
        zero = {"sent": 0, "failed": 0}
        return {"minutes": [{"at": at, **by_minute.get(at, zero)} for at in window]}

    @routes.get("/emails", response_model=EmailPage)
    def list_emails(
        _principal: Reader,
        q: RecipientPrefix = None,
        status: Optional[EmailStatusName] = None,
        priority: Optional[PriorityName] = None,
        limit: Limit = 50,
        cursor: Cursor = None,
    ) -> Any:
        """Emails newest first: search by recipient (a case-insensitive prefix), filter by status and priority."""
        with current.sessions() as session:
            rows = emails.page(
                session, recipient_prefix=q, status=status, priority=priority, before_id=_id_cursor(cursor), limit=limit
            )
        return _id_page([_email(row, max_retries) for row in rows], limit)

    @routes.get("/emails/{email_id:rowid}", response_model=EmailItem, responses={404: {"model": ErrorBody}})
    def one_email(_principal: Reader, email_id: int) -> Any:
        """One email (without its bodies)."""
        with current.sessions() as session:
            rows = emails.page(session, before_id=email_id + 1, limit=1) if fits_bigint(email_id) else []
        if not rows or rows[0]["id"] != email_id:
            raise ApiError(404, f"no email {email_id}")
        return _email(rows[0], max_retries)

    @routes.get("/webhooks", response_model=WebhookPage)
    def list_webhooks(
        _principal: Reader,
        status: Optional[WebhookStatusName] = None,
        provider: Name = None,
        q: EventOrOrder = None,
        limit: Limit = 50,
        cursor: Cursor = None,
    ) -> Any:
        """Payment webhook events newest first."""
        with current.sessions() as session:
            rows = webhooks.page(
                session, status=status, provider=provider, search=q, before_id=_id_cursor(cursor), limit=limit
            )
            return _id_page([_webhook(row) for row in rows], limit)

    @routes.get("/webhooks/{event_row_id:rowid}", response_model=WebhookDetail, responses={404: {"model": ErrorBody}})
    def one_webhook(_principal: Reader, event_row_id: int) -> Any:
        """One webhook event with its payload."""
        with current.sessions() as session:
            row = webhooks.get(session, event_row_id) if fits_bigint(event_row_id) else None
            if row is None:
                raise ApiError(404, f"no webhook event {event_row_id}")
            return {**_webhook(row), "payload": row.payload}

    @routes.get("/reservations", response_model=ReservationPage)
    def list_reservations(
        _principal: Reader, state: Optional[ReservationState] = None, limit: Limit = 50, cursor: Cursor = None
    ) -> Any:
        """Reservations newest first; ``expired`` means past its time and not given back yet."""
        now = utcnow()
        with current.sessions() as session:
            rows = inventory.reservations_page(session, state=state, now=now, before_id=_id_cursor(cursor), limit=limit)
            return _id_page([_reservation(row, now) for row in rows], limit)

    @routes.get("/dead-letters", response_model=DeadLetterPage)
    def list_dead_letters(
        _principal: Reader,
        queue: Name = None,
        actor: Name = None,
        since: SinceQuery = None,
        unreplayed: bool = False,
        q: LetterSearch = None,
        limit: Limit = 50,
        cursor: LetterCursor = None,
    ) -> Any:
        """Dead letters newest first, with ``dlq list``'s filters and search (``q``)."""
        chosen = LetterFilter(
            queue=queue, actor=actor, since=parse_since(since), unreplayed=unreplayed, q=q, items=dlq.ITEM_ACTORS
        )
        items, total = dlq.list_letters(current.sessions, chosen, limit=limit, before=_letter_cursor(cursor))
        return {"items": items, "total": total, "next_cursor": _next(items, limit, _letter_key)}

    @routes.get(
        "/dead-letters/{letter_id:rowid}", response_model=DeadLetterDetail, responses={404: {"model": ErrorBody}}
    )
    def one_dead_letter(_principal: Reader, letter_id: int) -> Any:
        """``dlq show``: the traceback, the body, and the email's or webhook event's state now (``item``)."""
        details = dlq.show(current.broker, current.sessions, str(letter_id)) if fits_bigint(letter_id) else None
        if details is None:
            raise ApiError(404, f"no dead letter {letter_id}")
        return details

    return routes


def _figures(current: Runtime) -> dict[str, Any]:
    figures = collect(current)
    now = utcnow()
    with current.sessions() as session:
        oldest = emails.oldest_due(session, now=now)
    figures["oldest_due_email"] = (
        {"id": oldest[0], "age_seconds": round((now - oldest[1]).total_seconds(), 3)} if oldest else None
    )
    return figures


def parse_since(value: Optional[Since]) -> Optional[datetime]:
    """A ``since`` filter as a time: a duration back from now, or the time given (UTC unless it says)."""
    if value is None:
        return None
    if isinstance(value, datetime):
        try:
            return value.astimezone(UTC) if value.tzinfo is not None else value.replace(tzinfo=UTC)
        except OverflowError:  # an offset past the calendar's ends: nothing died then
            return datetime.max.replace(tzinfo=UTC) if value.year > 1 else datetime.min.replace(tzinfo=UTC)
    return utcnow() - dlq.parse_duration(value)


def fits_bigint(value: int) -> bool:
    """Whether ``value`` can be a row id (a positive PostgreSQL bigint); others match no row."""
    return 0 < value < 2**63


def _id_cursor(cursor: Optional[str]) -> Optional[int]:
    """The id a page starts below; the route's pattern made sure it is digits (18 at most: a bigint)."""
    return int(cursor) if cursor else None


#: Dead-letter cursors count microseconds from here (digits only: nothing to escape in a URL).
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _letter_key(item: dict[str, Any]) -> str:
    """``<dead_at in µs since the epoch>.<id>``: the dead letters' order is (dead_at, id)."""
    micros = (datetime.fromisoformat(item["dead_at"]) - _EPOCH) // timedelta(microseconds=1)
    return f"{micros}.{item['id']}"


def _letter_cursor(cursor: Optional[str]) -> Optional[tuple[datetime, int]]:
    if not cursor:
        return None
    micros, _, number = cursor.partition(".")
    return _EPOCH + timedelta(microseconds=int(micros)), int(number)


def _id_page(items: list[dict[str, Any]], limit: int) -> dict[str, Any]:
    """A page of rows listed by id, newest first; its cursor is the last id shown."""
    return {"items": items, "next_cursor": _next(items, limit, lambda item: str(item["id"]))}


def _next(items: list[dict[str, Any]], limit: int, key: Any) -> Optional[str]:
    """The cursor of the next page: where this one stopped, when it was full."""
    return key(items[-1]) if len(items) == limit else None


def _email(row: dict[str, Any], max_retries: int) -> dict[str, Any]:
    item = {name: value for name, value in row.items() if name not in ("recipient", "scheduled_at")}
    return {**item, "to": row["recipient"], "scheduled_for": row["scheduled_at"], "max_retries": max_retries}


def _webhook(row: Any) -> dict[str, Any]:
    names = ("id", "provider", "event_id", "type", "order_id", "status", "archived", "retry_count", "attempts")
    times = ("next_retry_at", "last_error", "received_at", "processed_at")
    return {name: getattr(row, name) for name in (*names, *times)}


def _reservation(row: Any, now: datetime) -> dict[str, Any]:
    names = ("id", "product_id", "order_id", "quantity", "status", "expires_at", "created_at")
    return {
        **{name: getattr(row, name) for name in (*names, "released_at", "committed_at")},
        "state": inventory.state_of(row, now),
    }


# Statuses the API filters by, checked against the models' at import: a new status needs a new filter.
assert set(get_args(EmailStatusName)) == {s.value for s in EmailStatus}
assert set(get_args(PriorityName)) == {p.value for p in EmailPriority}
assert set(get_args(WebhookStatusName)) == {s.value for s in WebhookStatus}
assert set(get_args(ReservationState)) == set(inventory.RESERVATION_STATES)
