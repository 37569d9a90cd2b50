"""core: local times in a user's zone — the zone itself, quiet hours, "next 10:00", "3 days
before renewal_date at 09:00" — DST-safe, pure."""

from __future__ import annotations

import calendar
import re
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum
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


def wall_time(local: datetime, tz: ZoneInfo) -> datetime:
    """A naive wall time read in `tz`, as UTC (DST gaps resolved as `_at` does)."""
    return _at(local.date(), local.time(), tz)


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


_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}(?:$|[T ])")


def date_of_trait(value: object) -> date | None:
    """A trait's value as a date when it reads as one (`1990-05-17`, `2026-12-24T10:00Z`),
    else None: only ISO-looking strings count, so a number or a free text never becomes a
    date by accident. What the date index keeps (store.dates)."""
    if not isinstance(value, str) or not _ISO_DATE.match(value.strip()):
        return None
    try:
        return trait_date(value)
    except ValueError:
        return None


def relative_to_date(day: date, offset: timedelta, clock: time, tz: ZoneInfo) -> datetime:
    """`day` + `offset` (whole days count on the calendar, so DST never shifts the hour) at
    `clock` in `tz`, as UTC: "3 days before renewal_date at 09:00"."""
    shifted = day + timedelta(days=offset.days)
    return _at(shifted, clock, tz) + (offset - timedelta(days=offset.days))


class WaitOutcome(StrEnum):
    """What a resolved `wait until` asks of the journey."""

    wait = "wait"
    """Wait until `until` (at once when it has gone: journeys before `missing`/`past`)."""
    skip = "skip"
    """Move on to the step's `next` without waiting."""
    exit = "exit"
    """End the journey (exited), saying why."""


class LocalWait(NamedTuple):
    until: datetime
    """UTC; `now` when there is nothing to wait for."""
    note: str
    """How it was resolved, for operators: "10:00 Europe/Paris"; with `skip` or `exit`,
    why ("no usable 'birthday' trait")."""
    outcome: WaitOutcome = WaitOutcome.wait


def resolve_local_wait(
    *,
    now: datetime,
    clock: str,
    trait: str | None,
    offset: str | None,
    traits: dict[str, object],
    default_timezone: str,
    missing: str | None = None,
    past: str | None = None,
) -> LocalWait:
    """A `wait until` as an instant: the next `clock` in the user's zone, or — with a date
    `trait` — `clock` on that date shifted by `offset`.

    `missing` says what a missing or unreadable date does (`skip`: move on at once;
    `exit`: end the journey); `past` what a moment already gone does (`skip`, `exit`, or
    `next_anniversary`: the next yearly anniversary of the date, shifted and at `clock`).
    None (journeys whose request predates them) keeps the old rule: move on at once.
    """
    tz = user_zone(traits.get("timezone"), default_timezone)
    at = parse_clock(clock)
    if trait is None:
        return LocalWait(next_local_time(now, at, tz), f"{clock} {tz.key}")
    try:
        day = trait_date(traits.get(trait))
    except ValueError:
        reason = f"no usable {trait!r} trait"
        if missing is None:
            return LocalWait(now, f"{reason}: not waiting")
        return LocalWait(now, reason, WaitOutcome(missing))
    shift = signed_duration(offset) if offset else timedelta(0)
    where = f"{offset} from " if offset else ""
    note = f"{clock} {tz.key}, {where}{trait} {day.isoformat()}"
    until = relative_to_date(day, shift, at, tz)
    if until >= now or past is None:
        return LocalWait(until, note)
    if past == "next_anniversary":
        following = next_occurrence(
            day, repeat="yearly", offset_days=shift.days, clock=at, tz=tz, after=now
        )
        if following is not None:
            return LocalWait(
                following.at + (shift - timedelta(days=shift.days)),
                f"{note}: next anniversary {following.occurrence.isoformat()}",
            )
    reason = f"{trait} {day.isoformat()} ({clock}{', ' + offset if offset else ''}) has passed"
    return LocalWait(now, reason, WaitOutcome.skip if past == "skip" else WaitOutcome.exit)


# -- date entries: occurrences of a date trait ---------------------------------------------


def anniversary(day: date, year: int) -> date:
    """`day`'s anniversary in `year`; Feb 29 falls on Feb 28 in years without one."""
    try:
        return day.replace(year=year)
    except ValueError:
        return date(year, 2, 28)


class Occurrence(NamedTuple):
    occurrence: date
    """The date whose moment it is: the anniversary in its year (`yearly`), or the date
    itself (`once`) — before the offset. One greeting per occurrence."""
    at: datetime
    """UTC: `occurrence` + offset days, at the clock in the user's zone."""


def _moment(occurrence: date, offset_days: int, clock: time, tz: ZoneInfo) -> Occurrence:
    return Occurrence(occurrence, _at(occurrence + timedelta(days=offset_days), clock, tz))


