"""`wait: {until: {trait: ...}}` when the date is missing or gone, on the time-skipping
server with the real `resolve_wait` reading the profile from SQLite: the step's `missing`
and `past` rules (exit by default; skip; the next anniversary)."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from temporalio.worker import Worker

from core.definition import parse_campaign
from core.journey import QUERY_STATE, JourneyState, JourneyStatus
from store.db import create_engine, session_factory
from tests.workflows.test_journey import ActivityDoubles, real_wait_resolver, save_traits, start
from workflows.journey import JourneyWorkflow


def birthday_campaign(**rules: str) -> Any:
    return parse_campaign(
        {
            "id": "birthday-wait",
            "name": "Birthday",
            "entry": {"event": "Signed Up"},
            "steps": [
                {
                    "id": "until_birthday",
                    "type": "wait",
                    "until": {"trait": "birthday", "time": "09:00", **rules},
                    "next": "greet",
                },
                {"id": "greet", "type": "send", "channel": "sandbox", "template": "t"},
            ],
            "templates": {"t": {"body": "Happy birthday"}},
        }
    )


async def run(env, task_queue, sqlite_url, traits: dict[str, Any] | None, **rules: str):
    """One journey of the birthday campaign for a user with `traits` (None: no profile);
    returns its result, state, the sends (with when) and the time it started."""
    user = f"user-{uuid.uuid4().hex[:8]}"
    engine = create_engine(sqlite_url)
    try:
        sessions = session_factory(engine)
        if traits is not None:
            await save_traits(sessions, user, traits)
        doubles = ActivityDoubles()
        doubles.env = env
        began = await env.get_current_time()
        async with Worker(
            env.client,
            task_queue=task_queue,
            workflows=[JourneyWorkflow],
            activities=doubles.all(resolve_wait=real_wait_resolver(sessions)),
        ):
            handle = await start(env.client, task_queue, birthday_campaign(**rules), user=user)
            result = await handle.result()
            state = await handle.query(QUERY_STATE, result_type=JourneyState)
    finally:
        await engine.dispose()
    return result, state, doubles, began


async def test_a_user_without_the_date_exits_by_default_and_gets_nothing(
    time_skipping_env, task_queue, sqlite_url
):
    result, state, doubles, _ = await run(time_skipping_env, task_queue, sqlite_url, {})
    assert result.status is JourneyStatus.exited
    assert result.exit_reason == "no usable 'birthday' trait"
    assert doubles.sends == []
    [outcome] = doubles.outcomes  # recorded: the funnel counts it
    assert outcome.status is JourneyStatus.exited
    assert state.history[-1].step_id == "until_birthday"


@pytest.mark.parametrize("traits", [None, {"birthday": "someday"}])
async def test_missing_skip_moves_on_at_once(time_skipping_env, task_queue, sqlite_url, traits):
    result, state, doubles, began = await run(
        time_skipping_env, task_queue, sqlite_url, traits, missing="skip"
    )
    assert result.status is JourneyStatus.completed
    [(_, sent_at)] = doubles.sends
    assert sent_at - began < timedelta(minutes=1)
    wait = next(r for r in state.history if r.step_id == "until_birthday")
    assert wait.outcome == "not waiting: no usable 'birthday' trait"


async def test_a_date_gone_exits_by_default(time_skipping_env, task_queue, sqlite_url):
    result, _, doubles, _ = await run(
        time_skipping_env, task_queue, sqlite_url, {"birthday": "1990-05-17"}
    )
    assert result.status is JourneyStatus.exited
    assert result.exit_reason == "birthday 1990-05-17 (09:00) has passed"
    assert doubles.sends == []


async def test_past_skip_sends_at_once(time_skipping_env, task_queue, sqlite_url):
    result, _, doubles, began = await run(
        time_skipping_env, task_queue, sqlite_url, {"birthday": "1990-05-17"}, past="skip"
    )
    assert result.status is JourneyStatus.completed
    [(_, sent_at)] = doubles.sends
    assert sent_at - began < timedelta(minutes=1)


async def test_past_next_anniversary_waits_for_it_at_nine_local(
    time_skipping_env, task_queue, sqlite_url
):
    now = await time_skipping_env.get_current_time()
    # A birthday ten days from now (in some earlier year), greeted at 09:00 in Tokyo.
    ahead = (now + timedelta(days=10)).date()
    born = date(1990, ahead.month, 28 if (ahead.month, ahead.day) == (2, 29) else ahead.day)
    result, state, doubles, _ = await run(
        time_skipping_env,
        task_queue,
        sqlite_url,
        {"birthday": born.isoformat(), "timezone": "Asia/Tokyo"},
        past="next_anniversary",
    )
    assert result.status is JourneyStatus.completed
    [(_, sent_at)] = doubles.sends
    due = datetime.combine(
        born.replace(year=ahead.year), datetime.min.time().replace(hour=9), ZoneInfo("Asia/Tokyo")
    ).astimezone(UTC)
    assert due <= sent_at < due + timedelta(minutes=1)
    wait = next(r for r in state.history if r.step_id == "until_birthday")
    assert wait.outcome.startswith("waited ") and "next anniversary" in wait.outcome
