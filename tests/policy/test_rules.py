"""The pure parts of the send policy: quiet hours across DST, which caps a send counts
against, and how a cap names itself in a suppression's reason."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from core.config import CapRule, Settings
from core.definition import parse_campaign
from core.journey import PolicyAction, PolicyDecision
from core.policy import (
    ALLOW,
    Reserve,
    SendFacts,
    bounced,
    cap_checks,
    decide_send,
    describe_rule,
    ledger_horizon,
    quiet_hours_decision,
    suppress,
)


def settings(**overrides: Any) -> Settings:
    return Settings(_env_file=None, **overrides)


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)


QUIET = settings(quiet_hours_start="21:00", quiet_hours_end="08:00")


@pytest.mark.parametrize(
    ("zone", "now", "until"),
    [
        # New York springs forward 2026-03-08 02:00 EST -> 03:00 EDT: 08:00 is 12:00 UTC.
        ("America/New_York", utc(2026, 3, 8, 6, 30), utc(2026, 3, 8, 12, 0)),
        # ... and falls back 2026-11-01 02:00 EDT -> 01:00 EST: 08:00 is 13:00 UTC.
        ("America/New_York", utc(2026, 11, 1, 5, 30), utc(2026, 11, 1, 13, 0)),
        # 21:30 the evening before the change: the window ends after it.
        ("America/New_York", utc(2026, 3, 8, 2, 30), utc(2026, 3, 8, 12, 0)),
        ("America/New_York", utc(2026, 3, 8, 11, 30), utc(2026, 3, 8, 12, 0)),  # 07:30 EDT
        # Paris springs forward 2026-03-29 02:00 CET -> 03:00 CEST: 08:00 is 06:00 UTC.
        ("Europe/Paris", utc(2026, 3, 28, 21, 30), utc(2026, 3, 29, 6, 0)),
        # ... and falls back 2026-10-25 03:00 CEST -> 02:00 CET: 08:00 is 07:00 UTC.
        ("Europe/Paris", utc(2026, 10, 24, 20, 0), utc(2026, 10, 25, 7, 0)),
        ("Europe/Paris", utc(2026, 10, 25, 1, 30), utc(2026, 10, 25, 7, 0)),
        # Kolkata keeps +05:30 all year: 21:30 IST is 16:00 UTC, 08:00 IST is 02:30 UTC.
        ("Asia/Kolkata", utc(2026, 3, 8, 16, 0), utc(2026, 3, 9, 2, 30)),
        ("Asia/Kolkata", utc(2026, 3, 9, 2, 29), utc(2026, 3, 9, 2, 30)),
    ],
)
def test_quiet_hours_defer_to_the_local_end(zone: str, now: datetime, until: datetime) -> None:
    decision = quiet_hours_decision(now=now, settings=QUIET, timezone=zone)
    assert decision is not None
    assert decision.action is PolicyAction.defer
    assert decision.defer_until == until
    assert decision.reason == f"quiet hours 21:00-08:00 in {zone}"


@pytest.mark.parametrize(
    ("zone", "now"),
    [
        ("America/New_York", utc(2026, 3, 8, 12, 0)),  # 08:00 EDT: the window has ended
        ("America/New_York", utc(2026, 11, 1, 0, 59)),  # 20:59 EDT
        ("Europe/Paris", utc(2026, 3, 29, 6, 0)),  # 08:00 CEST
        ("Europe/Paris", utc(2026, 10, 25, 19, 59)),  # 20:59 CET
        ("Asia/Kolkata", utc(2026, 3, 9, 2, 30)),  # 08:00 IST
        ("Asia/Kolkata", utc(2026, 3, 8, 15, 29)),  # 20:59 IST
    ],
)
def test_outside_quiet_hours_nothing_is_deferred(zone: str, now: datetime) -> None:
    assert quiet_hours_decision(now=now, settings=QUIET, timezone=zone) is None


def test_a_window_ending_in_the_skipped_hour_ends_after_the_jump() -> None:
    # 02:30 does not exist in New York on 2026-03-08: the window ends at 03:30 EDT.
    quiet = settings(quiet_hours_start="01:00", quiet_hours_end="02:30")
    decision = quiet_hours_decision(
        now=utc(2026, 3, 8, 6, 30), settings=quiet, timezone="America/New_York"
    )
    assert decision is not None and decision.defer_until == utc(2026, 3, 8, 7, 30)


def test_no_or_unknown_zone_uses_the_default() -> None:
    paris_default = settings(
        quiet_hours_start="21:00", quiet_hours_end="08:00", default_timezone="Europe/Paris"
    )
    now = utc(2026, 3, 28, 21, 30)  # 22:30 in Paris, 21:30 in UTC
    for trait in (None, "Not/AZone", 42):
        decision = quiet_hours_decision(now=now, settings=paris_default, timezone=trait)
        assert decision is not None and decision.defer_until == utc(2026, 3, 29, 6, 0)


@pytest.mark.parametrize(("start", "end"), [(None, "08:00"), ("21:00", None), ("09:00", "09:00")])
def test_quiet_hours_can_be_turned_off(start: str | None, end: str | None) -> None:
    off = settings(quiet_hours_start=start, quiet_hours_end=end)
    assert quiet_hours_decision(now=utc(2026, 1, 1, 23), settings=off, timezone="UTC") is None


def campaign(**fields: Any):
    return parse_campaign(
        {
            "id": "cart",
            "name": "Cart",
            "entry": {"event": "Product Added"},
            "steps": [{"id": "s", "type": "send", "channel": "email", "template": "t"}],
            "templates": {"t": {"subject": "Hi", "body": "Hi"}},
            **fields,
        }
    )


def test_default_caps_by_group_and_channel() -> None:
    rules = settings().caps
    email = cap_checks(rules=rules, definition=campaign(), channel="email")
    assert [c.label for c in email] == ["cap: 3 marketing messages per 24h"]
    assert (email[0].group, email[0].channel) == ("marketing", None)
    sms = cap_checks(rules=rules, definition=campaign(), channel="sms")
    assert [c.label for c in sms] == [
        "cap: 3 marketing messages per 24h",
        "cap: 1 sms message per 24h",
    ]
    other_group = cap_checks(
        rules=rules, definition=campaign(subscription_group="product_news"), channel="email"
    )
    assert other_group == []


def test_rules_without_group_or_channel_count_everything_and_campaign_caps_follow() -> None:
    rules = [
        CapRule(limit=10, window=timedelta(days=7)),
        CapRule(group="marketing", channel="push", limit=2, window=timedelta(hours=12)),
    ]
    checks = cap_checks(
        rules=rules,
        definition=campaign(caps=[{"limit": 1, "window": "3d"}], priority="high"),
        channel="email",
    )
    assert [c.label for c in checks] == [
        "cap: 10 messages per 7d",
        "cap: 1 message of campaign cart per 3d",
    ]
    assert checks[1].campaign_id == "cart" and checks[1].group is None


def test_transactional_campaigns_are_never_capped() -> None:
    definition = campaign(priority="transactional", caps=[{"limit": 1, "window": "1d"}])
    assert cap_checks(rules=settings().caps, definition=definition, channel="sms") == []


@pytest.mark.parametrize(
    ("priority", "limit", "fill"),
    [
        ("low", 3, 2),  # the last slot of a shared cap is left to normal and high sends
        ("low", 1, 1),  # never less than one slot: a low campaign under a cap of one sends
        ("normal", 3, 3),
        ("high", 3, 3),
    ],
)
def test_priority_headroom_on_caps_across_campaigns(priority: str, limit: int, fill: int) -> None:
    rules = [CapRule(group="marketing", limit=limit, window=timedelta(hours=24))]
    own = [{"limit": 2, "window": "7d"}]
    checks = cap_checks(
        rules=rules,
        definition=campaign(priority=priority, caps=own),
        channel="email",
        headroom=settings().cap_headroom,
    )
    shared, campaigns_own = checks
    assert shared.fill == fill
    # A campaign's own cap counts only its own sends: no one to leave room for.
    assert campaigns_own.fill == 2
    left = " (low priority leaves 1 slot for higher priorities)" if fill < limit else ""
    assert shared.label.endswith(f"per 24h{left}")


def test_headroom_is_a_setting() -> None:
    strict = settings(cap_headroom={"low": 2, "normal": 1})
    rules = [CapRule(limit=4, window=timedelta(hours=24))]
    fills = {
        p: cap_checks(
            rules=rules,
            definition=campaign(priority=p),
            channel="email",
            headroom=strict.cap_headroom,
        )[0].fill
        for p in ("low", "normal", "high")
    }
    assert fills == {"low": 2, "normal": 3, "high": 4}
    with pytest.raises(ValueError, match="greater than or equal to 0"):
        settings(cap_headroom={"low": -1})


def test_describe_rule() -> None:
    assert describe_rule(CapRule(limit=1, window=timedelta(hours=1))) == "cap: 1 message per 1h"
    rule = CapRule(group="marketing", channel="sms", limit=2, window=timedelta(hours=90))
    assert describe_rule(rule) == "cap: 2 marketing sms messages per 3d18h"


def test_the_ledger_keeps_what_the_longest_cap_counts() -> None:
    week = timedelta(days=7)
    rules = [CapRule(limit=3, window=timedelta(hours=24)), CapRule(limit=9, window=week)]
    everyone, longer = ledger_horizon(
        rules=rules,
        campaign_windows={
            "monthly": [timedelta(days=30), timedelta(days=2)],
            "daily": [week],
            "none": [],
        },
    )
    assert everyone == week
    assert longer == {"monthly": timedelta(days=30)}
    # No caps at all: still a day, so a cap added tomorrow has today's sends to count.
    assert ledger_horizon(rules=[], campaign_windows={}) == (timedelta(days=1), {})


def facts(definition: Any = None, **fields: Any) -> SendFacts:
    values: dict[str, Any] = {"channel": "email", "timezone": "Europe/Paris"} | fields
    return SendFacts(definition=definition or campaign(), **values)


def test_the_decision_takes_its_checks_in_order() -> None:
    night = utc(2026, 1, 1, 22)  # 23:00 in Paris: quiet hours
    day = utc(2026, 1, 1, 12)
    receipt = campaign(priority="transactional")
    # Transactional: neither an opt-out nor quiet hours nor caps apply.
    assert decide_send(facts(receipt, unsubscribed=True), now=night, settings=QUIET) == ALLOW
    # An opt-out comes before quiet hours.
    out = decide_send(facts(unsubscribed=True), now=night, settings=QUIET)
    assert out == suppress("unsubscribed from marketing on email")
    deferred = decide_send(facts(), now=night, settings=QUIET)
    assert isinstance(deferred, PolicyDecision) and deferred.action is PolicyAction.defer
    assert deferred.defer_until == utc(2026, 1, 2, 7)  # 08:00 in Paris
    # Otherwise: the caps the store must reserve against, settings' first, then the campaign's.
    reserve = decide_send(
        facts(campaign(caps=[{"limit": 1, "window": "7d"}])), now=day, settings=QUIET
    )
    assert isinstance(reserve, Reserve)
    assert [c.label for c in reserve.caps] == [
        "cap: 3 marketing messages per 24h",
        "cap: 1 message of campaign cart per 7d",
    ]
    assert bounced("sms", "hard bounce: 550") == suppress("suppressed on sms: hard bounce: 550")
