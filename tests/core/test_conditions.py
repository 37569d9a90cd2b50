"""tests.core: conditions — every op, paths, missing values, groups, numbers sent as text."""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from core.conditions import (
    AllOf,
    AnyOf,
    Condition,
    NotOf,
    Op,
    Rule,
    evaluate,
    evaluate_all,
    needs_traits,
    resolve,
)

CONDITION: TypeAdapter[Any] = TypeAdapter(Condition)


def ctx(properties: dict[str, Any] | None = None, **traits: Any) -> dict[str, Any]:
    return {
        "event": {"name": "Order Completed", "properties": properties or {}},
        "traits": traits,
    }


def holds(op: str, actual: Any, value: Any = None) -> bool:
    """Whether `properties.x <op> value` holds when the event's x is `actual`."""
    return evaluate(Rule(path="properties.x", op=Op(op), value=value), ctx({"x": actual}))


def holds_missing(op: str, value: Any = None) -> bool:
    return evaluate(Rule(path="properties.x", op=Op(op), value=value), ctx({}))


# -- every op -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("op", "actual", "value", "expected"),
    [
        ("eq", "gold", "gold", True),
        ("eq", "gold", "silver", False),
        ("eq", 3, 3.0, True),
        ("eq", None, None, True),
        ("eq", [1, 2], [1, 2], True),
        ("ne", "gold", "silver", True),
        ("ne", "gold", "gold", False),
        ("gt", 10, 5, True),
        ("gt", 5, 5, False),
        ("gt", 4.5, 5, False),
        ("gte", 5, 5, True),
        ("gte", 4, 5, False),
        ("lt", 4, 5, True),
        ("lt", 5, 5, False),
        ("lte", 5, 5, True),
        ("lte", 6, 5, False),
        ("gt", "b", "a", True),  # two strings compare as text (ISO dates sort right)
        ("lt", "2024-01-31", "2024-02-01", True),
        ("in", "gold", ["gold", "silver"], True),
        ("in", "bronze", ["gold", "silver"], False),
        ("in", 2, [1, 2, 3], True),
        ("not_in", "bronze", ["gold", "silver"], True),
        ("not_in", "gold", ["gold", "silver"], False),
        ("exists", 0, None, True),
        ("exists", "", None, True),
        ("exists", False, None, True),
        ("exists", None, None, False),
        ("not_exists", None, None, True),
        ("not_exists", 0, None, False),
        ("contains", "summer sale", "sale", True),
        ("contains", "summer", "sale", False),
        ("contains", ["a", "b"], "b", True),
        ("contains", ["a", "b"], "c", False),
        ("contains", {"sku": 1}, "sku", True),
        ("contains", 42, "4", False),  # a number contains nothing
        ("not_contains", "summer", "sale", True),
        ("not_contains", ["a", "b"], "b", False),
        ("not_contains", 42, "4", True),
    ],
)
def test_each_op(op: str, actual: Any, value: Any, expected: bool) -> None:
    assert holds(op, actual, value) is expected


def test_every_op_is_covered_above() -> None:
    assert {op.value for op in Op} == {
        "eq",
        "ne",
        "gt",
        "gte",
        "lt",
        "lte",
        "in",
        "not_in",
        "exists",
        "not_exists",
        "contains",
        "not_contains",
    }


@pytest.mark.parametrize("op", ["gt", "gte", "lt", "lte"])
def test_ordering_something_unorderable_is_false_not_an_error(op: str) -> None:
    assert holds(op, None, 5) is False
    assert holds(op, [1], 5) is False
    assert holds(op, {"a": 1}, "x") is False
    assert holds(op, "many", 5) is False


# -- numbers sent as text -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("op", "actual", "value", "expected"),
    [
        ("gt", "10", 9, True),  # lexically "10" < "9"; numerically it is not
        ("gte", "50", 50, True),
        ("lt", 9, "10", True),
        ("lte", "49.99", 50, True),
        ("gt", "1e3", 999, True),
        ("gt", " 12 ", 11, True),
        ("gt", "twelve", 11, False),
        ("lte", "twelve", 11, False),
    ],
)
def test_a_numeric_string_orders_like_the_number_it_spells(
    op: str, actual: Any, value: Any, expected: bool
) -> None:
    assert holds(op, actual, value) is expected


def test_equality_does_not_turn_text_into_numbers() -> None:
    # eq compares values as sent: "50" and 50 are different values.
    assert holds("eq", "50", 50) is False
    assert holds("ne", "50", 50) is True
    assert holds("in", "2", [1, 2]) is False


