"""tests.core: segment evaluation — windows in whole UTC days, negation, all/any, when to
look again, which segments an event can change, and definitions' errors."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from core.definition import DefinitionError
from core.segments import (
    SegmentDefinition,
    affected_by,
    counted_criteria,
    evaluate_segment,
    parse_segment,
)

NOW = datetime(2026, 12, 1, 15, 30, tzinfo=UTC)
TODAY = NOW.date()


def segment(**fields: Any) -> SegmentDefinition:
    return SegmentDefinition.model_validate({"id": "s", "name": "S", **fields})


def days_ago(n: int) -> date:
    return TODAY - timedelta(days=n)


LOYAL = segment(events=[{"event": "Order Completed", "at_least": 2, "within": "30d"}])
ORDERS = LOYAL.events[0].counter_key()


def loyal(counts: dict[date, int], now: datetime = NOW) -> tuple[bool, datetime | None]:
    result = evaluate_segment(LOYAL, traits={}, counts={ORDERS: counts}, now=now)
    return result.member, result.recheck_at


def test_a_30_day_window_is_today_and_the_29_days_before() -> None:
    assert loyal({days_ago(0): 1, days_ago(29): 1})[0] is True
    assert loyal({days_ago(0): 1, days_ago(30): 1})[0] is False
    assert loyal({days_ago(3): 2})[0] is True
    assert loyal({})[0] is False


def test_recheck_at_is_when_the_day_that_flips_the_answer_leaves_the_window() -> None:
    # Orders 29 and 3 days ago: the older leaves at the start of the day 30 days after it.
    member, recheck = loyal({days_ago(29): 1, days_ago(3): 1})
    assert member is True
    assert recheck == datetime(2026, 12, 2, tzinfo=UTC)
    # One second before, still a member; at that instant, not.
    assert loyal({days_ago(29): 1, days_ago(3): 1}, recheck - timedelta(seconds=1))[0]
    assert loyal({days_ago(29): 1, days_ago(3): 1}, recheck)[0] is False


def test_recheck_at_skips_days_whose_leaving_changes_nothing() -> None:
    # Three orders: the first leaving still leaves two; the second one flips it.
    member, recheck = loyal({days_ago(20): 1, days_ago(10): 1, days_ago(5): 1})
    assert member is True
    assert recheck == datetime.combine(days_ago(10) + timedelta(days=30), datetime.min.time(), UTC)


def test_no_recheck_for_a_non_member_with_too_few_or_for_ever_windows() -> None:
    assert loyal({days_ago(5): 1}) == (False, None)
    ever = segment(events=[{"event": "Signed Up"}])
    result = evaluate_segment(
        ever, traits={}, counts={ever.events[0].counter_key(): {date(2001, 1, 1): 1}}, now=NOW
    )
    assert (result.member, result.recheck_at) == (True, None)


def test_did_not_is_at_most_zero_and_turns_true_as_time_passes() -> None:
    lapsed = segment(events=[{"event": "App Opened", "at_most": 0, "within": "14d"}])
    key = lapsed.events[0].counter_key()
    assert evaluate_segment(lapsed, traits={}, counts={}, now=NOW).member is True
    opened = evaluate_segment(lapsed, traits={}, counts={key: {days_ago(13): 2}}, now=NOW)
    assert opened.member is False
    assert opened.recheck_at == datetime(2026, 12, 2, tzinfo=UTC)
    later = evaluate_segment(
        lapsed, traits={}, counts={key: {days_ago(13): 2}}, now=opened.recheck_at
    )
    assert later.member is True and later.recheck_at is None


def test_match_all_and_any_with_traits() -> None:
    both = {
        "traits": [{"path": "traits.city", "op": "eq", "value": "Shanghai"}],
        "events": [{"event": "Order Completed", "within": "7d"}],
    }
    all_of = segment(**both)
    any_of = segment(**both, match="any")
    key = all_of.events[0].counter_key()
    ordered = {key: {days_ago(1): 1}}
    for traits, counts, expected_all, expected_any in [
        ({"city": "Shanghai"}, ordered, True, True),
        ({"city": "Shanghai"}, {}, False, True),
        ({"city": "Paris"}, ordered, False, True),
        ({}, {}, False, False),
    ]:
        assert (
            evaluate_segment(all_of, traits=traits, counts=counts, now=NOW).member is expected_all
        )
        assert (
            evaluate_segment(any_of, traits=traits, counts=counts, now=NOW).member is expected_any
        )


def test_a_window_counts_by_utc_day_not_by_24_hours() -> None:
    one_day = segment(events=[{"event": "App Opened", "within": "1d"}])
    key = one_day.events[0].counter_key()
    late = datetime(2026, 12, 1, 23, 59, tzinfo=UTC)
    result = evaluate_segment(one_day, traits={}, counts={key: {TODAY: 1}}, now=late)
    assert result.member is True
    assert result.recheck_at == datetime(2026, 12, 2, tzinfo=UTC)


def test_which_segments_an_event_can_change() -> None:
    city = segment(traits=[{"path": "traits.address.city", "op": "eq", "value": "Shanghai"}])
    assert affected_by(city, event_name=None, traits_changed={"address"})
    assert not affected_by(city, event_name=None, traits_changed={"email"})
    assert affected_by(LOYAL, event_name="Order Completed", traits_changed=())
    assert not affected_by(LOYAL, event_name="App Opened", traits_changed={"address"})


def test_counted_criteria_share_one_counter_per_event_and_conditions() -> None:
    seven = segment(events=[{"event": "Order Completed", "within": "7d"}])
    big = segment(
        events=[
            {
                "event": "Order Completed",
                "where": [{"path": "properties.total", "op": "gte", "value": 100}],
            }
        ]
    )
    criteria = counted_criteria([LOYAL, seven, big], "Order Completed")
    assert len(criteria) == 2
    assert LOYAL.events[0].counter_key() == seven.events[0].counter_key()
    assert counted_criteria([LOYAL], "App Opened") == []


def test_parse_names_the_path_of_an_unknown_operator() -> None:
    text = """\
id: big-spenders
name: Big spenders
events:
  - event: Order Completed
    where:
      - {path: properties.total, op: bigger, value: 100}
"""
    with pytest.raises(DefinitionError) as caught:
        parse_segment(text)
    assert any(p.startswith("events[0].where[0].op: ") for p in caught.value.problems), (
        caught.value.problems
    )


def test_parse_refuses_what_cannot_match_or_be_stored() -> None:
    with pytest.raises(DefinitionError, match="at least one condition"):
        parse_segment({"id": "x", "name": "X"})
    with pytest.raises(DefinitionError, match="traits"):
        parse_segment(
            {"id": "x", "name": "X", "traits": [{"path": "properties.a", "op": "eq", "value": 1}]}
        )
    with pytest.raises(DefinitionError, match="name"):
        parse_segment({"id": "x", "name": "X\u0000", "events": [{"event": "A"}]})
    assert parse_segment('{"id": "x", "name": "X", "events": [{"event": "A"}]}').id == "x"


EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples" / "segments").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_the_example_segments_are_valid(path: Path) -> None:
    assert parse_segment(path.read_text()).id in {"shanghai", "loyal-buyers", "digest-readers"}


def test_there_are_example_segments() -> None:
    assert {p.name for p in EXAMPLES} >= {
        "shanghai.yaml",
        "loyal-buyers.yaml",
        "weekly-digest.yaml",
    }
