"""Email bodies from the shipped templates: rendered, escaped where HTML, and strict about their data."""

from __future__ import annotations

from typing import Any, Optional

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from pipeline.core.errors import PermanentError
from pipeline.core.rendering import RenderedEmail, TemplateFailed, render, templates
from storage import emails
from storage.emails import InvalidEmail
from storage.models import EmailQueue

#: The least data each shipped template needs, and a value it must show.
MINIMAL: dict[str, tuple[dict[str, Any], str]] = {
    "order_confirmation": ({"order_id": "MN-77", "total": "99.50"}, "MN-77"),
    "password_reset": ({"reset_url": "https://minalesh.et/reset/abc"}, "https://minalesh.et/reset/abc"),
    "payment_failed": ({"order_id": "MN-78"}, "MN-78"),
    "shipping_update": ({"order_id": "MN-79", "status": "shipped"}, "shipped"),
}


def rendered(template: Optional[str], data: Optional[dict[str, Any]] = None, subject: str = "Subject") -> RenderedEmail:
    return render(subject=subject, html="<p>stored</p>", text="stored", template=template, data=data)


def test_without_a_template_the_stored_bodies_go_out_as_they_are() -> None:
    email = render(subject="Order {{ order_id }}", html="<p>{{ x }}</p>", text=None, template=None, data={"x": 1})
    assert email == RenderedEmail(subject="Order {{ order_id }}", html="<p>{{ x }}</p>", text=None)


def test_the_shipped_templates_are_listed_without_the_layout() -> None:
    assert templates() == sorted(MINIMAL)


@pytest.mark.parametrize("template", sorted(MINIMAL))
def test_every_shipped_template_renders_both_bodies_from_its_least_data(template: str) -> None:
    data, shown = MINIMAL[template]

    email = rendered(template, data, subject="About {{ order_id | default('your account') }}")

    assert email.html is not None and email.text is not None
    assert shown in email.html and shown in email.text
    assert "Hello there," in email.text and "<p>Hello there,</p>" in email.html  # customer_name's default
    assert email.html.lstrip().startswith("<!doctype html>") and "<html" not in email.text
    assert email.subject == f"About {data.get('order_id', 'your account')}"


def test_html_is_escaped_and_text_and_subject_are_not() -> None:
    data = {"order_id": "MN-<1>", "total": "5", "customer_name": "Abebe & <b>Kebede</b>"}

    email = rendered("order_confirmation", data, subject="Order {{ order_id }} for {{ customer_name }}")

    assert "Hello Abebe &amp; &lt;b&gt;Kebede&lt;/b&gt;," in (email.html or "")
    assert "<strong>MN-&lt;1&gt;</strong>" in (email.html or "")
    assert "Hello Abebe & <b>Kebede</b>," in (email.text or "")
    assert email.subject == "Order MN-<1> for Abebe & <b>Kebede</b>"


def test_optional_parts_appear_only_with_their_data() -> None:
    items = [{"quantity": 2, "name": "Jebena"}, {"quantity": 1, "name": "Mesob"}]
    with_items = rendered("order_confirmation", {"order_id": "MN-1", "total": "10", "currency": "USD", "items": items})
    without = rendered("order_confirmation", {"order_id": "MN-1", "total": "10"})
    reason = rendered("payment_failed", {"order_id": "MN-2", "reason": "card declined"})

    assert "<li>2 × Jebena</li><li>1 × Mesob</li>" in (with_items.html or "")
    assert "- 2 x Jebena\n- 1 x Mesob" in (with_items.text or "")
    assert "10 USD" in (with_items.text or "") and "10 ETB" in (without.text or "")
    assert "<ul>" not in (without.html or "") and "- " not in (without.text or "").split("— Minalesh")[0]
    assert "did not go through: card declined." in (reason.text or "")


