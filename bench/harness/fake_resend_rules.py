"""What the fake Resend accepts: error shapes, messages and request validation.

Why a separate module: these rules are pure functions of a request (no state,
no lock, no HTTP), so keeping them apart from the server keeps
``fake_resend.py`` about state and scripting, and lets the single-send and
batch endpoints share one definition of a valid email.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

MAX_IDEMPOTENCY_KEY_LENGTH = 256
MAX_BATCH_SIZE = 100
BATCH_MODES = ("strict", "permissive")
NOT_IN_BATCH = ("attachments", "scheduled_at")
"""Fields a single send accepts but a batch item may not carry."""

MISSING_API_KEY_MESSAGE = (
    "Missing API key in the authorization header. Include the following "
    "header Authorization: Bearer YOUR_API_KEY in the request."
)
INVALID_TO_MESSAGE = (
    "Invalid `to` field. The email address needs to follow the "
    "`email@example.com` or `Name <email@example.com>` format."
)

_ANGLE_ADDRESS = re.compile(r"<([^<>]+)>")


def normalize_address(value: str) -> str:
    """Reduce ``"Name <A@x.org>"`` to ``"a@x.org"`` so matching ignores display names and case."""
    match = _ANGLE_ADDRESS.search(value)
    address = match.group(1) if match else value
    return address.strip().lower()


def recipients_of(body: Any) -> list[str]:
    """The ``to`` addresses of a parsed body, tolerant of bad input because it also serves the recordings.

    A batch body (a list of emails) names the recipients of all its items.
    """
    if isinstance(body, list):
        return [address for item in body if isinstance(item, dict) for address in recipients_of(item)]
    if not isinstance(body, dict):
        return []
    to = body.get("to")
    if isinstance(to, str):
        return [to]
    if isinstance(to, list):
        return [item for item in to if isinstance(item, str)]
    return []


@dataclass
class Answer:
    """Status, JSON body and extra headers of one response."""

    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


class ApiError(Exception):
    """A non-success answer; raised by the checks so each one stays a short function."""

    def __init__(
        self,
        status: int,
        name: str,
        message: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(f"{status} {name}: {message}")
        self.status = status
        self.name = name
        self.message = message
        self.headers = headers or {}

    def answer(self) -> Answer:
        """Render as Resend does: exactly statusCode, name and message."""
        body = {"statusCode": self.status, "name": self.name, "message": self.message}
        return Answer(self.status, body, dict(self.headers))


def method_not_allowed() -> ApiError:
    """405 for a known path with the wrong verb."""
    return ApiError(405, "method_not_allowed", "Method is not allowed for the requested path.")


def idempotency_key(headers: dict[str, str]) -> str | None:
    """The ``Idempotency-Key`` header, validated as Resend does (1-256 characters)."""
    key = headers.get("idempotency-key")
    if key is None:
        return None
    if not 1 <= len(key) <= MAX_IDEMPOTENCY_KEY_LENGTH:
        raise ApiError(
            400,
            "validation_error",
            f"Idempotency key must be between 1-{MAX_IDEMPOTENCY_KEY_LENGTH} characters.",
        )
    return key


def validated_send(body: Any, is_json: bool) -> dict[str, Any]:
    """Check a ``POST /emails`` body; return it with ``to`` normalised to a list."""
    if not is_json or not isinstance(body, dict):
        raise ApiError(400, "validation_error", "Invalid JSON body: expected a JSON object.")
    return validated_email(body)


def validated_email(body: dict[str, Any]) -> dict[str, Any]:
    """Check one email object; return it with ``to`` normalised to a list."""
    for name in ("from", "to", "subject"):
        if _blank(body.get(name)):
            raise _missing(f"`{name}`")
    if _blank(body.get("html")) and _blank(body.get("text")):
        raise _missing("`html` or `text`")
    for name in ("from", "subject"):
        _require_string(body, name)
    for name in ("html", "text"):
        if body.get(name) is not None:
            _require_string(body, name)
    return {**body, "to": _validated_to(body["to"])}


def batch_mode(headers: dict[str, str]) -> str:
    """The ``x-batch-validation`` header: ``strict`` (the default) or ``permissive``."""
    mode = headers.get("x-batch-validation", "strict").strip().lower()
    if mode not in BATCH_MODES:
        raise ApiError(
            422,
            "validation_error",
            "Invalid `x-batch-validation` header: expected `strict` or `permissive`.",
        )
    return mode


@dataclass
class BatchPlan:
    """A batch request sorted into the emails to deliver and the ones refused.

    Why a plan rather than a yes/no: in permissive mode the answer lists the
    delivered ids in request order and each refused email by its index in
    the request, so both must be kept with their index until answering.
    """

    mode: str
    items: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    """(index in the request, validated email) of each email still to deliver."""
    errors: list[dict[str, Any]] = field(default_factory=list)
    """``{"index", "message"}`` of each email refused in permissive mode."""

    def reject(self, index: int, error: ApiError) -> None:
        """Refuse one email: strict mode refuses the whole batch, naming it; permissive drops only it."""
        if self.mode == "strict":
            raise ApiError(error.status, error.name, f"emails[{index}]: {error.message}")
        self.items = [(i, send) for i, send in self.items if i != index]
        self.errors.append({"index": index, "message": error.message})
        self.errors.sort(key=lambda entry: entry["index"])


def plan_batch(body: Any, is_json: bool, mode: str) -> BatchPlan:
    """Check a ``POST /emails/batch`` body: a JSON array of 1 to 100 emails, each valid on its own."""
    if not is_json or not isinstance(body, list):
        raise ApiError(400, "validation_error", "Invalid JSON body: expected a JSON array of emails.")
    if not 1 <= len(body) <= MAX_BATCH_SIZE:
        raise ApiError(
            422,
            "validation_error",
            f"A batch must contain between 1 and {MAX_BATCH_SIZE} emails; this one has {len(body)}.",
        )
    plan = BatchPlan(mode)
    for index, item in enumerate(body):
        try:
            plan.items.append((index, _validated_batch_email(item)))
        except ApiError as error:
            plan.reject(index, error)
    return plan


def _validated_batch_email(item: Any) -> dict[str, Any]:
    """One batch item: an email object without the fields batches do not support."""
    if not isinstance(item, dict):
        raise ApiError(422, "validation_error", "Invalid email: expected a JSON object.")
    for name in NOT_IN_BATCH:
        if item.get(name) is not None:
            raise ApiError(422, "validation_error", f"The `{name}` field is not supported in batch emails.")
    return validated_email(item)


def _validated_to(value: Any) -> list[str]:
    """``to`` is one address or a list of them, each containing "@"."""
    to = [value] if isinstance(value, str) else value
    if not isinstance(to, list) or not all(isinstance(a, str) and "@" in a for a in to):
        raise ApiError(422, "validation_error", INVALID_TO_MESSAGE)
    return list(to)


def _require_string(body: dict[str, Any], name: str) -> None:
    """422 ``validation_error`` when a field has the wrong type."""
    if not isinstance(body[name], str):
        raise ApiError(422, "validation_error", f"Invalid `{name}` field: expected a string.")


def _blank(value: Any) -> bool:
    """Absent, null, empty string and empty list all count as missing."""
    return value is None or value == "" or value == []


def _missing(what: str) -> ApiError:
    """422 ``missing_required_field`` with Resend's wording."""
    return ApiError(422, "missing_required_field", f"Missing {what} field.")
