"""core: local times in a user's zone — the zone itself, quiet hours, "next 10:00", "3 days
before renewal_date at 09:00" — DST-safe, pure."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, time, timedelta
from typing import NamedTuple
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from core.durations import signed_duration

DEFAULT_TIMEZONE = "UTC"


class ZoneError(ValueError):
    """An unknown IANA time zone name."""


def zone_named(name: str) -> ZoneInfo:
    """The zone an IANA name (`Europe/Paris`) stands for, or a `ZoneError` naming it."""
    try:
        return ZoneInfo(name.strip())
    except (ZoneInfoNotFoundError, ValueError, AttributeError) as exc:
        raise ZoneError(
            f"unknown time zone {name!r}: use an IANA name such as Europe/Paris"
        ) from exc


def user_zone(timezone: object, default: str = DEFAULT_TIMEZONE) -> ZoneInfo:
    """A user's zone, the one rule every local time in Nudge follows: their `timezone` trait
    (an IANA name), else `default` (the setting), else UTC — never an error, since a
    profile's trait is whatever a client sent."""
    for candidate in (timezone, default):
        if isinstance(candidate, str) and candidate.strip():
            try:
                return zone_named(candidate)
            except ZoneError:
                continue
    return ZoneInfo(DEFAULT_TIMEZONE)


def parse_clock(text: str) -> time:
    """'10:00' or '9:30' → time; refuses anything else with the reason."""
    try:
        hours, minutes = text.strip().split(":")
        return time(int(hours), int(minutes))
    except (ValueError, AttributeError) as exc:
        raise ValueError(f"invalid time of day {text!r}: use HH:MM, e.g. '10:00'") from exc


def _at(day: date, clock: time, tz: ZoneInfo) -> datetime:
    """`day` at `clock` in `tz`, as UTC. A wall time skipped by a DST jump moves forward by
    the jump (02:30 on a spring-forward night is 03:30); a repeated one takes its first
    occurrence."""
    local = datetime.combine(day, clock, tzinfo=tz)
    # zoneinfo resolves a nonexistent time with fold=0 using the offset before the jump;
    # round-tripping through UTC normalises it to a real wall time after the jump.
    return local.astimezone(UTC)


def next_local_time(now: datetime, clock: time, tz: ZoneInfo) -> datetime:
    """The first instant at or after `now` (UTC) when the wall clock in `tz` shows `clock`."""
    local_now = now.astimezone(tz)
    for days in range(0, 3):
        candidate = _at(local_now.date() + timedelta(days=days), clock, tz)
        if candidate >= now:
            return candidate
    raise AssertionError("unreachable: a wall time recurs within two days")


def in_quiet_hours(now: datetime, start: time, end: time, tz: ZoneInfo) -> bool:
    """Whether `now` falls in the daily window [start, end) in `tz`; the window may span
    midnight (21:00 to 08:00). Equal start and end means no quiet hours."""
    if start == end:
        return False
    local = now.astimezone(tz).time()
    if start < end:
        return start <= local < end
    return local >= start or local < end


def quiet_hours_end(now: datetime, start: time, end: time, tz: ZoneInfo) -> datetime | None:
    """When the quiet window `now` is in ends (UTC), or None when `now` is not quiet."""
    if not in_quiet_hours(now, start, end, tz):
        return None
    return next_local_time(now, end, tz)


def trait_date(value: object) -> date:
    """A date trait (`2026-12-24`, or an ISO datetime whose date counts) as a date."""
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    if isinstance(value, str):
        text = value.strip()
        try:
            return date.fromisoformat(text[:10])
        except ValueError:
            pass
    raise ValueError(f"not a date: {value!r} (use YYYY-MM-DD)")


def relative_to_date(day: date, offset: timedelta, clock: time, tz: ZoneInfo) -> datetime:
    """`day` + `offset` (whole days count on the calendar, so DST never shifts the hour) at
    `clock` in `tz`, as UTC: "3 days before renewal_date at 09:00"."""
    shifted = day + timedelta(days=offset.days)
    return _at(shifted, clock, tz) + (offset - timedelta(days=offset.days))


class LocalWait(NamedTuple):
    until: datetime
    """UTC; `now` when there is nothing to wait for."""
    note: str
    """How it was resolved, for operators: "10:00 Europe/Paris"."""


def resolve_local_wait(
    *,
    now: datetime,
    clock: str,
    trait: str | None,
    offset: str | None,
    traits: dict[str, object],
    default_timezone: str,
) -> LocalWait:
    """A `wait until` as an instant: the next `clock` in the user's zone, or — with a date
    `trait` — `clock` on that date shifted by `offset`. A missing or unreadable date moves
    on at once (waiting for it would wait forever), saying why."""
    tz = user_zone(traits.get("timezone"), default_timezone)
    at = parse_clock(clock)
    if trait is None:
        return LocalWait(next_local_time(now, at, tz), f"{clock} {tz.key}")
    try:
        day = trait_date(traits.get(trait))
    except ValueError:
        return LocalWait(now, f"no usable {trait!r} trait: not waiting")
    shift = signed_duration(offset) if offset else timedelta(0)
    where = f"{offset} from " if offset else ""
    return LocalWait(
        relative_to_date(day, shift, at, tz), f"{clock} {tz.key}, {where}{trait} {day.isoformat()}"
    )


_DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_EVERY = {
    "day": "*",
    "weekday": "1-5",
    **{name: str((i + 1) % 7) for i, name in enumerate(_DAYS)},
}
_CRON_FIELD = re.compile(r"^[\d*/,\-]+$")
_CRON_RANGES = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 7))


def cron_of(text: str) -> str:
    """A schedule as a five-field cron expression: `every monday 10:00`, `every day 09:30`,
    `every weekday 08:00`, or a cron expression itself (`0 10 * * 1`). Refuses anything
    else with the reason."""
    words = text.strip().lower().split()
    if words and words[0] == "every":
        if len(words) != 3 or words[1] not in _EVERY:
            raise ValueError(
                f"invalid schedule {text!r}: use `every <day> HH:MM` with a day of the week, "
                "`day` or `weekday`, or a cron expression such as '0 10 * * 1'"
            )
        clock = parse_clock(words[2])
        return f"{clock.minute} {clock.hour} * * {_EVERY[words[1]]}"
    if len(words) != 5 or not all(_CRON_FIELD.match(w) for w in words):
        raise ValueError(
            f"invalid schedule {text!r}: a cron expression has five fields "
            "(minute hour day-of-month month day-of-week), e.g. '0 10 * * 1'"
        )
    for word, (low, high) in zip(words, _CRON_RANGES, strict=True):
        for number in re.findall(r"\d+", word):
            if not low <= int(number) <= high:
                raise ValueError(
                    f"invalid schedule {text!r}: {number} is out of range {low}-{high}"
                )
    return " ".join(words)