@pytest.mark.parametrize(
    ("template", "data", "subject", "message"),
    [
        ("order_confirmation", {"total": "5"}, "Subject", "template 'order_confirmation': 'order_id' is undefined"),
        ("shipping_update", {"order_id": "MN-1"}, "Subject", "template 'shipping_update': 'status' is undefined"),
        ("payment_failed", {"order_id": "MN-1"}, "Order {{ number }}", "'number' is undefined"),
        ("order_confirmation", {"order_id": "MN-1", "total": "5"}, "{{ oops", "template 'order_confirmation': "),
        ("invoice", {}, "Subject", "unknown template 'invoice'; shipped: order_confirmation, password_reset, "),
    ],
    ids=["missing-variable", "missing-status", "missing-in-subject", "broken-subject", "unknown-template"],
)
def test_a_template_that_cannot_render_fails_permanently_naming_the_problem(
    template: str, data: dict[str, Any], subject: str, message: str
) -> None:
    with pytest.raises(TemplateFailed) as raised:
        rendered(template, data, subject=subject)
    assert message in str(raised.value)
    assert isinstance(raised.value, PermanentError)  # never retried: the data will not fix itself


# --- customer text: data, never code -------------------------------------------------------------


@pytest.mark.parametrize(
    "subject",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ cycler.__init__.__globals__.os }}",
        "{{ self._TemplateReference__context }}",
        "{{ 'x{0.__class__}'.format(order_id) }}",
    ],
    ids=["mro", "subclasses", "globals", "context", "format"],
)
def test_a_subject_cannot_reach_python_internals(subject: str) -> None:
    """A host that templated customer text into the subject must not hand that customer the worker."""
    with pytest.raises(TemplateFailed, match="is unsafe") as raised:
        rendered("payment_failed", {"order_id": "MN-1"}, subject=subject)
    assert isinstance(raised.value, PermanentError)


def test_customer_text_in_template_data_is_shown_as_written_never_run() -> None:
    name = "{{ ''.__class__.__mro__ }} {% for x in range(3) %}x{% endfor %}"

    email = rendered("payment_failed", {"order_id": "MN-1", "customer_name": name}, subject="Hi {{ customer_name }}")

    assert email.subject == f"Hi {name}"
    assert f"Hello {name}," in (email.text or "")


def test_a_runaway_subject_fails_permanently_rather_than_being_retried() -> None:
    """The sandbox's own limits raise errors that are not Jinja's (an OverflowError here)."""
    with pytest.raises(TemplateFailed, match="OverflowError: Range too big"):
        rendered("payment_failed", {"order_id": "MN-1"}, subject="{{ range(100001) | length }}")


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        ([["order_id", "MN-1"]], "an array"),
        ([], "an array"),
        ("order_id", "a string"),
        ("", "a string"),
        (7, "a number"),
        (0, "a number"),
        (2.5, "a number"),
        (True, "a boolean"),
        (False, "a boolean"),
    ],
)
def test_template_data_that_is_not_a_json_object_fails_permanently_naming_the_problem(data: Any, kind: str) -> None:
    """The host's SQL can store any JSON in ``template_data``; only an object can be a template's variables."""
    with pytest.raises(TemplateFailed) as raised:
        rendered("payment_failed", data)
    assert str(raised.value) == f"template_data must be a JSON object of the template's variables, not {kind}"
    assert isinstance(raised.value, PermanentError)


def test_no_template_data_is_no_variables() -> None:
    """SQL NULL (or JSON null) is not refused as data: the template then names what it misses."""
    with pytest.raises(TemplateFailed, match="^template 'password_reset': 'reset_url' is undefined$"):
        rendered("password_reset", None)


def test_the_python_api_refuses_template_data_that_is_not_a_dict_before_storing(lite: sessionmaker[Session]) -> None:
    """A Python host hears of it at once, in its own transaction, rather than from ``last_error`` later."""
    with lite.begin() as session:
        with pytest.raises(InvalidEmail, match="^template_data must be a dict of the template's variables, not list$"):
            emails.enqueue(session, recipient="a@b.et", subject="S", template="payment_failed", template_data=[1])
        assert session.scalar(select(func.count()).select_from(EmailQueue)) == 0


