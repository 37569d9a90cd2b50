"""The send policy inside real journeys: the real activities on SQLite/PostgreSQL, on a
time-skipping server of the test's own, so days — and a DST change — pass in milliseconds."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select
from temporalio.testing import WorkflowEnvironment

from core.config import CapRule, Settings
from core.definition import parse_campaign
from core.journey import (
    ACTIVITY_SEND,
    QUERY_STATE,
    SIGNAL_RECHECK,
    JourneyState,
    JourneyStatus,
)
from store.campaigns import save_campaign
from store.models import Delivery, SandboxMessage
from store.profiles import merge_traits
from tests.fixtures.api import eventually
from tests.fixtures.dst import next_year, us_spring_forward, utc
from tests.fixtures.temporal import real_journey_worker
from tests.workflows.test_journey import event, start

DAILY = parse_campaign(
    {
        "id": "daily-deals",
        "name": "Daily deals",
        "entry": {"event": "Signed Up"},
        "steps": [
            {"id": "first", "type": "send", "channel": "sandbox", "template": "t", "next": "w1"},
            {"id": "w1", "type": "wait", "duration": "12h", "next": "second"},
            {"id": "second", "type": "send", "channel": "sandbox", "template": "t", "next": "w2"},
            {"id": "w2", "type": "wait", "duration": "1d", "next": "third"},
            {"id": "third", "type": "send", "channel": "sandbox", "template": "t"},
        ],
        "templates": {"t": {"subject": "Deal", "body": "Today's deal"}},
    }
)

EVENING = parse_campaign(
    {
        "id": "evening",
        "name": "Evening reminder",
        "entry": {"event": "Trial Started"},
        "steps": [
            {
                "id": "late",
                "type": "wait",
                "until": {"trait": "trial_end", "offset": "-1d", "time": "22:00"},
                "next": "remind",
            },
            {"id": "remind", "type": "send", "channel": "sandbox", "template": "t"},
        ],
        "templates": {"t": {"body": "Your trial ends tomorrow"}},
    }
)


@pytest.fixture
def env(own_time_skipping_env: WorkflowEnvironment) -> WorkflowEnvironment:
    """A server whose clock starts now: these tests move it to dates of their own."""
    return own_time_skipping_env


async def run_journey(env, sessions, settings: Settings, definition, traits, entry):
    user = f"u-{uuid.uuid4().hex[:8]}"
    async with sessions() as session, session.begin():
        await save_campaign(session=session, definition=definition)
        await merge_traits(session=session, user_id=user, traits=traits)
    async with real_journey_worker(env.client, sessions, settings) as queue:
        handle = await start(env.client, queue, definition, user=user, entry=entry)
        result = await handle.result()
        state = await handle.query(QUERY_STATE, result_type=JourneyState)
        history = await handle.fetch_history()
    # The journey's clock: when each activity was scheduled, by activity name.
    scheduled: dict[str, list[datetime]] = {}
    for e in history.events:
        if e.HasField("activity_task_scheduled_event_attributes"):
            name = e.activity_task_scheduled_event_attributes.activity_type.name
            scheduled.setdefault(name, []).append(e.event_time.ToDatetime(tzinfo=UTC))
    async with sessions() as session:
        rows = (await session.scalars(select(Delivery).where(Delivery.user_id == user))).all()
        kept = (
            await session.scalars(select(SandboxMessage).where(SandboxMessage.user_id == user))
        ).all()
    return result, state, {r.step_id: r for r in rows}, kept, scheduled


async def test_a_daily_cap_suppresses_the_second_send_and_allows_the_next_day(env, sessions):
    settings = Settings(
        _env_file=None,
        quiet_hours_start=None,
        caps=[CapRule(group="marketing", limit=1, window=timedelta(hours=24))],
    )
    result, state, rows, kept, _ = await run_journey(
        env, sessions, settings, DAILY, {"timezone": "Europe/Paris"}, event("Signed Up")
    )
    assert result.status is JourneyStatus.completed
    assert {step: row.status for step, row in rows.items()} == {
        "first": "sent",
        "second": "suppressed",  # 12 h after the first: over 1 per 24 h
        "third": "sent",  # 36 h after the first: a new day's slot
    }
    assert "cap" in (rows["second"].error or "")
    outcomes = {r.step_id: r.outcome for r in state.history}
    assert outcomes["second"].startswith("suppressed: ")
    assert len(kept) == 2  # nothing reached the channel for the suppressed one


async def test_quiet_hours_defer_to_the_morning_across_a_dst_change(env, sessions):
    # New York springs forward in the night before the second Sunday of March (next year's:
    # ahead of this server's clock, whatever today's date). The reminder falls at 22:00 EST
    # the evening before, inside quiet hours (21:00-08:00), and goes out at 08:00 EDT.
    now = await env.get_current_time()
    change = us_spring_forward(next_year(now))
    await env.sleep(utc(change - timedelta(days=13), 0) - now)
    settings = Settings(_env_file=None, caps=[])
    result, state, rows, kept, scheduled = await run_journey(
        env,
        sessions,
        settings,
        EVENING,
        {"timezone": "America/New_York", "trial_end": change.isoformat()},
        event("Trial Started"),
    )
    assert result.status is JourneyStatus.completed
    assert rows["remind"].status == "sent"
    sent_at = rows["remind"].sent_at
    assert sent_at is not None
    [message] = kept
    # Deferred, not dropped: recorded in the history, sent when the window ended.
    deferred = next(r for r in state.history if r.step_id == "remind")
    assert deferred.outcome.startswith("sent via sandbox")
    assert state.deferred_until is None
    assert any(r.step_id == "late" for r in state.history)
    assert message.body == "Your trial ends tomorrow"
    # The journey's clock: 22:00 EST (-5) the evening before is 03:00 UTC on the day.
    [reached] = [r for r in state.history if r.step_id == "remind"]
    at_22_est = utc(change, 3)
    assert at_22_est <= reached.at < at_22_est + timedelta(seconds=1)
    # Asked at 22:00 EST (deferred), asked again at 08:00 EDT (-4) = 12:00 UTC and sent by
    # that same `send` activity.
    morning_edt = utc(change, 12)
    first_try, second_try = scheduled[ACTIVITY_SEND]
    assert at_22_est <= first_try < at_22_est + timedelta(seconds=1)
    assert morning_edt <= second_try < morning_edt + timedelta(seconds=1)
    assert "check_policy" not in scheduled and "deliver" not in scheduled


def promotion(campaign_id: str, priority: str):
    """One marketing message, sent at once, at `priority`."""
    return parse_campaign(
        {
            "id": campaign_id,
            "name": campaign_id,
            "entry": {"event": "Sale Started"},
            "priority": priority,
            "steps": [{"id": "offer", "type": "send", "channel": "sandbox", "template": "t"}],
            "templates": {"t": {"subject": campaign_id, "body": "On sale today"}},
        }
    )


LOWS = [promotion(f"low-{i}", "low") for i in range(4)]
HIGHS = [promotion(f"high-{i}", "high") for i in range(2)]
THREE_A_DAY = Settings(
    _env_file=None,
    quiet_hours_start=None,
    caps=[CapRule(group="marketing", limit=3, window=timedelta(hours=24))],
)


async def send_all(client, sessions, user: str, definitions, *, together: bool) -> dict[str, str]:
    """Run one journey per campaign for `user` (at once, or one after the other) through the
    real `send` activity; each campaign's delivery status and reason, by campaign id.

    On the dev server, in real time: these journeys have no timer, and a time-skipping
    server would skip a day each time the worker is between tasks (a day of cap window)."""
    async with sessions() as session, session.begin():
        for definition in definitions:
            await save_campaign(session=session, definition=definition)
    async with real_journey_worker(client, sessions, THREE_A_DAY) as queue:
        if together:
            handles = [
                await start(client, queue, d, user=user, entry=event("Sale Started"))
                for d in definitions
            ]
            await asyncio.gather(*(h.result() for h in handles))
        else:
            for d in definitions:
                handle = await start(client, queue, d, user=user, entry=event("Sale Started"))
                await handle.result()
    async with sessions() as session:
        rows = (await session.scalars(select(Delivery).where(Delivery.user_id == user))).all()
    return {r.campaign_id: f"{r.status}: {r.error or ''}" for r in rows}


async def test_low_priority_leaves_the_last_slot_of_a_cap_to_higher_ones(dev_server, sessions):
    client = dev_server.client
    user = f"u-{uuid.uuid4().hex[:8]}"
    # Four low promotions first: under a cap of 3 a day, low ones fill 2 slots and leave one.
    lows = await send_all(client, sessions, user, LOWS, together=False)
    assert [lows[c.id].split(":")[0] for c in LOWS] == ["sent", "sent", "suppressed", "suppressed"]
    assert lows["low-2"] == (
        "suppressed: cap: 3 marketing messages per 24h "
        "(low priority leaves 1 slot for higher priorities)"
    )
    # The high one later that day still finds its slot; the cap itself still holds for it.
    highs = await send_all(client, sessions, user, HIGHS, together=False)
    assert highs["high-0"] == "sent: "
    assert highs["high-1"] == "suppressed: cap: 3 marketing messages per 24h"


async def test_concurrent_journeys_never_let_low_ones_take_the_high_ones_slot(dev_server, sessions):
    client = dev_server.client
    user = f"u-{uuid.uuid4().hex[:8]}"
    # Six journeys of one user sending at the same instant, in whatever order the worker
    # runs them: the cap holds, low ones never fill it, and a high one always gets through.
    outcome = await send_all(client, sessions, user, [*LOWS, *HIGHS], together=True)
    sent = {c for c, status in outcome.items() if status.startswith("sent")}
    assert len(outcome) == 6
    assert len(sent) <= 3
    assert len(sent & {c.id for c in LOWS}) <= 2
    assert sent & {c.id for c in HIGHS}


async def test_a_deferred_send_is_asked_again_when_the_policy_changed(dev_server, sessions):
    # Quiet hours hold the send for two hours; the worker restarts with quiet hours off and
    # the journey is told (what `nudge dev` does at start): the send goes now, not in 2 h.
    client = dev_server.client
    now = datetime.now(UTC)
    quiet = Settings(
        _env_file=None,
        caps=[],
        default_timezone="UTC",
        quiet_hours_start=f"{(now - timedelta(hours=1)):%H:%M}",
        quiet_hours_end=f"{(now + timedelta(hours=2)):%H:%M}",
    )
    definition = promotion("late-offer", "normal")
    user = f"u-{uuid.uuid4().hex[:8]}"
    async with sessions() as session, session.begin():
        await save_campaign(session=session, definition=definition)
    async with real_journey_worker(client, sessions, quiet) as queue:
        handle = await start(client, queue, definition, user=user, entry=event("Sale Started"))

        async def deferred() -> datetime | None:
            state = await handle.query(QUERY_STATE, result_type=JourneyState)
            return state.deferred_until

        until = await eventually(deferred, timeout=30)
    assert until > now + timedelta(hours=1)
    off = Settings(_env_file=None, caps=[], quiet_hours_start=None)
    async with real_journey_worker(client, sessions, off, queue=queue):
        await handle.signal(SIGNAL_RECHECK)
        result = await asyncio.wait_for(handle.result(), timeout=60)
        state = await handle.query(QUERY_STATE, result_type=JourneyState)
    assert result.status is JourneyStatus.completed
    async with sessions() as session:
        [row] = (await session.scalars(select(Delivery).where(Delivery.user_id == user))).all()
    assert row.status == "sent"
    assert row.sent_at is not None and row.sent_at < until - timedelta(hours=1)
    assert state.deferred_until is None
    assert state.history[-1].outcome.startswith("sent via sandbox")
