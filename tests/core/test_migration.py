"""core.journey's migration rule with plain values: which journeys move, where they land,
and why the others stay — the rule the dry run and each journey's validator share."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from core.definition import parse_campaign
from core.journey import (
    JourneyPosition,
    JourneyStatus,
    MigrationRefused,
    mapping_problems,
    migration_target,
)

OLD = parse_campaign(
    {
        "id": "cart",
        "name": "Cart",
        "entry": {"event": "Product Added"},
        "steps": [
            {"id": "wait", "type": "wait", "duration": "24h", "next": "check"},
            {
                "id": "check",
                "type": "branch",
                "branches": [
                    {
                        "conditions": [{"path": "properties.sku", "op": "exists"}],
                        "next": "review",
                    }
                ],
                "else": "remind",
            },
            {
                "id": "review",
                "type": "wait_for",
                "event": "Review Submitted",
                "timeout": "7d",
                "on_event": "remind",
                "on_timeout": "remind",
            },
            {"id": "remind", "type": "send", "channel": "sandbox", "template": "t"},
        ],
        "templates": {"t": {"body": "x"}},
    }
).plan()
NEW = parse_campaign(
    {
        "id": "cart",
        "name": "Cart",
        "entry": {"event": "Product Added"},
        "steps": [
            {"id": "pause", "type": "wait", "duration": "36h", "next": "review"},
            {"id": "review", "type": "wait", "duration": "1d", "next": "coupon"},
            {"id": "coupon", "type": "send", "channel": "sandbox", "template": "t"},
        ],
        "templates": {"t": {"body": "x"}},
    }
).plan()


def at(step: str | None, kind: str | None, **fields: object) -> JourneyPosition:
    values: dict[str, object] = {
        "campaign_version": 3,
        "status": JourneyStatus.running,
        "current_step": step,
        "step_type": kind,
    }
    return JourneyPosition.model_validate(values | fields)


def target(position: JourneyPosition, steps: dict[str, str]) -> str:
    return migration_target(position, from_version=3, to_version=4, plan=NEW, steps=steps)


def test_a_waiting_journey_lands_on_its_mapped_step():
    assert target(at("wait", "wait"), {"wait": "pause"}) == "pause"
    # A mapping may send a wait_for to a wait (and back): the operator says where.
    assert target(at("review", "wait_for"), {"review": "pause"}) == "pause"


def test_an_unmapped_step_lands_on_the_same_id_only_when_the_type_matches():
    with pytest.raises(MigrationRefused, match="no wait_for step of that id"):
        target(at("review", "wait_for"), {})  # v4's `review` is a wait
    with pytest.raises(MigrationRefused, match=r"step 'wait' has no mapping.*--step wait=NEW"):
        target(at("wait", "wait"), {})
    same = at("review", "wait")  # as a journey of a version whose review was a wait
    assert target(same, {}) == "review"


@pytest.mark.parametrize(
    ("position", "reason"),
    [
        (at("remind", "send"), "journey is mid-send (step 'remind')"),
        (
            at("wait", "wait", deferred_until=datetime(2026, 1, 1, tzinfo=UTC)),
            "journey is mid-send (step 'wait')",
        ),
        (at("check", "branch"), "journey is at a branch (step 'check')"),
        (at("wait", "wait", status=JourneyStatus.converted), "journey already ended: converted"),
        (at("wait", "wait", campaign_version=4), "journey runs version 4, not 3"),
        (at("wait", "wait", migrating=True), "a migration of this journey is under way"),
        (at(None, None), "journey has no current step"),
    ],
)
def test_a_journey_that_cannot_leave_its_step_stays(position: JourneyPosition, reason: str):
    with pytest.raises(MigrationRefused) as refused:
        target(position, {"wait": "pause", "remind": "coupon", "check": "pause"})
    assert str(refused.value).startswith(reason)


def test_a_mapping_to_a_step_the_new_version_lacks_is_refused():
    with pytest.raises(MigrationRefused, match="version 4 has no step 'gone'"):
        target(at("wait", "wait"), {"wait": "gone"})


def test_mapping_problems_name_each_entry():
    steps = {"wait": "pause", "remind": "coupon", "nope": "gone", "review": "review"}
    assert mapping_problems(steps, old=OLD, new=NEW, from_version=3, to_version=4) == [
        "steps.remind: step 'remind' is a send: only wait and wait_for steps are migrated from",
        "steps.nope: version 3 has no step 'nope'",
        "steps.nope: version 4 has no step 'gone'",
    ]
    assert mapping_problems({}, old=OLD, new=NEW, from_version=3, to_version=4) == []
