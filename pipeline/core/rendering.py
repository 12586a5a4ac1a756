"""Email bodies from the Jinja2 templates shipped in ``pipeline/core/templates``.

Each template ``NAME`` has ``NAME.html`` and ``NAME.txt``. Undefined variables are
errors, not blanks: a confirmation email without its order number is worse than
one that fails visibly into the dead-letter archive.

The subject is template text too, and it comes from the host's row: a host that
puts customer text into it hands that customer a template. So every template is
rendered in Jinja2's ``SandboxedEnvironment``, which refuses attribute access
that leads out of the data (``''.__class__.__mro__``…) with a ``SecurityError``.
The sandbox stops code, not cost (a large loop still takes its time): customer
data belongs in ``template_data``, never in the template text. Rendering is a
pure function of the template and its data, so any error it raises fails the
email permanently (``TemplateFailed``): retrying would fail the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Optional

from jinja2 import (
    PackageLoader,
    StrictUndefined,
    Template,
    TemplateError,
    TemplateNotFound,
    select_autoescape,
)
from jinja2.sandbox import SandboxedEnvironment

from pipeline.core.errors import PermanentError, describe


class TemplateFailed(PermanentError):
    """The template is unknown or its data does not fit it."""


@dataclass(frozen=True)
class RenderedEmail:
    subject: str
    html: Optional[str]
    text: Optional[str]


@lru_cache(maxsize=1)
def _environment() -> SandboxedEnvironment:
    """The one environment of every template, the shipped ones and the subjects alike."""
    return SandboxedEnvironment(
        loader=PackageLoader("pipeline.core", "templates"),
        autoescape=select_autoescape(enabled_extensions=("html",), default_for_string=False),
        undefined=StrictUndefined,
        keep_trailing_newline=True,
    )


@lru_cache(maxsize=1024)
def _subject_template(subject: str) -> Template:
    """A templated subject, compiled once: hosts reuse a handful of subjects for every email."""
    return _environment().from_string(subject)


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
    data: object,
) -> RenderedEmail:
    """The email to send: the stored bodies, or the template rendered with ``data``.

    ``data`` is the row's ``template_data``, which the host's SQL may have set to
    any JSON: only an object (or nothing) names variables, and anything else fails
    the email permanently, naming what it got. Without a template it is not read.
    """
    if template is None:
        return RenderedEmail(subject=subject, html=html, text=text)
    context = _variables(data)
    environment = _environment()
    try:
        return RenderedEmail(
            subject=_subject_template(subject).render(context),
            html=environment.get_template(f"{template}.html").render(context),
            text=environment.get_template(f"{template}.txt").render(context),
        )
    except TemplateNotFound:
        raise TemplateFailed(f"unknown template {template!r}; shipped: {', '.join(templates())}") from None
    except TemplateError as exc:  # the sandbox's refusals (SecurityError) among them
        raise TemplateFailed(f"template {template!r}: {exc}") from None
    except Exception as exc:  # the sandbox's limits (OverflowError), and errors of the data's own methods
        raise TemplateFailed(f"template {template!r}: {describe(exc)}") from None


def _variables(data: object) -> dict[str, Any]:
    """The template's variables from ``template_data``: a JSON object, or None for none."""
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise TemplateFailed(f"template_data must be a JSON object of the template's variables, not {_json_kind(data)}")
    return dict(data)


def _json_kind(value: object) -> str:
    """What a decoded JSON value is, in JSON's words."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return f"a {type(value).__name__}"
