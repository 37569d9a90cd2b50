"""core.schedule: local times in the user's zone, across DST changes."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.schedule import (
    ZoneError,
    in_quiet_hours,
    next_local_time,
    parse_clock,
    quiet_hours_end,
    relative_to_date,
    resolve_local_wait,
    trait_date,
    user_zone,
    zone_named,
)

ZONES = ["America/New_York", "Europe/Paris", "Asia/Kolkata", "UTC"]


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.mark.parametrize(
    ("tz", "now", "clock", "expected"),
    [
        # New York springs forward 2026-03-08 at 02:00: 02:30 does not exist that night.
        ("America/New_York", "2026-03-08T05:00", "02:30", "2026-03-08T07:30"),
        ("America/New_York", "2026-03-08T05:00", "10:00", "2026-03-08T14:00"),
        # Falls back 2026-11-01: 01:30 happens twice; the first (EDT) counts.
        ("America/New_York", "2026-11-01T04:00", "01:30", "2026-11-01T05:30"),
        # Paris springs forward 2026-03-29.
        ("Europe/Paris", "2026-03-28T12:00", "10:00", "2026-03-29T08:00"),
        ("Europe/Paris", "2026-10-24T12:00", "10:00", "2026-10-25T09:00"),
        ("Asia/Kolkata", "2026-06-01T05:00", "10:00", "2026-06-02T04:30"),
        ("Asia/Kolkata", "2026-06-01T04:00", "10:00", "2026-06-01T04:30"),
    ],
)
def test_next_local_time(tz, now, clock, expected):
    assert next_local_time(utc(now), parse_clock(clock), zone_named(tz)) == utc(expected)


@given(
    now=st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1)),
    hour=st.integers(0, 23),
    minute=st.integers(0, 59),
    tz=st.sampled_from(ZONES),
)
def test_next_local_time_is_soon_and_shows_that_time(now, hour, minute, tz):
    now = now.replace(tzinfo=UTC)
    at = next_local_time(now, time(hour, minute), zone_named(tz))
    assert now <= at < now + timedelta(days=2)
    local = at.astimezone(zone_named(tz))
    # Either the wall clock shows the time, or that time did not exist (a DST gap).
    assert (local.hour, local.minute) == (hour, minute) or local.utcoffset() != (
        local - timedelta(hours=3)
    ).utcoffset()


@pytest.mark.parametrize(
    ("tz", "now", "quiet", "ends"),
    [
        ("Europe/Paris", "2026-06-01T20:00", True, "2026-06-02T06:00"),  # 22:00 CEST
        ("Europe/Paris", "2026-06-01T12:00", False, None),
        # The night New York falls back: 23:00 EDT until 08:00 EST is ten hours.
        ("America/New_York", "2026-11-01T03:00", True, "2026-11-01T13:00"),
        ("Asia/Kolkata", "2026-06-01T16:00", True, "2026-06-02T02:30"),  # 21:30 IST
    ],
)
def test_quiet_hours_across_midnight_and_dst(tz, now, quiet, ends):
    start, end = parse_clock("21:00"), parse_clock("08:00")
    assert in_quiet_hours(utc(now), start, end, zone_named(tz)) is quiet
    assert quiet_hours_end(utc(now), start, end, zone_named(tz)) == (utc(ends) if ends else None)


def test_equal_start_and_end_means_no_quiet_hours():
    assert not in_quiet_hours(utc("2026-01-01T00:00"), time(8), time(8), zone_named("UTC"))


def test_relative_to_a_date_trait_keeps_the_wall_clock_across_dst():
    paris = zone_named("Europe/Paris")
    at = relative_to_date(trait_date("2026-04-01"), -timedelta(days=3), time(9), paris)
    assert at == utc("2026-03-29T07:00")  # the spring-forward day: 09:00 CEST
    assert trait_date("2026-12-24T18:00:00Z") == date(2026, 12, 24)
    with pytest.raises(ValueError, match=r"not a date: 'next tuesday' \(use YYYY-MM-DD\)"):
        trait_date("next tuesday")


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="HH:MM"):
        parse_clock("10am")
    with pytest.raises(ZoneError, match="Not/AZone"):
        zone_named("Not/AZone")


@pytest.mark.parametrize(
    ("trait", "default", "expected"),
    [
        ("Asia/Tokyo", "Europe/Paris", "Asia/Tokyo"),
        ("  Asia/Tokyo ", "Europe/Paris", "Asia/Tokyo"),
        ("Not/AZone", "Europe/Paris", "Europe/Paris"),
        (None, "Europe/Paris", "Europe/Paris"),
        (42, "Europe/Paris", "Europe/Paris"),
        ("", "Europe/Paris", "Europe/Paris"),
        ("Not/AZone", "Nor/This", "UTC"),
    ],
)
def test_one_rule_finds_a_users_zone(trait, default, expected):
    # Quiet hours, `wait until` and the template filters all follow it.
    assert user_zone(trait, default).key == expected


def test_a_local_wait_from_a_date_trait_or_without_one():
    now = utc("2026-03-20T12:00")
    traits = {"timezone": "Europe/Paris", "renewal_date": "2026-04-01"}
    wait = resolve_local_wait(
        now=now,
        clock="09:00",
        trait="renewal_date",
        offset="-3d",
        traits=traits,
        default_timezone="UTC",
    )
    assert wait.until == utc("2026-03-29T07:00")  # Paris springs forward that day
    assert wait.note == "09:00 Europe/Paris, -3d from renewal_date 2026-04-01"
    nothing = resolve_local_wait(
        now=now,
        clock="09:00",
        trait="birthday",
        offset=None,
        traits=traits,
        default_timezone="UTC",
    )
    assert nothing.until == now and "no usable 'birthday' trait" in nothing.note
    next_ten = resolve_local_wait(
        now=now, clock="10:00", trait=None, offset=None, traits={}, default_timezone="Asia/Tokyo"
    )
    assert next_ten[:2] == (utc("2026-03-21T01:00"), "10:00 Asia/Tokyo")
