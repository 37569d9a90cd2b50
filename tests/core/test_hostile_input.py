"""tests.core: what may be stored — storable text, JSON numbers, bounded nesting — and the
limits that keep every accepted message routable; hostile definitions; unsubscribe tokens."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from core.definition import DefinitionError, parse_campaign
from core.events import (
    MAX_INT,
    MAX_JSON_DEPTH,
    MAX_JSON_VALUES,
    MAX_USER_ID_BYTES,
    MIN_INT,
    BigNumber,
    Group,
    Track,
    format_path,
    json_problems,
    loads,
    safe_text,
    text_problem,
)
from core.journey import journey_id
from core.links import LinkError, make_token, read_token

TEMPORAL_ID_BYTES = 1000
"""Temporal's default limit on a workflow id (`limit.maxIDLength`), in bytes."""
LONGEST_SLUG = "c" * 63


def problems(value: Any) -> list[tuple[str, str]]:
    return [(format_path(loc), message) for loc, message in json_problems(value)]


# -- storable values --------------------------------------------------------------------------


def test_plain_json_has_no_problems() -> None:
    value = {"s": "Zoë 😀", "n": [MIN_INT, MAX_INT, 0, -1.5, 1e308, True, None], "o": {}}
    assert problems(value) == []


def test_each_problem_is_named_by_its_path_in_document_order() -> None:
    value = loads(
        r'{"a": "x\u0000", "b": [1, NaN, {"c\ud800": Infinity}], "d": 1e999, '
        '"e": 18446744073709551616, "f": -9223372036854775809, "g": ' + "9" * 30 + "}"
    )
    assert [path for path, _ in problems(value)] == [
        "a",
        "b[1]",
        r"b[2].c\ud800",
        r"b[2].c\ud800",
        "d",
        "e",
        "f",
        "g",
    ]
    messages = dict(problems(value))
    assert messages["a"] == r"contains NUL (\u0000), which the database cannot store"
    assert messages["b[1]"] == "must be a finite number: JSON has no NaN or Infinity"
    assert messages["g"].startswith(f"must be an integer from {MIN_INT} to {MAX_INT}")


def test_lone_surrogates_are_refused_and_pairs_are_not() -> None:
    assert (
        text_problem("a\ud800") == r"contains a lone surrogate (\ud800), which is not Unicode text"
    )
    assert text_problem("a\udfffb") is not None
    assert text_problem(loads(r'"\ud83d\ude00"')) is None  # a pair is one character: 😀
    assert safe_text("a\x00b\ud800") == r"a\u0000b\ud800"


def test_loads_keeps_integers_too_long_for_64_bits_as_text() -> None:
    assert loads("-9223372036854775808") == MIN_INT
    assert loads("18446744073709551615") == MAX_INT  # unsigned 64-bit ids fit
    assert isinstance(loads("1" * 21), BigNumber)
    assert isinstance(loads("1" * 5000), BigNumber)  # int("1" * 5000) raises ValueError
    assert problems(loads('{"n": ' + "1" * 5000 + "}"))[0][0] == "n"


def test_nesting_and_size_are_bounded() -> None:
    deep: Any = []
    for _ in range(MAX_JSON_DEPTH + 5):
        deep = [deep]
    [(path, message)] = problems({"x": deep})
    assert path == "x" + "[0]" * (MAX_JSON_DEPTH - 1)
    assert message == f"nests deeper than {MAX_JSON_DEPTH} levels"
    shared = ["x"] * 10
    for _ in range(8):
        shared = [shared] * 10  # 10^9 values, as YAML aliases make them, in little memory
    assert problems(shared) == [("", f"has more than {MAX_JSON_VALUES} values")]


def test_a_duration_of_infinity_is_not_a_number_json_has() -> None:
    definition = {
        "id": "c",
        "name": "C",
        "entry": {"event": "E"},
        "steps": [{"id": "w", "type": "wait", "duration": float("inf")}],
    }
    with pytest.raises(DefinitionError) as err:
        parse_campaign(definition)
    assert err.value.problems == [
        "steps[0].duration: must be a finite number: JSON has no NaN or Infinity"
    ]


def test_binary_is_not_json() -> None:
    assert problems({"b": b"\xff"}) == [("b", "is binary data, which JSON cannot hold")]


# -- messages -------------------------------------------------------------------------------


def errors(model: Any, data: Any) -> list[tuple[tuple[Any, ...], str]]:
    with pytest.raises(ValidationError) as err:
        model.model_validate(data)
    return [(e["loc"], e["msg"]) for e in err.value.errors()]


