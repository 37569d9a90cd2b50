"""tests.simulate: the scenario language with plain values — reading scenarios (and the
clear errors of bad ones), offsets, and expectations checked against a timeline."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from core.definition import DefinitionError, parse_campaign
from core.journey import JourneyStatus
from core.scenario import (
    EntryKind,
    RenderedMessage,
    ScenarioError,
    Timeline,
    TimelineEntry,
    Verb,
    campaign_problems,
    check,
    format_offset,
    parse_offset,
    parse_scenario,
    result_of,
)

EXAMPLES = Path(__file__).parents[2] / "examples"
NOW = datetime(2026, 12, 1, 21, 30, tzinfo=UTC)
SCENARIO = """
name: abandoned cart gets a reminder
user: ada
traits: {first_name: Ada, timezone: Europe/Paris}
start: "10:00 Europe/Paris"
settings: {quiet_hours: off, caps: off}
events:
  - {at: 30h, event: Order Completed, properties: {order_id: o-1}}
  - {at: 0s, event: Product Added, properties: {product_id: sku-1}}
  - {at: 2h, traits: {first_name: Ada L.}}
until: 30d
expect:
  - sent remind-with-coupon at 24h
  - not sent remind-without-coupon
  - held  out remind-with-coupon
  - nothing sent
  - converted
