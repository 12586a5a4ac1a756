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
    """The ``to`` addresses of a parsed body, tolerant of bad input because it also serves the recordings."""
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
