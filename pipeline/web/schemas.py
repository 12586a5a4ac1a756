"""The bodies of the HTTP routes, as pydantic models: they validate requests and make the OpenAPI document.

Times are ISO 8601 in UTC. List routes answer ``{"items": [...], "next_cursor": ...}``;
``next_cursor`` is opaque (pass it back as ``cursor``) and null on the last page.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, StrictInt, StringConstraints

#: The most items one list page holds.
MAX_PAGE = 500
#: Replay and purge take at most this many ids in one request.
MAX_IDS = 1000
#: The longest search text (an email address's longest).
MAX_SEARCH = 320
#: Free text must not hold NUL, which PostgreSQL refuses in text (400 here rather than 500 there).
NO_NUL = r"^[^\x00]*$"


#: ``dlq list --since``: a duration back from now (``30m``, ``2h``, ``7d``) or an ISO 8601 time (UTC unless
#: it says otherwise). Typed, so a time that is no time is refused by validation (422), as any bad input.
Since = Union[
    Annotated[datetime, BeforeValidator(lambda value: _not_a_number(value))],
    Annotated[str, StringConstraints(pattern=r"^[0-9]{1,5}(\.[0-9]{1,3})?[dhm]$")],
]


def _not_a_number(value: Any) -> Any:
    """pydantic would read ``1700000000`` as a unix time; the document promises ISO 8601 only."""
    if isinstance(value, (int, float)) or (isinstance(value, str) and value.strip().replace(".", "", 1).isdigit()):
        raise ValueError("expected a duration (30m, 2h, 7d) or an ISO 8601 time")
    return value


class Strict(BaseModel):
    """A request body: unknown fields are refused, not silently ignored."""

    model_config = ConfigDict(extra="forbid")


class ErrorBody(BaseModel):
    error: str


class HealthBody(BaseModel):
    status: Literal["ok", "ready", "unavailable"]


class CronBody(BaseModel):
    """The shop's cron answer (see the README: what each number counts per endpoint)."""

    success: bool
    processed: int
    succeeded: int
    failed: int


class CronFailure(BaseModel):
    success: bool
    error: str


# --- session ------------------------------------------------------------------------------------


class SignIn(Strict):
    token: str = Field(max_length=1024, pattern=NO_NUL)


class SessionBody(BaseModel):
    role: Literal["admin", "read"]
    #: The session's CSRF token (null for a bearer caller, which needs none).
    csrf_token: Optional[str]


class SignedOut(BaseModel):
    signed_out: bool


# --- reads --------------------------------------------------------------------------------------


class QueueDepth(BaseModel):
    name: str
    #: Messages ready on the queue.
    ready: int
    #: On its delay queue (``<name>.DQ``): retries and scheduled messages waiting their time.
    delayed: int
    #: On its dead-letter queue (``<name>.XQ``), not yet moved to ``dead_letters`` by the archiver.
    dead: int


class OldestDue(BaseModel):
    id: int
    age_seconds: float


class DeadLetterGroup(BaseModel):
    """The dead letters of one queue and actor (``actor`` null: bodies kept raw)."""

    queue: str
    actor: Optional[str]
    count: int
    unreplayed: int
    oldest: Optional[datetime]
    newest: Optional[datetime]


class StatsBody(BaseModel):
    """Everything ``minalesh-workers stats --json`` has, plus the broker's depths."""

    model_config = ConfigDict(extra="allow")

    emails: dict[str, int]
    emails_by_priority: dict[str, dict[str, int]]
    dead_letters: int
    dead_letters_by_queue: dict[str, int]
    dead_letter_groups: list[DeadLetterGroup]
    reservations: dict[str, int]
    orders: dict[str, Any]
    webhooks: dict[str, Any]
    sending: dict[str, Any]
    #: Bounce and complaint rates (24h, 7d), unmatched events, suppressions.
    delivery: dict[str, Any]
    #: Null when RabbitMQ could not be asked (the rest is still answered).
    queues: Optional[list[QueueDepth]]
    oldest_due_email: Optional[OldestDue]


class MinuteBody(BaseModel):
    at: datetime
    sent: int
    failed: int


class ActivityBody(BaseModel):
    minutes: list[MinuteBody]


class EmailItem(BaseModel):
    id: int
    to: str
    subject: str
    status: str
    priority: str
    retry_count: int
    attempts: int
    max_retries: int
    scheduled_for: Optional[datetime]
    next_attempt_at: Optional[datetime]
    created_at: Optional[datetime]
    sent_at: Optional[datetime]
    updated_at: Optional[datetime]
    last_error: Optional[str]
    template: Optional[str]
    provider_message_id: Optional[str]
    batch_id: Optional[int]
    #: What Resend's delivery events said (``delivered``, ``bounced``…); null: none yet, or sent by SMTP.
    delivery_status: Optional[str] = None
    #: The provider that took it (``resend``, ``smtp``, ``outbox``); null: not sent (or sent before it was stored).
    provider: Optional[str] = None
    #: A provider an attempt may have reached with no clear answer: only it may be asked again.
    maybe_sent_by: Optional[str] = None


