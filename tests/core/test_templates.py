"""core.templates: sandboxed rendering, bounded output, errors that name the template."""

from __future__ import annotations

import pytest

from core.templates import RenderError, render, syntax_problem


def test_renders_context_and_missing_values_render_empty():
    out = render("Hi {{ traits.name }}{{ traits.missing.deeper }}!", {"traits": {"name": "Ada"}})
    assert out == "Hi Ada!"
    assert render("{{ traits.x | default('there') }}", {"traits": {}}) == "there"


@pytest.mark.parametrize(
    "source",
    [
        "{{ 'x' * 10**9 }}",
        "{{ [1] * 100000000 }}",
        "{{ 2 ** 100000 }}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{% for i in range(10**9) %}x{% endfor %}",
    ],
)
def test_hostile_templates_are_refused_not_run(source):
    with pytest.raises(RenderError) as err:
        render(source, {"cycler": object()}, name="reminder.body")
    assert "reminder.body" in str(err.value)


def test_unsafe_attributes_render_nothing():
    # The sandbox hides underscore attributes: nothing of the interpreter leaks out.
    assert render("{{ thing.__init__.__globals__ }}", {"thing": object()}) == ""


def test_small_arithmetic_still_works():
    assert render("{{ 3 * 4 }} {{ 'ab' * 2 }} {{ 2 ** 10 }}", {}) == "12 abab 1024"


def test_runtime_error_names_the_template():
    with pytest.raises(RenderError, match=r"'t'.*ZeroDivisionError"):
        render("{{ 1 // 0 }}", {}, name="t")


def test_syntax_problem_names_the_line():
    assert syntax_problem("ok {{ x }}") is None
    assert (syntax_problem("line one\n{{ x ") or "").startswith("line 2: ")