def test_a_number_too_large_for_a_float_is_false_not_an_error() -> None:
    assert holds("gt", 10**400, "5") is False
    assert holds("lte", "5", 10**400) is False


@given(st.integers(-(2**53), 2**53), st.integers(-(2**53), 2**53))
def test_integers_sent_as_text_order_like_integers(a: int, b: int) -> None:
    assert holds("gt", str(a), b) is (a > b)
    assert holds("lte", a, str(b)) is (a <= b)


@given(st.floats(allow_nan=False), st.floats(allow_nan=False))
def test_floats_sent_as_text_order_like_floats(a: float, b: float) -> None:
    assert holds("lt", repr(a), b) is (a < b)
    assert holds("gte", a, repr(b)) is (a >= b)


# -- complements ----------------------------------------------------------------------------

numbers = st.one_of(st.integers(), st.floats(allow_nan=False))
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), numbers, st.text(max_size=5)),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=6,
)


@given(numbers, numbers)
def test_gt_and_lte_are_complements_for_numbers(a: float, b: float) -> None:
    assert holds("gt", a, b) is not holds("lte", a, b)
    assert holds("lt", a, b) is not holds("gte", a, b)


@given(st.integers(-1000, 1000), st.integers(-1000, 1000))
def test_gt_and_lte_are_complements_for_numeric_strings(a: int, b: int) -> None:
    assert holds("gt", str(a), b) is not holds("lte", str(a), b)
    assert holds("lt", a, str(b)) is not holds("gte", a, str(b))


@given(json_values, st.lists(json_values, max_size=4))
def test_in_and_not_in_are_complements(actual: Any, values: list[Any]) -> None:
    assert holds("in", actual, values) is not holds("not_in", actual, values)


@given(json_values, json_values)
def test_eq_and_ne_are_complements(actual: Any, value: Any) -> None:
    assert holds("eq", actual, value) is not holds("ne", actual, value)


@given(json_values, st.one_of(st.text(max_size=3), numbers))
def test_contains_and_not_contains_are_complements(actual: Any, value: Any) -> None:
    assert holds("contains", actual, value) is not holds("not_contains", actual, value)


@given(json_values)
def test_exists_and_not_exists_are_complements(actual: Any) -> None:
    assert holds("exists", actual) is not holds("not_exists", actual)


@given(json_values, st.sampled_from(list(Op)), json_values)
def test_not_negates_any_rule(actual: Any, op: Op, value: Any) -> None:
    if op in (Op.in_, Op.not_in):
        value = [value]
    elif op not in (Op.eq, Op.ne, Op.exists, Op.not_exists) and value is None:
        value = 0
    rule = Rule(path="properties.x", op=op, value=value)
    context = ctx({"x": actual})
    assert evaluate(NotOf(**{"not": rule}), context) is not evaluate(rule, context)


# -- paths ----------------------------------------------------------------------------------


def test_paths_go_deeper_through_mappings_and_lists() -> None:
    context = ctx(
        {"address": {"city": "Lyon"}, "products": [{"price": 5}, {"price": 12}]},
        plan={"tier": "gold"},
    )
    assert evaluate(Rule(path="properties.address.city", value="Lyon"), context)
    assert evaluate(Rule(path="event.properties.address.city", value="Lyon"), context)
    assert evaluate(Rule(path="properties.products.1.price", op=Op.gt, value=10), context)
    assert evaluate(Rule(path="traits.plan.tier", op=Op.in_, value=["gold"]), context)
    assert evaluate(Rule(path="event.name", value="Order Completed"), context)


def test_properties_is_shorthand_for_event_properties() -> None:
    context = ctx({"total": 80})
    for path in ("properties.total", "event.properties.total"):
        assert resolve(path, context) == 80


@pytest.mark.parametrize(
    "path",
    [
        "properties.nope",
        "properties.address.nope",
        "properties.address.city.deeper",  # a string has no keys
        "properties.products.7.price",  # past the end
        "properties.products.first",  # a list has no names
        "traits.nope",
        "event.nope",
    ],
)
def test_a_path_that_leads_nowhere_is_missing(path: str) -> None:
    context = ctx({"address": {"city": "Lyon"}, "products": [{"price": 5}]})
    assert not evaluate(Rule(path=path, op=Op.exists), context)
    assert evaluate(Rule(path=path, op=Op.not_exists), context)


