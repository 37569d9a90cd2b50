"""core: local times in a user's zone — quiet hours and "next 10:00" — DST-safe, pure."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError


class ZoneError(ValueError):
    """An unknown IANA time zone name."""


def zone(name: str | None, default: str = "UTC") -> ZoneInfo:
    """The user's zone (an IANA name such as `Europe/Paris`), else `default`."""
    for candidate in (name, default):
        if candidate:
            try:
                return ZoneInfo(candidate)
            except (ZoneInfoNotFoundError, ValueError):
                continue
    raise ZoneError(f"unknown time zone {name!r} and default {default!r}")


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