def _candidates(
    day: date, repeat: str, offset_days: int, first_year: int, last_year: int
) -> list[date]:
    if repeat == "once":
        return [day]
    # Anniversaries count from the date itself on (a signup date's first is the signup).
    # The offset may move a moment into a neighbouring year: widen by its size.
    spread = abs(offset_days) // 365 + 1
    years = range(max(first_year - spread, day.year), last_year + spread + 1)
    return [anniversary(day, year) for year in years if year <= 9999]


def occurrences_between(
    day: date,
    *,
    repeat: str,
    offset_days: int,
    clock: time,
    tz: ZoneInfo,
    start: datetime,
    end: datetime,
) -> list[Occurrence]:
    """The occurrences of a date trait whose moment falls in (start, end], oldest first:
    the yearly anniversaries (or, `once`, the date) shifted by `offset_days` on the
    calendar, at `clock` in `tz` — the wall-clock time, whatever DST does that day."""
    found = []
    for occurrence in _candidates(day, repeat, offset_days, start.year, end.year):
        try:
            moment = _moment(occurrence, offset_days, clock, tz)
        except OverflowError:
            continue
        if start < moment.at <= end:
            found.append(moment)
    return sorted(found, key=lambda o: o.at)


def next_occurrence(
    day: date, *, repeat: str, offset_days: int, clock: time, tz: ZoneInfo, after: datetime
) -> Occurrence | None:
    """The first occurrence whose moment is at or after `after`; None when there is none
    (a `once` date already gone)."""
    for occurrence in _candidates(day, repeat, offset_days, after.year, after.year + 1):
        try:
            moment = _moment(occurrence, offset_days, clock, tz)
        except OverflowError:
            continue
        if moment.at >= after:
            return moment
    return None


def candidate_days(*, start: datetime, end: datetime, offset_days: int) -> list[date]:
    """Every date whose occurrence, shifted by `offset_days`, may have its moment in
    (start, end] in some zone: local dates run from UTC-12 to UTC+14, so a day either side
    of the window covers every zone and clock. What the sweep reads from the index."""
    first = (start - timedelta(days=1)).date() - timedelta(days=offset_days)
    last = (end + timedelta(days=1)).date() - timedelta(days=offset_days)
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]


def month_days(days: list[date]) -> set[str]:
    """The `MM-DD` keys whose anniversaries fall on `days`: Feb 28 in a year without Feb 29
    also stands for Feb 29."""
    keys = {day.strftime("%m-%d") for day in days}
    for day in days:
        if day.month == 2 and day.day == 28 and not calendar.isleap(day.year):
            keys.add("02-29")
    return keys


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


def _cron_set(field: str, low: int, high: int) -> set[int]:
    """The values one cron field allows: `*`, `*/n`, `a`, `a-b`, `a-b/n`, comma lists."""
    values: set[int] = set()
    for item in field.split(","):
        span, _, step_text = item.partition("/")
        step = int(step_text) if step_text else 1
        if span == "*":
            first, last = low, high
        elif "-" in span:
            first, last = (int(x) for x in span.split("-", 1))
        else:
            first = last = int(span)
            if step_text:
                last = high
        values.update(range(first, last + 1, max(step, 1)))
    return values


def cron_matches(expression: str, local: datetime) -> bool:
    """Whether a five-field cron expression fires at the wall-clock minute `local`. As in
    cron, when both day of month and day of week are restricted, either one will do; day
    of week 0 and 7 are Sunday."""
    minute, hour, dom, month, dow = cron_of(expression).split()
    weekday = (local.weekday() + 1) % 7
    days = _cron_set(dow, 0, 7)
    if 7 in days:
        days.add(0)
    in_month = local.day in _cron_set(dom, 1, 31)
    in_week = weekday in days
    if dom != "*" and dow != "*":
        day_ok = in_month or in_week
    else:
        day_ok = in_month and in_week
    return (
        local.minute in _cron_set(minute, 0, 59)
        and local.hour in _cron_set(hour, 0, 23)
        and local.month in _cron_set(month, 1, 12)
        and day_ok
    )


EARLIEST_ZONE = "Etc/GMT-14"
"""UTC+14, where every wall time comes first: a broadcast at each user's local time fires
here, and each user's journey is held until the same wall time in their own zone."""


def cron_fires(expression: str, tz: ZoneInfo, start: datetime, end: datetime) -> list[datetime]:
    """The instants (UTC, whole minutes) in (start, end] at which the expression fires in
    `tz` — a minute a DST jump skips does not fire, one it repeats fires once."""
    fires: list[datetime] = []
    seen: set[datetime] = set()
    minute = start.astimezone(UTC).replace(second=0, microsecond=0) + timedelta(minutes=1)
    while minute <= end:
        local = minute.astimezone(tz).replace(tzinfo=None)
        if local not in seen and cron_matches(expression, local):
            seen.add(local)
            fires.append(minute)
        minute += timedelta(minutes=1)
    return fires