"""


def cart() -> object:
    return parse_campaign((EXAMPLES / "campaigns" / "cart-abandonment.yaml").read_text())


def problems_of(text: str) -> list[str]:
    with pytest.raises(DefinitionError) as caught:
        parse_scenario(text)
    return caught.value.problems


def test_a_scenario_reads_with_its_events_in_time_order() -> None:
    scenario = parse_scenario(SCENARIO)
    assert [(e.at, e.event) for e in scenario.events] == [
        (timedelta(0), "Product Added"),
        (timedelta(hours=2), None),
        (timedelta(hours=30), "Order Completed"),
    ]
    assert scenario.events[1].traits == {"first_name": "Ada L."}
    assert scenario.until == timedelta(days=30)
    # YAML reads `off` as false: both mean no quiet hours, no caps.
    assert scenario.settings.overrides() == {
        "quiet_hours_start": None,
        "quiet_hours_end": None,
        "caps": [],
    }
    first, negated, held, nothing, status = scenario.expect
    assert (first.verb, first.name, first.at, first.negated) == (
        Verb.sent,
        "remind-with-coupon",
        timedelta(hours=24),
        False,
    )
    assert (negated.verb, negated.negated, negated.at) == (Verb.sent, True, None)
    assert (held.verb, held.text) == (Verb.held_out, "held out remind-with-coupon")
    assert nothing.verb is Verb.nothing_sent
    assert (status.verb, status.status) == (Verb.status, JourneyStatus.converted)
    # JSON for the API's engine process, and back: the same scenario.
    assert parse_scenario(scenario.model_dump(mode="json")) == scenario


def test_the_start_is_an_instant_or_the_next_time_of_day() -> None:
    scenario = parse_scenario(SCENARIO)
    # 21:30 UTC is 22:30 in Paris: the next 10:00 there is the next morning (09:00 UTC).
    assert scenario.resolve_start(NOW) == datetime(2026, 12, 2, 9, 0, tzinfo=UTC)
    utc = parse_scenario(SCENARIO.replace('"10:00 Europe/Paris"', '"22:00"'))
    assert utc.resolve_start(NOW) == datetime(2026, 12, 1, 22, 0, tzinfo=UTC)
    absent = parse_scenario(SCENARIO.replace('start: "10:00 Europe/Paris"\n', ""))
    assert absent.resolve_start(NOW) == NOW
    later = parse_scenario(SCENARIO.replace('"10:00 Europe/Paris"', '"2027-01-05T10:00:00+01:00"'))
    assert later.resolve_start(NOW) == datetime(2027, 1, 5, 9, 0, tzinfo=UTC)
    past = parse_scenario(SCENARIO.replace('"10:00 Europe/Paris"', '"2026-11-01T10:00:00Z"'))
    with pytest.raises(ScenarioError, match="2026-11-01 10:00 UTC is in the past"):
        past.resolve_start(NOW)


@pytest.mark.parametrize(
    ("text", "offset"),
    [("0s", 0), ("0", 0), ("+24h", 86400), ("1d12h", 129600), (90, 90), ("90s", 90)],
)
def test_offsets_read(text: object, offset: int) -> None:
    assert parse_offset(text) == timedelta(seconds=offset)


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (0, "+0s"),
        (45, "+45s"),
        (30 * 60, "+30m"),
        (24 * 3600, "+24h"),
        (5 * 3600 + 30 * 60, "+5h30m"),
        (2 * 86400, "+2d"),
        (3 * 86400 + 2 * 3600, "+3d 02h"),
        (3 * 86400 + 2 * 3600 + 15 * 60, "+3d 02h15m"),
    ],
)
def test_offsets_are_shown_in_hours_then_days(seconds: int, shown: str) -> None:
    assert format_offset(timedelta(seconds=seconds)) == shown


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (("converted", "convertd"), "expect[4]: cannot read 'convertd': write '[not] sent NAME"),
        (("at 24h", "at tomorrow"), "expect[0]: invalid offset 'tomorrow'"),
        (("at: 2h,", "at: -2h,"), "events[2].at: invalid offset '-2h'"),
        (("{at: 2h, traits:", "{at: 2h, event: X, traits:"), "events[2]: give either `event`"),
        (("user: ada", "usr: ada"), "user: Field required"),
        (("until: 30d", "until: 1h"), "until: comes before the last event"),
        (("until: 30d", "until: 100d"), "until: at most 90d"),
        (('"10:00 Europe/Paris"', '"10:00 Mars/Olympus"'), "unknown time zone 'Mars/Olympus'"),
        (('"10:00 Europe/Paris"', '"2027-01-05T10:00:00"'), "has no zone: add one"),
        (
            ("quiet_hours: off", "quiet_hours: 9pm"),
            "settings.quiet_hours: invalid quiet hours '9pm'",
        ),
        (("expect:", "expect: 3\nx:"), "x: Extra inputs are not permitted"),
    ],
)
def test_a_bad_scenario_names_the_line(change: tuple[str, str], problem: str) -> None:
    problems = problems_of(SCENARIO.replace(*change))
    assert any(problem in p for p in problems), problems


def test_not_a_scenario_at_all() -> None:
    assert problems_of("- just\n- a list\n") == ["a scenario definition must be a mapping"]
    assert problems_of("name: [unclosed")[0].startswith("not valid YAML or JSON")


def test_expectations_must_name_what_the_campaign_has() -> None:
    scenario = parse_scenario(
        SCENARIO.replace("not sent remind-without-coupon", "not sent remnider").replace(
            "held  out remind-with-coupon", "entered nowhere"
        )
    )
    problems = campaign_problems(scenario, cart())  # type: ignore[arg-type]
    assert problems == [
        "expect[1]: 'not sent remnider': 'remnider' is neither a send step nor a template of "
        "campaign 'cart-abandonment' (send steps: remind-with-coupon, remind-without-coupon; "
        "templates: cart_reminder, cart_reminder_plain)",
        "expect[2]: 'entered nowhere': campaign 'cart-abandonment' has no step 'nowhere' "
        "(steps: remind, remind-with-coupon, remind-without-coupon, wait-for-order)",
    ]


def timeline(status: JourneyStatus | None, *entries: tuple[int, EntryKind, str]) -> Timeline:
    start = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)
    return Timeline(
        campaign_id="cart-abandonment",
        campaign_version=1,
        scenario="s",
        user="ada",
        start=start,
        stopped_at=entries[-1][0] if entries else 0,
        journeys=1,
        status=status,
        exit_reason="reached the end of the journey" if status else None,
        entries=[
            TimelineEntry(
                offset=offset,
                at=start + timedelta(seconds=offset),
                kind=kind,
                name=name,
                template="cart_reminder" if kind is not EntryKind.step else None,
                message=RenderedMessage(channel="sandbox", template="cart_reminder", body="Hi")
                if kind is EntryKind.sent
                else None,
            )
            for offset, kind, name in entries
        ],
    )


def verdicts(lines: list[str], happened: Timeline) -> list[tuple[str, bool, str, str]]:
    scenario = parse_scenario(
        {"name": "n", "user": "ada", "events": [{"at": "0s", "event": "E"}], "expect": lines}
    )
    return [
        (v.expectation, v.holds, v.expected, v.happened) for v in check(scenario.expect, happened)
    ]


DAY = 86400
REMINDED = timeline(
    JourneyStatus.completed,
    (0, EntryKind.step, "wait-for-order"),
    (DAY, EntryKind.step, "remind-with-coupon"),
    (DAY, EntryKind.deferred, "remind-with-coupon"),
    (DAY + 9 * 3600 + 30 * 60 + 12, EntryKind.sent, "remind-with-coupon"),
)


def test_expectations_that_hold() -> None:
    lines = [
        "sent remind-with-coupon",
        "sent cart_reminder at 33h30m",  # by template, within that minute
        "deferred remind-with-coupon at 24h",
        "not sent remind-with-coupon at 24h",
        "not suppressed remind-with-coupon",
        "entered remind-with-coupon at 1d",
        "not entered remind-without-coupon",
        "completed",
    ]
    assert [(text, holds) for text, holds, *_ in verdicts(lines, REMINDED)] == [
        (line, True) for line in lines
    ]


def test_expectations_that_fail_say_what_was_expected_and_what_happened() -> None:
    lines = ["sent remind-with-coupon at 24h", "converted", "nothing sent", "sent tips"]
    assert verdicts(lines, REMINDED) == [
        (
            "sent remind-with-coupon at 24h",
            False,
            "remind-with-coupon sent at +24h",
            "deferred remind-with-coupon (cart_reminder) at +24h, "
            "sent remind-with-coupon (cart_reminder) at +33h30m",
        ),
        (
            "converted",
            False,
            "the journey ends converted",
            "completed (reached the end of the journey)",
        ),
        (
            "nothing sent",
            False,
            "no message sent",
            "sent remind-with-coupon (cart_reminder) at +33h30m",
        ),
        (
            "sent tips",
            False,
            "tips sent",
            "nothing of tips; sends: sent remind-with-coupon (cart_reminder) at +33h30m",
        ),
    ]
    assert verdicts(["running", "nothing sent"], timeline(None)) == [
        ("running", False, "the journey still runs when the rehearsal stops", "no journey started"),
        ("nothing sent", True, "no message sent", "no message sent"),
    ]


def test_a_result_passes_only_when_every_expectation_holds() -> None:
    ok = parse_scenario(
        {"name": "n", "user": "u", "events": [{"at": 0, "event": "E"}], "expect": ["completed"]}
    )
    assert result_of(ok, REMINDED).passed
    bad = ok.model_copy(
        update={
            "expect": parse_scenario({**ok.model_dump(mode="json"), "expect": ["exited"]}).expect
        }
    )
    assert not result_of(bad, REMINDED).passed
    none = ok.model_copy(update={"expect": []})
    assert result_of(none, REMINDED).passed and result_of(none, REMINDED).expectations == []