def test_a_message_is_checked_whole_extras_included() -> None:
    [(loc, message)] = errors(Track, {"userId": "u", "event": "E", "extra": {"k": [float("nan")]}})
    assert loc == ("extra", "k", 0)
    assert "finite" in message


def test_numeric_ids_are_checked_before_they_become_text() -> None:
    assert errors(Track, {"userId": float("nan"), "event": "E"})[0][0] == ("userId",)
    assert Track.model_validate({"userId": 42, "event": "E"}).user_id == "42"
    assert Group.model_validate({"userId": "u", "groupId": 7}).group_id == "7"
    assert errors(Group, {"userId": "u", "groupId": 2**64})[0][0] == ("groupId",)
    assert Group.model_validate({"userId": "u", "groupId": 2**64 - 1}).group_id == str(2**64 - 1)


def test_user_ids_are_limited_in_bytes_so_every_one_makes_a_workflow_id() -> None:
    for longest in ("😀" * 128, "é" * 256, "u" * 512):
        assert len(longest.encode()) == MAX_USER_ID_BYTES
        anonymous = Track.model_validate({"anonymousId": longest, "event": "E"})
        workflow_id = journey_id(LONGEST_SLUG, anonymous.user_key)
        assert len(workflow_id.encode()) == 589 < TEMPORAL_ID_BYTES
        assert len(workflow_id) <= 700  # journey_entries.workflow_id, deliveries.workflow_id
        assert Track.model_validate({"userId": longest, "event": "E"}).user_key == longest
    for too_long in ("😀" * 128 + "u", "u" * 513):
        [(loc, message)] = errors(Track, {"userId": too_long, "event": "E"})
        assert loc == ("userId",)
        assert message.startswith("Value error, is 513 bytes of UTF-8; the limit is 512 bytes")


@pytest.mark.parametrize(
    ("timestamp", "ok"),
    [
        ("9999-12-31T23:00:00-05:00", False),
        ("9999-12-31T18:59:59-05:00", True),
        ("0001-01-01T00:00:00+05:00", False),
        ("0001-01-01T05:00:00+05:00", True),
        ("9999-12-31T23:59:59", True),  # no zone: taken as UTC
    ],
)
def test_a_timestamp_must_stay_within_years_1_to_9999_in_utc(timestamp: str, ok: bool) -> None:
    data = {"userId": "u", "event": "E", "timestamp": timestamp, "sentAt": timestamp}
    if ok:
        Track.model_validate(data)
    else:
        assert [loc for loc, _ in errors(Track, data)] == [("timestamp",), ("sentAt",)]


# -- definitions ------------------------------------------------------------------------------


def definition_problems(text: str) -> list[str]:
    with pytest.raises(DefinitionError) as err:
        parse_campaign(text)
    return err.value.problems


def test_deep_definitions_are_refused_not_a_recursion_error() -> None:
    deep_yaml = "a: " + "[" * 10_000 + "]" * 10_000
    deep_json = '{"a":' * 100_000 + "1" + "}" * 100_000
    for text in (deep_yaml, deep_json):
        assert definition_problems(text) == ["the definition nests deeper than 64 levels"]


def test_yaml_numbers_are_refused_where_they_are() -> None:
    for number in ("1" * 5000, "0x" + "f" * 40, ".nan", "-.inf", "1_000_000_000_000_000_000_000"):
        [problem] = definition_problems(f"id: cart\nx: {{y: [{number}]}}\n")
        assert problem.startswith("x.y[0]: must be"), (number, problem)


def test_yaml_aliases_cannot_expand_without_bound() -> None:
    lines = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    lines += [
        f"{c}: &{c} [{', '.join([f'*{p}'] * 10)}]"
        for p, c in zip("abcdefgh", "bcdefghi", strict=True)
    ]
    assert definition_problems("\n".join(lines)) == [f"has more than {MAX_JSON_VALUES} values"]


# -- unsubscribe tokens -----------------------------------------------------------------------


def test_a_token_with_non_ascii_parts_is_malformed_not_a_crash() -> None:
    now = datetime(2026, 3, 1, tzinfo=UTC)
    good = make_token(
        secret="s", user_id="ada", channel="email", group="g", expires_at=now + timedelta(days=1)
    )
    payload, _, signature = good.partition(".")
    for token in (f"{payload}.{signature[:-1]}é", f"{payload}é.{signature}", f"{payload}.😀"):
        with pytest.raises(LinkError) as err:
            read_token(secret="s", token=token, now=now)
        assert err.value.reason == "malformed"
    assert read_token(secret="s", token=good, now=now).user_id == "ada"
