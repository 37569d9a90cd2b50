"""core: human durations ("24h", "30m", "1d12h") parsed to timedelta and printed back."""

from __future__ import annotations

import math
import re
from datetime import timedelta
from typing import Annotated, Any

from pydantic import BeforeValidator, PlainSerializer

_UNITS = {"w": 7 * 86400, "d": 86400, "h": 3600, "m": 60, "s": 1}
_PART = re.compile(r"(\d+)\s*([wdhms])")
_WHOLE = re.compile(r"^\s*(?:\d+\s*[wdhms]\s*)+$")


class DurationError(ValueError):
    """A duration string that cannot be read."""


def parse_duration(text: str) -> timedelta:
    """Read '24h', '30m', '7d', '1d12h', '90s', '2w' (parts add up)."""
    if not isinstance(text, str) or not _WHOLE.match(text.lower()):
        raise DurationError(
            f"invalid duration {text!r}: use a number and a unit w, d, h, m or s,"
            " e.g. '24h' or '1d12h'"
        )
    seconds = sum(int(n) * _UNITS[u] for n, u in _PART.findall(text.lower()))
    return _checked(seconds, text)


def signed_duration(text: str) -> timedelta:
    """'-3d' → minus three days; '2d12h' → plus; as `parse_duration`, with a sign."""
    text = text.strip()
    if text.startswith("-"):
        return -parse_duration(text[1:])
    return parse_duration(text.removeprefix("+"))


def _checked(seconds: float, shown: Any) -> timedelta:
    """A positive whole number of seconds as a timedelta, else a DurationError naming `shown`."""
    if not seconds > 0:  # also refuses NaN
        raise DurationError(f"invalid duration {shown!r}: must be longer than zero")
    if math.isinf(seconds):
        raise DurationError(f"invalid duration {shown!r}: too long")
    if seconds != int(seconds):
        # Written back as text ("24h"), a fraction would be lost or turn into "0s".
        raise DurationError(f"invalid duration {shown!r}: use a whole number of seconds")
    try:
        return timedelta(seconds=seconds)
    except OverflowError:
        raise DurationError(f"invalid duration {shown!r}: too long") from None


def format_duration(value: timedelta) -> str:
    """The shortest human form: 86400 s -> '1d', 5400 s -> '1h30m'."""
    seconds = int(value.total_seconds())
    if seconds <= 0:
        return "0s"
    out = []
    for unit in ("d", "h", "m", "s"):
        n, seconds = divmod(seconds, _UNITS[unit])
        if n:
            out.append(f"{n}{unit}")
    return "".join(out)


def _coerce(value: Any) -> timedelta:
    if isinstance(value, timedelta):
        return _checked(value.total_seconds(), str(value))
    if isinstance(value, int | float) and not isinstance(value, bool):
        return _checked(value, value)
    return parse_duration(value)


Duration = Annotated[
    timedelta,
    BeforeValidator(_coerce),
    PlainSerializer(format_duration, return_type=str),
]
"""A timedelta field written as '24h' in definitions and JSON."""
