"""Email bodies from the Jinja2 templates shipped in ``pipeline/core/templates``.

Each template ``NAME`` has ``NAME.html`` and ``NAME.txt``. Undefined variables are
errors, not blanks: a confirmation email without its order number is worse than
one that fails visibly into the dead-letter archive.

The subject is template text too, and it comes from the host's row: a host that
puts customer text into it hands that customer a template. So every template is
rendered in Jinja2's ``SandboxedEnvironment``, which refuses attribute access
that leads out of the data (``''.__class__.__mro__``…) with a ``SecurityError``.

The sandbox stops code, not cost, so ``BoundedSandbox`` bounds what one render
may build: ``{{ "A" * 20000000 }}`` rendered 20 MB and sent it, and a larger
factor took the worker down with every email it held. No value may grow past
EMAIL_MAX_BODY_BYTES characters, checked *before* it is built where an operator
or call multiplies (``*``, ``**``, ``%`` and ``format`` widths, ``center``,
``join``, ``replace``…) and after it is built everywhere else (every call,
filter, ``namespace`` assignment and macro argument, so no doubling loop gets
far); the output is streamed and cut at EMAIL_MAX_SUBJECT_BYTES for the subject
and EMAIL_MAX_BODY_BYTES for each body. A large loop still takes its time
(``range`` stops at 100,000): customer data belongs in ``template_data``, never
in the template text. Rendering is a pure function of the template and its data,
so any error it raises fails the email permanently (``TemplateFailed``), its
neighbours in a batch untouched: retrying would fail the same way.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable
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
from jinja2.runtime import Context
from jinja2.sandbox import SandboxedEnvironment
from jinja2.utils import Namespace

from pipeline.core.errors import PermanentError, describe
from pipeline.core.settings import DEFAULT_EMAIL_MAX_BODY_BYTES, DEFAULT_EMAIL_MAX_SUBJECT_BYTES

#: Numbers in a format string (widths, precisions): one larger than the limit would build a value that large.
_NUMBERS = re.compile(r"[0-9]+")


class TemplateFailed(PermanentError):
    """The template is unknown or its data does not fit it."""


class RenderTooLarge(TemplateFailed):
    """One render would build more than its limit allows."""


@dataclass(frozen=True)
class RenderedEmail:
    subject: str
    html: Optional[str]
    text: Optional[str]


class BoundedSandbox(SandboxedEnvironment):
    """The sandbox, with no value of one render larger than ``max_chars`` characters (see the module's doc)."""

    intercepted_binops = frozenset({"*", "**", "%", "+"})

    def __init__(self, *, max_chars: int, **options: Any) -> None:
        super().__init__(**options)
        self.max_chars = max_chars
        self.filters = {name: self._bounded(function) for name, function in self.filters.items()}
        self.globals["namespace"] = _bounded_namespace(self)

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            for sequence, times in ((left, right), (right, left)):
                if _is_sized(sequence) and isinstance(times, int):
                    self.check(len(sequence) * times, "a repetition")
        elif operator == "**" and isinstance(left, int) and isinstance(right, int) and abs(left) > 1:
            self.check(int(right * max(abs(left), 2).bit_length() * 0.302), "a power")  # its decimal digits
        elif operator == "%" and isinstance(left, str):
            self.check_format(left)
        return self.checked(super().call_binop(context, operator, left, right))

    def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: B902 - Jinja's
        __self.check_arguments(__obj, args, kwargs)
        return __self.checked(super().call(__context, __obj, *args, **kwargs))

    def wrap_str_format(self, value: Any) -> Optional[Callable[..., str]]:
        """``str.format`` and ``format_map``, as Jinja sandboxes them, with the string's widths checked first."""
        wrapped = super().wrap_str_format(value)
        if wrapped is not None:
            self.check_format(value.__self__)
        return wrapped

    def check(self, size: int, what: str) -> None:
        if size > self.max_chars:
            raise RenderTooLarge(f"{what} would be too large: {size} characters, the limit is {self.max_chars}")

    def checked(self, value: Any) -> Any:
        if _is_sized(value):
            self.check(len(value), "a value")
        return value

    def check_format(self, text: str) -> None:
        """A width or precision past the limit would pad a value that far."""
        for number in _NUMBERS.findall(text):
            self.check(int(number) if len(number) <= 12 else self.max_chars + 1, "a formatted value")

    def check_arguments(self, function: Any, args: Iterable[Any], kwargs: dict[str, Any]) -> None:
        """Arguments too large already, widths past the limit, and ``join``'s and ``replace``'s products."""
        given = [*args, *kwargs.values()]
        for value in given:
            if isinstance(value, int) and not isinstance(value, bool):
                self.check(value, "a width or count")
            self.checked(value)
        name = getattr(function, "__name__", "")
        owner = getattr(function, "__self__", None)  # ``"x".join(...)``: the separator is the method's string
        strings = [value for value in [owner, *given] if isinstance(value, str)]
        if name in ("join", "do_join") and strings:
            items = [value for value in given if hasattr(value, "__len__") and not isinstance(value, str)]
            self.check(max(map(len, strings)) * max(map(len, items), default=0), "a join")
        if name in ("replace", "do_replace") and strings:
            self.check(max(map(len, strings)) ** 2 + len(strings[0]), "a replacement")

    def _bounded(self, function: Callable[..., Any]) -> Callable[..., Any]:
        """A filter with its arguments and result checked (Jinja calls filters directly, not through ``call``)."""

        @functools.wraps(function)
        def bounded(*args: Any, **kwargs: Any) -> Any:
            self.check_arguments(function, args, kwargs)
            return self.checked(function(*args, **kwargs))

        return bounded


def _bounded_namespace(environment: BoundedSandbox) -> type[Namespace]:
    class BoundedNamespace(Namespace):
        """``namespace()``, whose attributes are checked as they are set: a loop cannot double one unbounded."""

        def __setitem__(self, name: str, value: Any) -> None:
            super().__setitem__(name, environment.checked(value))

    return BoundedNamespace


def _is_sized(value: Any) -> bool:
    return isinstance(value, (str, bytes, list, tuple, dict))


@lru_cache(maxsize=4)
def _environment(max_chars: int = DEFAULT_EMAIL_MAX_BODY_BYTES) -> BoundedSandbox:
    """The one environment of every template under a limit, the shipped ones and the subjects alike."""
    return BoundedSandbox(
        max_chars=max_chars,
        loader=PackageLoader("pipeline.core", "templates"),
        autoescape=select_autoescape(enabled_extensions=("html",), default_for_string=False),
        undefined=StrictUndefined,
        keep_trailing_newline=True,
    )


@lru_cache(maxsize=1024)
def _subject_template(subject: str, max_chars: int) -> Template:
    """A templated subject, compiled once: hosts reuse a handful of subjects for every email."""
    return _environment(max_chars).from_string(subject)


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
    max_subject_bytes: int = DEFAULT_EMAIL_MAX_SUBJECT_BYTES,
    max_body_bytes: int = DEFAULT_EMAIL_MAX_BODY_BYTES,
) -> RenderedEmail:
    """The email to send: the stored bodies, or the template rendered with ``data``.

    ``data`` is the row's ``template_data``, which the host's SQL may have set to
    any JSON: only an object (or nothing) names variables, and anything else fails
    the email permanently, naming what it got. Without a template it is not read.
    The limits are the caller's EMAIL_MAX_SUBJECT_BYTES and EMAIL_MAX_BODY_BYTES.
    """
    if template is None:
        return RenderedEmail(subject=subject, html=html, text=text)
    subject_limit, body_limit = max_subject_bytes, max_body_bytes
    context = _variables(data)
    environment = _environment(body_limit)
    try:
        return RenderedEmail(
            subject=_streamed(_subject_template(subject, body_limit), context, subject_limit, "the subject"),
            html=_streamed(environment.get_template(f"{template}.html"), context, body_limit, "the html body"),
            text=_streamed(environment.get_template(f"{template}.txt"), context, body_limit, "the text body"),
        )
    except TemplateFailed as exc:
        raise TemplateFailed(f"template {template!r}: {exc}") from None
    except TemplateNotFound:
        raise TemplateFailed(f"unknown template {template!r}; shipped: {', '.join(templates())}") from None
    except TemplateError as exc:  # the sandbox's refusals (SecurityError) among them
        raise TemplateFailed(f"template {template!r}: {exc}") from None
    except Exception as exc:  # the sandbox's limits (OverflowError), and errors of the data's own methods
        raise TemplateFailed(f"template {template!r}: {describe(exc)}") from None


def _streamed(template: Template, context: dict[str, Any], limit: int, what: str) -> str:
    """The rendered text, given up as soon as it is known to be over ``limit`` UTF-8 bytes."""
    parts: list[str] = []
    characters = 0
    for part in template.generate(context):
        characters += len(part)  # a character is at least a byte
        if characters > limit:
            raise RenderTooLarge(f"{what} is over {limit} bytes")
        parts.append(part)
    rendered = "".join(parts)
    if len(rendered.encode("utf-8", "surrogatepass")) > limit:
        raise RenderTooLarge(f"{what} is over {limit} bytes")
    return rendered


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