# --- what one render may build ----------------------------------------------------------------------

#: Templates that would build far more than any email: each must fail at its limit, not after building it.
RUNAWAYS = {
    "repeat": '{{ "A" * 20000000 }}',
    "repeat-list": "{{ ([1] * 20000000) | length }}",
    "power": "{{ 10 ** 10000000 }}",
    "percent-width": '{{ "%020000000d" % 1 }}',
    "format-width": '{{ "{:>20000000}".format(1) }}',
    "center": '{{ "A".center(20000000) }}',
    "center-filter": '{{ "A" | center(20000000) }}',
    "join": '{{ range(100000) | join("x" * 1000) }}',
    "join-method": '{{ ("x" * 1000).join(range(100000)|map("string")|list) }}',
    "replace": '{{ ("A" * 5000) | replace("", "B" * 5000) }}',
    "namespace-doubling": '{% set ns = namespace(s="x") %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}'
    "{% endfor %}{{ ns.s | length }}",
    "macro-doubling": '{% macro f(s, n) %}{% if n %}{{ f(s ~ s, n - 1) }}{% else %}{{ s | length }}{% endif %}'
    '{% endmacro %}{{ f("x", 40) }}',
    "loop-output": '{% for i in range(100000) %}{{ "x" * 1000 }}{% endfor %}',
}


@pytest.mark.parametrize("subject", list(RUNAWAYS.values()), ids=list(RUNAWAYS))
def test_a_subject_that_would_build_megabytes_fails_permanently_at_its_limit(subject: str) -> None:
    """``{{ "A" * 20000000 }}`` rendered 20 MB and sent it; a larger factor took the worker down."""
    with pytest.raises(TemplateFailed, match="(too large|over .* bytes|limit)") as raised:
        rendered("payment_failed", {"order_id": "MN-1"}, subject=subject)
    assert isinstance(raised.value, PermanentError)


@pytest.mark.parametrize(
    "subject",
    ['{{ "{:>20000000}".format(1) }}', '{{ "{x:>20000000}".format_map({"x": 1}) }}'],
    ids=["format", "format_map"],
)
def test_a_format_width_past_the_limit_fails_before_the_value_is_padded(subject: str) -> None:
    """Jinja 3.1.5 sandboxes ``str.format`` through ``wrap_str_format``: a width is read there, not after padding."""
    with pytest.raises(TemplateFailed, match="a formatted value would be too large"):
        rendered("payment_failed", {"order_id": "MN-1"}, subject=subject)


def test_the_rendered_subject_and_bodies_are_capped_by_their_settings() -> None:
    data = {"order_id": "MN-1", "customer_name": "x" * 3500}
    with pytest.raises(TemplateFailed, match="subject is over 100 bytes"):
        render(subject="{{ customer_name }}", html=None, text=None, template="payment_failed", data=data,
               max_subject_bytes=100, max_body_bytes=100_000)
    with pytest.raises(TemplateFailed, match="the html body is over 4000 bytes"):
        render(subject="Hi", html=None, text=None, template="payment_failed", data=data,
               max_subject_bytes=100, max_body_bytes=4000)
    email = render(subject="{{ '€' * 33 }}", html=None, text=None, template="payment_failed", data=data,
                   max_subject_bytes=100, max_body_bytes=100_000)
    assert email.subject == "€" * 33  # 99 bytes: the limit counts UTF-8 bytes, not characters


def test_ordinary_arithmetic_and_repetition_still_render() -> None:
    subject = '{{ "-" * 10 }} {{ 2 ** 10 }} {{ "%05d" % 42 }} {{ "{:>6}".format("ab") }} {{ [1, 2] + [3] }}'
    email = rendered("payment_failed", {"order_id": "MN-1"}, subject=subject)
    assert email.subject == "---------- 1024 00042     ab [1, 2, 3]"