class EmailPage(BaseModel):
    items: list[EmailItem]
    next_cursor: Optional[str]


class WebhookItem(BaseModel):
    id: int
    provider: str
    event_id: str
    type: str
    order_id: Optional[str]
    status: str
    archived: bool
    retry_count: int
    attempts: int
    next_retry_at: Optional[datetime]
    last_error: Optional[str]
    received_at: Optional[datetime]
    processed_at: Optional[datetime]


class WebhookDetail(WebhookItem):
    payload: Any


class WebhookPage(BaseModel):
    items: list[WebhookItem]
    next_cursor: Optional[str]


class ReservationItem(BaseModel):
    id: int
    product_id: int
    order_id: Optional[str]
    quantity: int
    status: str
    #: ``active``, ``expired`` (active, past ``expires_at``, not released yet), ``released`` or ``committed``.
    state: str
    expires_at: datetime
    created_at: Optional[datetime]
    released_at: Optional[datetime]
    committed_at: Optional[datetime]


class ReservationPage(BaseModel):
    items: list[ReservationItem]
    next_cursor: Optional[str]


class DeadLetterItem(BaseModel):
    """One dead letter as ``dlq list --json`` gives it."""

    id: int
    queue: str
    actor: Optional[str]
    message_id: str
    args: Optional[list[Any]]
    kwargs: Optional[dict[str, Any]]
    error: str
    retries: int
    dead_at: Optional[str]
    archived_at: Optional[str]
    replayed_at: Optional[str]
    replay_of: Optional[str]
    raw: bool


class DeadLetterDetail(DeadLetterItem):
    """``dlq show --json``: with the traceback, the body kept raw and the item's state now."""

    options: dict[str, Any]
    traceback: Optional[str]
    raw_body: Optional[str]
    alerted_at: Optional[str]
    item: Optional[dict[str, Any]]
    item_note: str


class DeadLetterPage(BaseModel):
    items: list[DeadLetterItem]
    next_cursor: Optional[str]
    #: How many dead letters match the filters in all.
    total: int


# --- actions ------------------------------------------------------------------------------------


class LetterFilter(Strict):
    """The filters of ``dlq list``: each given one must match."""

    queue: Optional[str] = Field(default=None, max_length=200, pattern=NO_NUL)
    actor: Optional[str] = Field(default=None, max_length=200, pattern=NO_NUL)
    since: Optional[Since] = None
    unreplayed: StrictBool = False
    #: ``dlq list -q``: a recipient's start, an item id, a message id, or text of the error.
    q: Optional[str] = Field(default=None, max_length=MAX_SEARCH, pattern=NO_NUL)


class ByIds(Strict):
    """Some dead letters, by id."""

    ids: list[StrictInt] = Field(max_length=MAX_IDS)
    dry_run: StrictBool = False
    #: Replay only: also those that may deliver their email twice (``dlq replay --accept-duplicate-risk``).
    accept_duplicate_risk: StrictBool = False


class ByFilter(Strict):
    """Every dead letter matching the filter."""

    filter: LetterFilter
    dry_run: StrictBool = False
    #: Replay only: also those that may deliver their email twice (``dlq replay --accept-duplicate-risk``).
    accept_duplicate_risk: StrictBool = False


#: A replay's or a purge's dead letters: ``{"ids": [...]}`` or ``{"filter": {...}}``, never both.
Selection = Union[ByIds, ByFilter]


class ReplayOutcomeBody(BaseModel):
    id: int
    status: str
    detail: str
    message_id: Optional[str]
    replay_of: Optional[str]
    warning: Optional[str]


class ReplayBody(BaseModel):
    matched: int
    replayed: int
    dry_run: bool
    #: The dead letters replayed (or, dry, that would be).
    ids: list[int]
    outcomes: list[ReplayOutcomeBody]


class PurgeBody(BaseModel):
    matched: int
    deleted: int
    dry_run: bool


class PauseRequest(Strict):
    scope: Literal["all", "bulk"] = "all"
    #: Ends by itself after this many minutes; without it, a pause lasts until a resume.
    minutes: Optional[float] = Field(default=None, gt=0, le=60 * 24 * 365)
    reason: Optional[str] = Field(default=None, max_length=500, pattern=NO_NUL)


class ResumeRequest(Strict):
    scope: Literal["all", "bulk"] = "all"
