"""tests.core: durations as authors write them ("24h", "1d12h") and as Nudge writes them back."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from core.durations import Duration, DurationError, format_duration, parse_duration

DURATION: TypeAdapter[timedelta] = TypeAdapter(Duration)
LONGEST = timedelta.max // timedelta(seconds=1)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("24h", timedelta(hours=24)),
        ("30m", timedelta(minutes=30)),
        ("90s", timedelta(seconds=90)),
        ("7d", timedelta(days=7)),
        ("2w", timedelta(weeks=2)),
        ("1d12h", timedelta(days=1, hours=12)),
        ("1h30m15s", timedelta(hours=1, minutes=30, seconds=15)),
        ("30m1h", timedelta(hours=1, minutes=30)),  # parts add up, in any order
        ("1h1h", timedelta(hours=2)),
        ("1D", timedelta(days=1)),
        (" 1d 12h ", timedelta(days=1, hours=12)),
        ("0d1s", timedelta(seconds=1)),
        ("100000d", timedelta(days=100_000)),
    ],
)
def test_parse(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (timedelta(days=1), "1d"),
        (timedelta(hours=1, minutes=30), "1h30m"),
        (timedelta(weeks=2), "14d"),
        (timedelta(days=1, seconds=1), "1d1s"),
        (timedelta(seconds=59), "59s"),
        (timedelta(0), "0s"),
        (timedelta(seconds=-5), "0s"),
    ],
)
def test_format(value: timedelta, expected: str) -> None:
    assert format_duration(value) == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "use a number and a unit"),
        ("24", "use a number and a unit"),
        ("h", "use a number and a unit"),
        ("24 hours", "use a number and a unit"),
        ("1y", "use a number and a unit"),
        ("-1h", "use a number and a unit"),
        ("1.5h", "use a number and a unit"),
        ("1h-30m", "use a number and a unit"),
        ("PT24H", "use a number and a unit"),
        ("0s", "must be longer than zero"),
        ("0d0h", "must be longer than zero"),
        ("99999999999999d", "too long"),
        ("9" * 40 + "s", "too long"),
    ],
)
def test_invalid_strings(text: str, reason: str) -> None:
    with pytest.raises(DurationError, match=reason) as err:
        parse_duration(text)
    assert repr(text) in str(err.value)


@pytest.mark.parametrize("value", [None, 24, ["24h"]])
def test_parse_wants_text(value: Any) -> None:
    with pytest.raises(DurationError):
        parse_duration(value)


def test_a_duration_error_is_a_value_error() -> None:
    # pydantic turns ValueErrors into validation errors that name the field.
    assert issubclass(DurationError, ValueError)


seconds = st.integers(min_value=1, max_value=LONGEST)


@given(seconds)
def test_format_then_parse_gives_the_same_duration(n: int) -> None:
    value = timedelta(seconds=n)
    assert parse_duration(format_duration(value)) == value


@given(seconds)
def test_format_is_canonical(n: int) -> None:
    text = format_duration(timedelta(seconds=n))
    assert format_duration(parse_duration(text)) == text
    assert text.upper() != text  # units are lowercase


parts = st.lists(
    st.tuples(st.integers(0, 10_000), st.sampled_from("wdhms"), st.sampled_from(["", " "])),
    min_size=1,
    max_size=5,
)


@given(parts)
def test_parts_add_up(written: list[tuple[int, str, str]]) -> None:
    unit = {"w": 604_800, "d": 86_400, "h": 3_600, "m": 60, "s": 1}
    total = sum(n * unit[u] for n, u, _ in written)
    text = "".join(f"{n}{u}{space}" for n, u, space in written)
    if total == 0:
        with pytest.raises(DurationError, match="longer than zero"):
            parse_duration(text)
    else:
        assert parse_duration(text) == timedelta(seconds=total)


# -- the Duration field type ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("24h", timedelta(hours=24)),
        (3600, timedelta(hours=1)),
        (90.0, timedelta(seconds=90)),
        (timedelta(minutes=5), timedelta(minutes=5)),
    ],
)
def test_the_field_reads_text_seconds_and_timedeltas(value: Any, expected: timedelta) -> None:
    assert DURATION.validate_python(value) == expected


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (0, "must be longer than zero"),
        (-60, "must be longer than zero"),
        (float("nan"), "must be longer than zero"),
        (timedelta(0), "must be longer than zero"),
        (timedelta(seconds=-1), "must be longer than zero"),
        (0.5, "use a whole number of seconds"),
        (timedelta(milliseconds=1500), "use a whole number of seconds"),
        (float("inf"), "too long"),
        (10**30, "too long"),
        (True, "invalid duration True"),
        ("soon", "use a number and a unit"),
    ],
)
def test_the_field_refuses(value: Any, reason: str) -> None:
    with pytest.raises(ValidationError, match=reason):
        DURATION.validate_python(value)


@given(seconds)
def test_the_field_writes_text_that_reads_back(n: int) -> None:
    value = timedelta(seconds=n)
    for mode in ("python", "json"):
        written = DURATION.dump_python(value, mode=mode)
        assert written == format_duration(value)
        assert DURATION.validate_python(written) == value
    assert DURATION.validate_json(DURATION.dump_json(value)) == value
