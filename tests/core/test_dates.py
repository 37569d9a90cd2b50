"""core.schedule: the occurrences of a date trait — anniversaries, Feb 29, offsets across
month and year ends, DST in Paris and New York — and the `wait until` rules for a date
that is missing or gone. Plain values, no server."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest

from core.schedule import (
    WaitOutcome,
    anniversary,
    candidate_days,
    date_of_trait,
    month_days,
    next_occurrence,
    occurrences_between,
    resolve_local_wait,
)
from tests.fixtures.dst import eu_spring_forward, nth_sunday, us_spring_forward

PARIS = ZoneInfo("Europe/Paris")
NEW_YORK = ZoneInfo("America/New_York")
NINE = time(9, 0)


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def between(day: date, start: str, end: str, **kwargs: object) -> list[tuple[date, datetime]]:
    options: dict = {"repeat": "yearly", "offset_days": 0, "clock": NINE, "tz": ZoneInfo("UTC")}
    options.update(kwargs)
    return [
        (o.occurrence, o.at)
        for o in occurrences_between(day, start=utc(start), end=utc(end), **options)
    ]


@pytest.mark.parametrize(
    ("year", "expected"),
    [(2028, date(2028, 2, 29)), (2027, date(2027, 2, 28)), (2100, date(2100, 2, 28))],
)
def test_feb_29_falls_on_feb_28_in_years_without_one(year, expected):
    assert anniversary(date(2000, 2, 29), year) == expected


def test_a_leap_day_birthday_is_greeted_once_a_year_leap_or_not():
    born = date(2000, 2, 29)
    assert between(born, "2027-02-27T00:00", "2027-03-02T00:00") == [
        (date(2027, 2, 28), utc("2027-02-28T09:00"))
    ]
    assert between(born, "2028-02-27T00:00", "2028-03-02T00:00") == [
        (date(2028, 2, 29), utc("2028-02-29T09:00"))
    ]
    # Index keys: Feb 28 of a common year also reads the Feb 29 rows, not in a leap year.
    assert month_days([date(2027, 2, 28)]) == {"02-28", "02-29"}
    assert month_days([date(2028, 2, 28)]) == {"02-28"}


def test_the_window_is_half_open_and_counts_from_the_date_on():
    born = date(1990, 5, 17)
    assert between(born, "2026-05-17T09:00", "2026-05-18T09:00") == []  # start excluded
    assert between(born, "2026-05-17T08:00", "2026-05-17T09:00") == [
        (date(2026, 5, 17), utc("2026-05-17T09:00"))  # end included
    ]
    # A date in the future has no anniversaries before it.
    assert between(date(2030, 1, 1), "2026-12-31T00:00", "2027-01-02T00:00") == []


@pytest.mark.parametrize(
    ("day", "offset", "occurrence", "moment"),
    [
        # 3 days before a Jan 2 birthday is in the December before: the occurrence is still
        # the anniversary's (the year keys the greeting).
        (date(1990, 1, 2), -3, date(2027, 1, 2), "2026-12-30T09:00"),
        (date(1990, 3, 1), -3, date(2027, 3, 1), "2027-02-26T09:00"),
        (date(1990, 12, 30), 5, date(2026, 12, 30), "2027-01-04T09:00"),
        (date(1990, 1, 31), 1, date(2027, 1, 31), "2027-02-01T09:00"),
    ],
)
def test_offsets_count_calendar_days_across_month_and_year_ends(day, offset, occurrence, moment):
    at = utc(moment)
    found = between(
        day,
        (at - timedelta(hours=1)).isoformat()[:16],
        at.isoformat()[:16],
        offset_days=offset,
    )
    assert found == [(occurrence, at)]
    # The sweep reads the occurrence's day from the index for that window.
    assert occurrence in candidate_days(start=at - timedelta(days=1), end=at, offset_days=offset)


def test_once_is_the_date_itself_and_never_again():
    renewal = date(2026, 6, 1)
    assert between(renewal, "2026-05-01T00:00", "2026-06-02T00:00", repeat="once") == [
        (renewal, utc("2026-06-01T09:00"))
    ]
    assert between(renewal, "2027-05-01T00:00", "2027-06-02T00:00", repeat="once") == []
    assert between(renewal, "2027-05-01T00:00", "2027-06-02T00:00") == [
        (date(2027, 6, 1), utc("2027-06-01T09:00"))
    ]
    after = utc("2026-06-01T09:01")
    assert (
        next_occurrence(renewal, repeat="once", offset_days=0, clock=NINE, tz=PARIS, after=after)
        is None
    )


@pytest.mark.parametrize(
    ("tz", "change", "before", "after"),
    [
        (PARIS, eu_spring_forward, timedelta(hours=1), timedelta(hours=2)),
        (NEW_YORK, us_spring_forward, timedelta(hours=-5), timedelta(hours=-4)),
    ],
)
def test_spring_forward_keeps_the_wall_clock_time(tz, change, before, after):
    day = change(2027)
    born = date(1990, day.month, day.day)
    [(_, moment)] = between(born, f"{day}T00:00", f"{day + timedelta(days=1)}T00:00", tz=tz)
    assert moment == datetime.combine(day, NINE, tzinfo=UTC) - after  # 09:00 summer time
    # The day before (offset -1d) is still winter time: the same 09:00, another UTC hour.
    [(occurrence, eve)] = between(
        born, f"{day - timedelta(days=1)}T00:00", f"{day}T00:00", tz=tz, offset_days=-1
    )
    assert occurrence == day
    assert eve == datetime.combine(day - timedelta(days=1), NINE, tzinfo=UTC) - before
    # 02:30 does not exist that night: it is 03:30, an hour after 01:30.
    [(_, skipped)] = between(
        born, f"{day - timedelta(days=1)}T12:00", f"{day}T12:00", tz=tz, clock=time(2, 30)
    )
    assert skipped.astimezone(tz).time() == time(3, 30)


@pytest.mark.parametrize(
    ("tz", "fall_back", "standard"),
    [
        (PARIS, lambda y: nth_sunday(y, 10, -1), timedelta(hours=1)),
        (NEW_YORK, lambda y: nth_sunday(y, 11, 1), timedelta(hours=-5)),
    ],
)
def test_fall_back_takes_the_first_of_a_repeated_hour_once(tz, fall_back, standard):
    day = fall_back(2027)
    born = date(1990, day.month, day.day)
    window = (f"{day - timedelta(days=1)}T12:00", f"{day + timedelta(days=1)}T12:00")
    [(_, moment)] = between(born, *window, tz=tz)
    assert moment == datetime.combine(day, NINE, tzinfo=UTC) - standard
    [(_, repeated)] = between(born, *window, tz=tz, clock=time(1, 30))
    local = repeated.astimezone(tz)
    assert local.time() == time(1, 30) and local.fold == 0  # the first 01:30, once


@pytest.mark.parametrize(
    ("zone", "clock"),
    [("Pacific/Kiritimati", time(0, 0)), ("Etc/GMT+12", time(23, 59)), ("UTC", NINE)],
)
def test_candidate_days_cover_every_zone_and_the_offset(zone, clock):
    # Kiritimati (UTC+14) at midnight and UTC-12 at 23:59 are the furthest a local day
    # reaches from UTC's: the window just around each moment still reads its date.
    [found] = occurrences_between(
        date(1990, 5, 20),
        repeat="yearly",
        offset_days=-3,
        clock=clock,
        tz=ZoneInfo(zone),
        start=utc("2026-05-01T00:00"),
        end=utc("2026-06-01T00:00"),
    )
    assert found.occurrence == date(2026, 5, 20)
    for start, end in [
        (found.at - timedelta(minutes=1), found.at),
        (found.at - timedelta(days=1), found.at),
        (found.at - timedelta(seconds=1), found.at + timedelta(days=1)),
    ]:
        assert found.occurrence in candidate_days(start=start, end=end, offset_days=-3)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1990-05-17", date(1990, 5, 17)),
        ("2026-12-24T10:00:00Z", date(2026, 12, 24)),
        ("2026-12-24 10:00", date(2026, 12, 24)),
        ("2026-02-30", None),
        ("17/05/1990", None),
        ("2026-12-245", None),
        (19900517, None),
        (None, None),
        ("soon", None),
    ],
)
def test_only_iso_looking_values_are_date_traits(value, expected):
    assert date_of_trait(value) == expected


def wait(traits: dict, now: str = "2026-05-10T12:00", **rules: str | None) -> object:
    options: dict = {"trait": "birthday", "offset": None, "clock": "09:00"}
    options.update(rules)
    return resolve_local_wait(
        now=utc(now), traits=traits, default_timezone="Europe/Paris", **options
    )


def test_a_missing_date_exits_or_skips_as_the_step_says():
    exited = wait({}, missing="exit", past="exit")
    assert exited.outcome is WaitOutcome.exit and exited.note == "no usable 'birthday' trait"
    skipped = wait({"birthday": "not a date"}, missing="skip", past="exit")
    assert skipped.outcome is WaitOutcome.skip
    # Requests made before the rules existed move on at once, as they did.
    legacy = wait({})
    assert legacy.outcome is WaitOutcome.wait and legacy.until == utc("2026-05-10T12:00")


def test_a_date_gone_exits_skips_or_waits_for_the_next_anniversary():
    traits = {"birthday": "1990-05-17"}
    gone = wait(traits, missing="exit", past="exit")
    assert gone.outcome is WaitOutcome.exit and "birthday 1990-05-17" in gone.note
    assert "has passed" in gone.note
    assert wait(traits, missing="exit", past="skip").outcome is WaitOutcome.skip
    nxt = wait(traits, missing="exit", past="next_anniversary")
    assert nxt.outcome is WaitOutcome.wait
    assert nxt.until == utc("2026-05-17T07:00")  # 09:00 in Paris (CEST)
    later = wait(traits, now="2026-05-17T08:00", missing="exit", past="next_anniversary")
    assert later.until == utc("2027-05-17T07:00")  # this year's has just gone
    leap = wait(
        {"birthday": "2000-02-29"}, now="2027-01-01T00:00", missing="exit", past="next_anniversary"
    )
    assert leap.until == utc("2027-02-28T08:00")
    # A date ahead is waited for, whatever `past` says.
    ahead = wait({"renewal": "2026-06-01"}, trait="renewal", offset="-3d", past="exit")
    assert ahead.outcome is WaitOutcome.wait and ahead.until == utc("2026-05-29T07:00")
