"""tests.simulate: a rehearsal of a campaign that loops stops early — after the scenario's
`max_steps` steps (default 500), in seconds rather than minutes — with the timeline up to
that step, saying why; its expectations are checked against what happened, and one that
what came after the stop could change fails. The CLI exits 1, the API answers 200 with
`stopped_early` and the reason."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from core.config import Settings
from core.definition import DefinitionError, parse_campaign
from core.journey import JourneyStatus
from core.scenario import (
    MAX_REHEARSAL_STEPS,
    REHEARSAL_STEPS,
    EntryKind,
    Timeline,
    TimelineEntry,
    check,
    format_offset,
    loop_in,
    parse_scenario,
    result_of,
)
from temporal.servers import free_port
from tests.cli.runner import closed_url, nudge
from tests.fixtures.api import ADMIN, make_settings, running_api
from worker.simulate import simulate

TICKER: dict[str, Any] = {
    "id": "ticker",
    "name": "A message every minute",
    "entry": {"event": "Signed Up"},
    "steps": [
        {"id": "tick", "type": "wait", "duration": "1m", "next": "ping"},
        {"id": "ping", "type": "send", "channel": "sandbox", "template": "ping", "next": "tick"},
    ],
    "templates": {"ping": {"body": "ping"}},
}
LOOPING: dict[str, Any] = {
    "name": "a message a minute",
    "user": "ada",
    "start": "10:00",
    "settings": {"quiet_hours": "off"},
    "events": [{"at": "0s", "event": "Signed Up"}],
    "expect": [
        "sent ping at 1m",  # before the stop: holds
        "suppressed ping at 4m",  # the default caps: 3 marketing messages a day
        "not sent ping at 4m",  # a minute wholly before the stop: holds
        "sent ping at 3d",  # after the stop: fails, saying why
        "not sent ping at 5d",  # after the stop: cannot hold for sure
        "completed",  # a final status the rehearsal never saw
    ],
}
LOOP_REASON = re.compile(
    r"stopped after (\d+) steps at (\+\S+): the campaign loops \(tick → ping → tick\)"
)


async def test_a_looping_campaign_stops_after_max_steps_with_why_and_the_timeline_so_far() -> None:
    scenario = parse_scenario(LOOPING)
    assert scenario.max_steps == REHEARSAL_STEPS == 500
    began = time.monotonic()
    timeline = await simulate(
        definition=parse_campaign(TICKER), scenario=scenario, settings=Settings(_env_file=None)
    )
    took = time.monotonic() - began
    # Seconds, where the journey's own bound (10,000 steps) took minutes.
    assert took < 12, took

    assert timeline.stopped_early
    assert timeline.stop_reason is not None
    found = LOOP_REASON.fullmatch(timeline.stop_reason)
    assert found, timeline.stop_reason
    # The 501st step: the 250th `tick` after the first, 250 minutes (and a few
    # milliseconds per step) after the start.
    assert found[1] == "500"
    assert found[2] == format_offset(timedelta(seconds=timeline.stopped_at)) == "+4h10m"
    assert timeline.status is JourneyStatus.running

    # The timeline: every step up to the bound (more than the journey's state keeps, 200),
    # in turn, each send after its step, nothing after the stop, and an end saying why.
    entries = timeline.entries
    assert entries[0].kind is EntryKind.event and entries[0].detail == "started journey 1"
    steps = [e.name for e in entries if e.kind is EntryKind.step]
    assert steps == ["tick", "ping"] * 250
    assert all(e.offset <= timeline.stopped_at for e in entries)
    sends = [e for e in entries if e.kind in (EntryKind.sent, EntryKind.suppressed)]
    assert len(sends) == 250
    assert [format_offset(e.delta) for e in sends if e.kind is EntryKind.sent] == [
        "+1m",
        "+2m",
        "+3m",
    ]
    assert len(entries) == 1 + 500 + 250 + 1
    last = entries[-1]
    assert (last.kind, last.name, last.detail) == (EntryKind.end, "stopped", timeline.stop_reason)
    assert last.offset == timeline.stopped_at

    # Expectations against what happened until the stop; what came after could change
    # fails, saying why. A rehearsal stopped early does not pass.
    result = result_of(scenario, timeline)
    held = {v.expectation: v for v in result.expectations}
    assert [v.holds for v in result.expectations] == [True, True, True, False, False, False]
    unknown = f"unknown: the rehearsal {timeline.stop_reason} (until then: "
    assert held["sent ping at 3d"].happened.startswith(unknown + "sent ping at +1m, ")
    assert held["sent ping at 3d"].happened.endswith(" and 240 more)")
    assert held["not sent ping at 5d"].happened.startswith(unknown)
    assert held["completed"].happened == unknown + "running)"
    assert not result.passed


async def test_every_send_is_listed_across_the_journeys_continue_as_new() -> None:
    # 700 steps make a history long enough that the server suggests continue-as-new (at
    # about 630 here): each run's history holds only its own sends, so the rehearsal reads
    # every run of the chain. (Were continue-as-new never suggested, this still holds.)
    scenario = parse_scenario({**LOOPING, "max_steps": 700, "expect": []})
    timeline = await simulate(
        definition=parse_campaign(TICKER), scenario=scenario, settings=Settings(_env_file=None)
    )
    steps = [e.name for e in timeline.entries if e.kind is EntryKind.step]
    assert steps == ["tick", "ping"] * 350
    sends = [e for e in timeline.entries if e.kind in (EntryKind.sent, EntryKind.suppressed)]
    assert len(sends) == 350
    assert sorted(e.offset for e in sends) == [e.offset for e in sends]


async def test_a_burst_after_a_long_wait_is_listed_step_by_step() -> None:
    # A day's wait, then a loop a second apart: the look after the wake-up is short, so no
    # more steps pass between two looks than the journey's state keeps (it listed 465 of
    # 500 when the pace of the long wait carried over).
    burst = {
        "id": "burst",
        "name": "A day, then a message a second",
        "entry": {"event": "Signed Up"},
        "steps": [
            {"id": "a", "type": "wait", "duration": "1d", "next": "b"},
            {"id": "b", "type": "wait", "duration": "1s", "next": "c"},
            {"id": "c", "type": "send", "channel": "sandbox", "template": "ping", "next": "b"},
        ],
        "templates": {"ping": {"body": "ping"}},
    }
    scenario = parse_scenario({**LOOPING, "expect": []})
    timeline = await simulate(
        definition=parse_campaign(burst), scenario=scenario, settings=Settings(_env_file=None)
    )
    steps = [e.name for e in timeline.entries if e.kind is EntryKind.step]
    assert steps == ["a", *["b", "c"] * 249, "b"]
    assert "not listed" not in timeline.entries[-1].detail


async def test_an_ordinary_journey_is_not_stopped_by_the_bound() -> None:
    """A journey that ends within its steps (the ticker, bound to three loops by `until`)
    completes as before, however low the bound is set above what it takes."""
    scenario = parse_scenario(
        {**LOOPING, "until": "3m30s", "max_steps": 8, "expect": ["sent ping at 3m", "running"]}
    )
    timeline = await simulate(
        definition=parse_campaign(TICKER), scenario=scenario, settings=Settings(_env_file=None)
    )
    assert not timeline.stopped_early and timeline.stop_reason is None
    assert [e.name for e in timeline.entries if e.kind is EntryKind.step] == [
        "tick",
        "ping",
    ] * 3 + ["tick"]
    assert timeline.entries[-1].name == "running"
    assert result_of(scenario, timeline).passed


async def test_nudge_simulate_exits_1_with_the_reason_for_a_rehearsal_stopped_early(
    tmp_path: Path,
) -> None:
    campaign = tmp_path / "ticker.yaml"
    campaign.write_text(yaml.safe_dump(TICKER))
    looping = tmp_path / "looping.yaml"
    looping.write_text(
        yaml.safe_dump(
            {
                **LOOPING,
                "events": [*LOOPING["events"], {"at": "2d", "event": "Signed Up"}],
                "max_steps": 40,
                "expect": ["sent ping at 1m"],
            }
        )
    )

    ran = await nudge(tmp_path, "simulate", str(campaign), str(looping), url=closed_url())

    assert ran.code == 1, ran
    reason = (
        "stopped after 40 steps at +20m: the campaign loops (tick → ping → tick); "
        "1 scenario event not played"
    )
    assert ran.stderr == (
        f"simulate: 'a message a minute' {reason} (a scenario's `max_steps`, at most "
        f"{MAX_REHEARSAL_STEPS}, lets a journey take more)\n"
        "simulate: 1 of 1 scenarios did not go as expected: 'a message a minute'\n"
    )
    out = ran.stdout.splitlines()
    assert out[1].endswith(f"stopped at +20m · STOPPED EARLY: {reason}")
    assert out[-3:] == ["", "expectations: 1 of 1 hold", "  ok    sent ping at 1m"]
    end = out[-4]
    assert end.split()[:3] == ["+20m", "end", "stopped"], out[-5:]
    assert end.endswith(reason)
    assert len([line for line in out if " step " in line]) == 40


async def test_the_api_answers_a_rehearsal_stopped_early_with_its_timeline(
    sqlite_url: str,
) -> None:
    settings = make_settings(sqlite_url, f"127.0.0.1:{free_port()}")
    async with running_api(settings) as api:
        await api.campaign(TICKER, activate=False)
        response = await api.http.post(
            "/v1/campaigns/ticker/simulate",
            headers=ADMIN,
            json={**LOOPING, "max_steps": 40, "expect": ["completed"]},
        )
    assert response.status_code == 200, response.text
    body = response.json()
    reason = "stopped after 40 steps at +20m: the campaign loops (tick → ping → tick)"
    assert body["passed"] is False
    assert body["timeline"]["stopped_early"] is True
    assert body["timeline"]["stop_reason"] == reason
    assert body["timeline"]["stopped_at"] == pytest.approx(20 * 60, abs=1)
    assert body["timeline"]["entries"][-1]["detail"] == reason
    assert body["expectations"][0]["holds"] is False


# -- plain values --------------------------------------------------------------------------


def test_max_steps_has_a_default_and_a_bound() -> None:
    assert parse_scenario({**LOOPING, "max_steps": MAX_REHEARSAL_STEPS}).max_steps == 2000
    for wrong in (0, MAX_REHEARSAL_STEPS + 1):
        with pytest.raises(DefinitionError) as caught:
            parse_scenario({**LOOPING, "max_steps": wrong})
        assert any(p.startswith("max_steps: ") for p in caught.value.problems), caught.value


@pytest.mark.parametrize(
    ("steps", "loop"),
    [
        (["tick", "ping", "tick", "ping", "tick"], ["tick", "ping", "tick"]),
        (["a", "b", "c", "b", "c", "b", "c"], ["c", "b", "c"]),
        (["a", "a", "a"], ["a", "a"]),
        (["a", "b", "c", "a"], None),  # went round once: not yet a loop
        (["a", "b", "c"], None),
        ([], None),
    ],
)
def test_the_loop_a_journey_ends_in(steps: list[str], loop: list[str] | None) -> None:
    assert loop_in(steps) == loop


def test_a_stopped_rehearsal_keeps_settled_verdicts_and_fails_the_rest() -> None:
    start = datetime(2026, 12, 1, 10, tzinfo=UTC)
    reason = "stopped after 500 steps at +2h: the campaign loops (a → b → a)"

    def entry(minutes: int, kind: EntryKind, name: str) -> TimelineEntry:
        at = start + timedelta(minutes=minutes)
        return TimelineEntry(offset=minutes * 60, at=at, kind=kind, name=name)

    stopped = Timeline(
        campaign_id="c",
        campaign_version=1,
        scenario="n",
        user="ada",
        start=start,
        stopped_at=2 * 3600,
        journeys=1,
        status=JourneyStatus.running,
        entries=[entry(0, EntryKind.step, "a"), entry(1, EntryKind.sent, "b")],
        stopped_early=True,
        stop_reason=reason,
    )
    lines = [
        "sent b",  # seen: holds for good
        "not sent b",  # seen: fails for good
        "nothing sent",  # fails for good
        "not sent a at 1h59m",  # a minute wholly before the stop
        "not sent a at 2h",  # the stop's own minute: unsettled
        "sent a",  # not by the stop: unsettled
        "entered a at 3h",
        "running",
    ]
    scenario = parse_scenario(
        {"name": "n", "user": "ada", "events": [{"at": "0s", "event": "E"}], "expect": lines}
    )
    verdicts = check(scenario.expect, stopped)
    assert [(v.expectation, v.holds) for v in verdicts] == [
        ("sent b", True),
        ("not sent b", False),
        ("nothing sent", False),
        ("not sent a at 1h59m", True),
        ("not sent a at 2h", False),
        ("sent a", False),
        ("entered a at 3h", False),
        ("running", False),
    ]
    assert verdicts[1].happened == "sent b at +1m"
    assert (
        verdicts[4].happened
        == f"unknown: the rehearsal {reason} (until then: nothing of a; sends: sent b at +1m)"
    )
    # Not stopped: the same lines as ever (`running` holds, `sent a` fails plainly).
    plain = check(scenario.expect, stopped.model_copy(update={"stopped_early": False}))
    assert [v.holds for v in plain] == [True, False, False, True, True, False, False, True]
    assert not any(v.happened.startswith("unknown") for v in plain)