def test_missing_roots_are_missing_values() -> None:
    rule = Rule(path="traits.vip", op=Op.exists)
    assert not evaluate(rule, {})
    assert not evaluate(rule, {"traits": None})
    assert not evaluate(Rule(path="properties.x", op=Op.exists), {"event": {"properties": None}})


@pytest.mark.parametrize(
    ("op", "value", "expected"),
    [
        ("eq", "gold", False),
        ("eq", None, False),  # missing is not the same as null
        ("ne", "gold", True),
        ("gt", 0, False),
        ("gte", 0, False),
        ("lt", 0, False),
        ("lte", 0, False),
        ("in", ["gold"], False),
        ("not_in", ["gold"], True),
        ("exists", None, False),
        ("not_exists", None, True),
        ("contains", "a", False),
        ("not_contains", "a", True),
    ],
)
def test_a_missing_value(op: str, value: Any, expected: bool) -> None:
    assert holds_missing(op, value) is expected


# -- groups ---------------------------------------------------------------------------------


def test_all_any_and_not() -> None:
    gold = Rule(path="traits.tier", value="gold")
    big = Rule(path="properties.total", op=Op.gte, value=100)
    context = ctx({"total": 50}, tier="gold")
    assert not evaluate(AllOf(all=[gold, big]), context)
    assert evaluate(AnyOf(any=[gold, big]), context)
    assert evaluate(NotOf(**{"not": big}), context)
    assert evaluate(AllOf(all=[gold, NotOf(**{"not": big})]), context)
    assert evaluate(AnyOf(any=[AllOf(all=[gold, big]), NotOf(**{"not": gold})]), context) is False


def test_empty_groups() -> None:
    assert evaluate(AllOf(all=[]), {}) is True
    assert evaluate(AnyOf(any=[]), {}) is False
    assert evaluate_all([], {}) is True


def test_a_list_of_conditions_must_all_hold() -> None:
    a = Rule(path="properties.a", op=Op.exists)
    b = Rule(path="properties.b", op=Op.exists)
    assert evaluate_all([a, b], ctx({"a": 1, "b": 2}))
    assert not evaluate_all([a, b], ctx({"a": 1}))


# -- reading conditions as written ----------------------------------------------------------


def test_conditions_parse_from_their_written_form() -> None:
    written = {
        "any": [
            {"path": "properties.total", "op": "gte", "value": 100},
            {"all": [{"path": "traits.vip"}, {"not": {"path": "traits.banned", "op": "exists"}}]},
        ]
    }
    condition = CONDITION.validate_python(written)
    assert isinstance(condition, AnyOf)
    nested = condition.any[1]
    assert isinstance(nested, AllOf) and isinstance(nested.all[1], NotOf)
    assert nested.all[0] == Rule(path="traits.vip", op=Op.eq, value=None)
    assert evaluate(condition, ctx({"total": 150}))
    assert evaluate(condition, ctx({}, vip=None))
    assert not evaluate(condition, ctx({}, vip=None, banned=True))
    assert CONDITION.validate_python(CONDITION.dump_python(condition, by_alias=True)) == condition


@pytest.mark.parametrize(
    ("written", "message"),
    [
        ({"path": "user.email", "op": "exists"}, "must start with one of"),
        ({"path": "traits", "op": "exists"}, "must start with one of"),
        ({"path": "properties.tier", "op": "in", "value": "gold"}, "op 'in' needs a list"),
        ({"path": "properties.tier", "op": "not_in"}, "op 'not_in' needs a list"),
        ({"path": "properties.total", "op": "gt"}, "op 'gt' needs a value"),
        ({"path": "properties.name", "op": "contains"}, "op 'contains' needs a value"),
        ({"path": "properties.total", "op": "bigger", "value": 1}, "Input should be 'eq'"),
        ({"path": "properties.total", "value": 1, "unit": "eur"}, "Extra inputs"),
        ({"all": "not a list"}, "Input should be a valid list"),
    ],
)
def test_a_bad_condition_gives_one_error(written: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(message)) as err:
        CONDITION.validate_python(written)
    assert err.value.error_count() == 1


def test_needs_traits_looks_into_groups() -> None:
    assert not needs_traits([Rule(path="properties.total", op=Op.exists)])
    deep = AnyOf(any=[Rule(path="event.name"), NotOf(**{"not": Rule(path="traits.vip")})])
    assert needs_traits([deep])
    assert deep.paths() == ["event.name", "traits.vip"]
