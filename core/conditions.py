"""core: conditions on event properties and profile traits, and their evaluation."""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Annotated, Any, Union

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, model_validator

_MISSING = object()

ROOTS = ("event", "properties", "traits", "trigger")
"""Where a condition path may start: the event itself, its properties (shorthand for
`event.properties`), the user's profile traits, or the external trigger or schedule that
started the journey (`trigger.properties.city`; where there is no other event, as in a
journey's own conditions, `trigger` is its entry event)."""


class Op(StrEnum):
    eq = "eq"
    ne = "ne"
    gt = "gt"
    gte = "gte"
    lt = "lt"
    lte = "lte"
    in_ = "in"
    not_in = "not_in"
    exists = "exists"
    not_exists = "not_exists"
    contains = "contains"
    not_contains = "not_contains"


_NO_VALUE_OPS = {Op.exists, Op.not_exists}


class Rule(BaseModel):
    """One comparison: `{path: properties.total, op: gte, value: 50}`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str = Field(description="event.<field>, properties.<key> or traits.<key>; dots go deeper")
    op: Op = Op.eq
    value: Any = None
    value_from: str | None = Field(
        default=None,
        description="compare with the value at this path instead of `value`, e.g. "
        "trigger.properties.city (a missing value never matches)",
    )

    @model_validator(mode="after")
    def _check(self) -> Rule:
        for name, path in (("path", self.path), ("value_from", self.value_from)):
            if path is None:
                continue
            root = path.split(".", 1)[0]
            if root not in ROOTS or "." not in path:
                raise ValueError(
                    f"{name} {path!r} must start with one of {', '.join(r + '.' for r in ROOTS)}"
                )
        if self.value_from is not None:
            if self.value is not None:
                raise ValueError("give value or value_from, not both")
            if self.op in _NO_VALUE_OPS:
                raise ValueError(f"op {self.op.value!r} takes no value_from")
            return self
        if self.op in (Op.in_, Op.not_in) and not isinstance(self.value, list):
            raise ValueError(f"op {self.op.value!r} needs a list as value")
        if self.op not in _NO_VALUE_OPS and self.value is None and self.op not in (Op.eq, Op.ne):
            raise ValueError(f"op {self.op.value!r} needs a value")
        return self

    def paths(self) -> list[str]:
        return [self.path] if self.value_from is None else [self.path, self.value_from]


class AllOf(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    all: list[Condition]

    def paths(self) -> list[str]:
        return [p for c in self.all for p in c.paths()]


class AnyOf(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    any: list[Condition]

    def paths(self) -> list[str]:
        return [p for c in self.any for p in c.paths()]


class NotOf(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    not_: Condition = Field(alias="not")

    def paths(self) -> list[str]:
        return self.not_.paths()


def _condition_kind(value: Any) -> str:
    """Which kind of condition a value is, so an error names one kind instead of all four."""
    if isinstance(value, BaseModel):
        return type(value).__name__
    if isinstance(value, Mapping) and "path" not in value:
        for key, kind in (("all", "AllOf"), ("any", "AnyOf"), ("not", "NotOf"), ("not_", "NotOf")):
            if key in value:
                return kind
    return "Rule"


Condition = Annotated[
    Union[  # noqa: UP007 - recursive alias needs Union
        Annotated[Rule, Tag("Rule")],
        Annotated[AllOf, Tag("AllOf")],
        Annotated[AnyOf, Tag("AnyOf")],
        Annotated[NotOf, Tag("NotOf")],
    ],
    Discriminator(_condition_kind),
]
AllOf.model_rebuild()
AnyOf.model_rebuild()
NotOf.model_rebuild()


def needs_traits(conditions: list[Condition]) -> bool:
    """Whether evaluating these conditions needs the user's profile."""
    return any(p.startswith("traits.") for c in conditions for p in c.paths())


def traits_read(conditions: list[Condition]) -> set[str]:
    """The top-level profile traits these conditions read: all a journey has to fetch."""
    return {p.split(".")[1] for c in conditions for p in c.paths() if p.startswith("traits.")}


def resolve(path: str, context: Mapping[str, Any]) -> Any:
    """Follow a dotted path through nested mappings; `_MISSING` when absent."""
    root, _, rest = path.partition(".")
    if root == "properties":
        node: Any = (context.get("event") or {}).get("properties") or {}
    elif root == "trigger" and "trigger" not in context:
        node = context.get("event")
    else:
        node = context.get(root)
    for key in rest.split("."):
        if isinstance(node, Mapping) and key in node:
            node = node[key]
        elif isinstance(node, list) and key.isdigit() and int(key) < len(node):
            node = node[int(key)]
        else:
            return _MISSING
    return node


def _compare(left: Any, op: Op, right: Any) -> bool:
    try:
        if op is Op.gt:
            return bool(left > right)
        if op is Op.gte:
            return bool(left >= right)
        if op is Op.lt:
            return bool(left < right)
        return bool(left <= right)
    except TypeError:
        # A number compared with a numeric string is what event senders mean.
        try:
            return _compare(float(left), op, float(right))
        except (TypeError, ValueError, OverflowError):
            return False


def _rule(rule: Rule, context: Mapping[str, Any]) -> bool:
    value = resolve(rule.path, context)
    op = rule.op
    expected = rule.value
    if rule.value_from is not None:
        expected = resolve(rule.value_from, context)
        if expected is _MISSING:
            return False
        if op in (Op.in_, Op.not_in) and not isinstance(expected, list):
            return False
    if op is Op.exists:
        return value is not _MISSING and value is not None
    if op is Op.not_exists:
        return value is _MISSING or value is None
    if value is _MISSING:
        return op in (Op.ne, Op.not_in, Op.not_contains)
    if op is Op.eq:
        return bool(value == expected)
    if op is Op.ne:
        return bool(value != expected)
    if op is Op.in_:
        return value in expected
    if op is Op.not_in:
        return value not in expected
    if op in (Op.contains, Op.not_contains):
        try:
            found = expected in value
        except TypeError:
            found = False
        return found if op is Op.contains else not found
    return _compare(value, op, expected)


def evaluate(condition: Condition, context: Mapping[str, Any]) -> bool:
    """True when the condition holds for `{"event": {...}, "traits": {...}}`."""
    if isinstance(condition, Rule):
        return _rule(condition, context)
    if isinstance(condition, AllOf):
        return all(evaluate(c, context) for c in condition.all)
    if isinstance(condition, AnyOf):
        return any(evaluate(c, context) for c in condition.any)
    return not evaluate(condition.not_, context)


def evaluate_all(conditions: list[Condition], context: Mapping[str, Any]) -> bool:
    """A list of conditions holds when every one of them does (empty list: true)."""
    return all(evaluate(c, context) for c in conditions)
