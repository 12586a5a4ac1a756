"""Email bodies from the Jinja2 templates shipped in ``actors/templates``.

Each template ``NAME`` has ``NAME.html`` and ``NAME.txt``. Undefined variables are
errors, not blanks: a confirmation email without its order number is worse than
one that fails visibly into the dead-letter archive.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Optional

from jinja2 import (
    Environment,
    PackageLoader,
    StrictUndefined,
    TemplateError,
    TemplateNotFound,
    select_autoescape,
)

from pipeline.core.errors import PermanentError


class TemplateFailed(PermanentError):
    """The template is unknown or its data does not fit it."""


@dataclass(frozen=True)
class RenderedEmail:
    subject: str
    html: Optional[str]
    text: Optional[str]


@lru_cache(maxsize=1)
def _environment() -> Environment:
    return Environment(
        loader=PackageLoader("pipeline.core", "templates"),
        autoescape=select_autoescape(enabled_extensions=("html",), default_for_string=False),
        undefined=StrictUndefined,
        keep_trailing_newline=True,
    )


def templates() -> list[str]:
    """The names of the shipped templates."""
    names = {name.rsplit(".", 1)[0] for name in _environment().list_templates()}
    names = {name for name in names if not name.startswith("_")}
    return sorted(names)


def render(
    *,
    subject: str,
    html: Optional[str],
    text: Optional[str],
    template: Optional[str],
    data: Optional[dict[str, Any]],
) -> RenderedEmail:
    """The email to send: the stored bodies, or the template rendered with ``data``."""
    if template is None:
        return RenderedEmail(subject=subject, html=html, text=text)
    context = dict(data or {})
    environment = _environment()
    try:
        return RenderedEmail(
            subject=environment.from_string(subject).render(context),
            html=environment.get_template(f"{template}.html").render(context),
            text=environment.get_template(f"{template}.txt").render(context),
        )
    except TemplateNotFound:
        raise TemplateFailed(f"unknown template {template!r}; shipped: {', '.join(templates())}") from None
    except TemplateError as exc:
        raise TemplateFailed(f"template {template!r}: {exc}") from None
