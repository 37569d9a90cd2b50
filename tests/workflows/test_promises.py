"""What the README and the design promise of a running journey, each kept on a time-skipping
server: a goal or an exit still ends a journey whose send waits out quiet hours; a send
deferred again and again is given up after MAX_DEFERRALS; the interpreter stops a journey
at MAX_STEPS_PER_JOURNEY, across continue-as-new; a running journey keeps the campaign
version it started with when a new one is saved."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from sqlalchemy import select
from temporalio.testing import WorkflowEnvironment

from core.config import Settings
from core.definition import parse_campaign
from core.journey import (
    MAX_STEPS_PER_JOURNEY,
    QUERY_STATE,
    SIGNAL_EVENT,
    UPDATE_EXIT,
    ExitRequest,
    JourneyState,
    JourneyStatus,
    PolicyAction,
    PolicyDecision,
)
from store.campaigns import save_campaign
from store.models import Delivery, SandboxMessage
from store.profiles import merge_traits
from tests.fixtures.temporal import real_journey_worker
from tests.workflows.test_journey import ActivityDoubles, event, start
from workflows.journey import MAX_DEFERRALS

PROMO = parse_campaign(
    {
        "id": "promo",
        "name": "Promotion",
        "entry": {"event": "Product Viewed"},
        "goals": [{"event": "Order Completed"}],
        "exits": [{"event": "Unsubscribed"}],
        "steps": [
            {"id": "offer", "type": "send", "channel": "sandbox", "template": "t", "next": "pause"},
            {"id": "pause", "type": "wait", "duration": "1h"},
        ],
        "templates": {"t": {"subject": "10% off", "body": "Today only"}},
    }
)


def deferrals(doubles: ActivityDoubles, began, count: int) -> None:
    """The policy defers the send `count` times, each time to the next hour, then allows."""
    doubles.policy = [
        PolicyDecision(
            action=PolicyAction.defer,
            reason="quiet hours",
            defer_until=began + timedelta(hours=i + 1),
        )
        for i in range(count)
    ]


# -- a goal or an exit during a quiet-hours deferral ---------------------------------------


@pytest.mark.parametrize(
    ("ending", "status", "reason"),
    [
        ("goal", JourneyStatus.converted, "goal: Order Completed"),
        ("exit event", JourneyStatus.exited, "exit event: Unsubscribed"),
        ("operator", JourneyStatus.exited, "operator: support ticket"),
    ],
)
async def test_a_goal_or_exit_during_a_deferral_ends_the_journey_and_nothing_is_sent(
    time_skipping_env, task_queue, doubles, worker, ending, status, reason
):
    began = await time_skipping_env.get_current_time()
    doubles.policy = [
        PolicyDecision(
            action=PolicyAction.defer,
            reason="quiet hours",
            defer_until=began + timedelta(hours=9),
        )
    ]
    handle = await start(time_skipping_env.client, task_queue, PROMO)
    await time_skipping_env.sleep(timedelta(hours=2))
    state = await handle.query(QUERY_STATE, result_type=JourneyState)
    assert (state.current_step, state.deferred_until) == ("offer", began + timedelta(hours=9))

    if ending == "goal":
        await handle.signal(SIGNAL_EVENT, event("Order Completed", order_id="o-1"))
    elif ending == "exit event":
        await handle.signal(SIGNAL_EVENT, event("Unsubscribed"))
    else:
        await handle.execute_update(UPDATE_EXIT, ExitRequest(reason="support ticket"))
    result = await handle.result()

    assert (result.status, result.exit_reason) == (status, reason)
    [outcome] = doubles.outcomes
    assert (outcome.status, outcome.exit_reason) == (status, reason)
    assert outcome.ended_at < began + timedelta(hours=9)  # then, not when the window closed
    # Past the end of the window, still nothing went out, and the policy was asked once.
    await time_skipping_env.sleep(timedelta(hours=10))
    assert doubles.sends == []
    assert len(doubles.policy_checks) == 1


async def test_a_goal_during_real_quiet_hours_ends_the_journey_and_nothing_is_recorded_sent(
    own_time_skipping_env: WorkflowEnvironment, sessions
):
    """The same with the real activities: quiet hours around the server's now, in the
    user's zone; the journey is converted while its send is deferred."""
    env = own_time_skipping_env
    now = await env.get_current_time()
    settings = Settings(
        _env_file=None,
        caps=[],
        quiet_hours_start=f"{now - timedelta(hours=1):%H:%M}",
        quiet_hours_end=f"{now + timedelta(hours=3):%H:%M}",
    )
    user = f"u-{uuid.uuid4().hex[:8]}"
    async with sessions() as session, session.begin():
        await save_campaign(session=session, definition=PROMO)
        await merge_traits(session=session, user_id=user, traits={"timezone": "Etc/UTC"})
    async with real_journey_worker(env.client, sessions, settings) as queue:
        handle = await start(env.client, queue, PROMO, user=user)
        await env.sleep(timedelta(hours=1))
        state = await handle.query(QUERY_STATE, result_type=JourneyState)
        assert state.current_step == "offer" and state.deferred_until is not None
        assert state.waiting_for is not None and "quiet hours" in state.waiting_for
        await handle.signal(SIGNAL_EVENT, event("Order Completed"))
        result = await handle.result()
        await env.sleep(timedelta(hours=4))  # past the window's end

    assert result.status is JourneyStatus.converted
    async with sessions() as session:
        rows = (await session.scalars(select(Delivery).where(Delivery.user_id == user))).all()
        kept = (
            await session.scalars(select(SandboxMessage).where(SandboxMessage.user_id == user))
        ).all()
    assert rows == [] and kept == []


# -- the deferral bound ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("deferred", "outcome"),
    [
        (MAX_DEFERRALS - 1, "sent via sandbox"),
        (MAX_DEFERRALS, f"suppressed: still deferred after {MAX_DEFERRALS} tries"),
    ],
)
async def test_a_send_deferred_every_time_is_given_up_after_max_deferrals(
    time_skipping_env, task_queue, doubles, worker, deferred, outcome
):
    began = await time_skipping_env.get_current_time()
    deferrals(doubles, began, deferred)
    handle = await start(time_skipping_env.client, task_queue, PROMO)
    result = await handle.result()
    state = await handle.query(QUERY_STATE, result_type=JourneyState)

    assert result.status is JourneyStatus.completed  # the journey goes on either way
    offer = next(r for r in state.history if r.step_id == "offer")
    assert offer.outcome.startswith(outcome)
    assert [r.step_id for r in state.history] == ["offer", "pause"]
    # One question per deferral (and the allowing one), all about the same send.
    assert len(doubles.policy_checks) == MAX_DEFERRALS
    assert len({c.idempotency_key for c in doubles.policy_checks}) == 1
    sent = [r.step_id for r, _ in doubles.sends]
    assert sent == (["offer"] if deferred < MAX_DEFERRALS else [])
    # Each deferral was waited out on a timer: the last question came 29 hours in.
    last = doubles.policy_checks[-1].now
    assert last is not None and last - began >= timedelta(hours=MAX_DEFERRALS - 1)


# -- the step bound ------------------------------------------------------------------------

SPIN = parse_campaign(
    {
        "id": "spin",
        "name": "Checks every minute, forever",
        "entry": {"event": "Trial Started"},
        "steps": [
            {"id": "tick", "type": "wait", "duration": "1m", "next": "again"},
            {
                "id": "again",
                "type": "branch",
                "branches": [
                    {
                        "conditions": [
                            {"path": "event.name", "op": "eq", "value": "Trial Started"}
                        ],
                        "next": "tick",
                    }
                ],
            },
        ],
        "templates": {},
    }
)


async def test_a_journey_that_never_ends_is_stopped_at_the_step_bound_across_runs(
    time_skipping_env, task_queue, doubles, worker
):
    """A journey continued as new carries its step count: one 60 steps short of the bound,
    whose runs continue as new every 50 history events, is stopped at the bound exactly —
    by the same count a journey counting from its first step reaches (the whole loop from
    step 1 runs the same code, 10,000 steps and 20 s later)."""
    entry = event("Trial Started")
    near_the_end = JourneyState(
        current_step="tick",
        visits={"tick": 1},
        seen_event_ids=[entry.message_id],
        last_event=entry,
        steps_executed=MAX_STEPS_PER_JOURNEY - 60,
    )
    first = await start(
        time_skipping_env.client,
        task_queue,
        SPIN,
        entry=entry,
        state=near_the_end,
        history_limit=50,
    )
    result = await first.result()

    assert result.status is JourneyStatus.failed
    assert result.exit_reason == f"stopped after {MAX_STEPS_PER_JOURNEY} steps"
    assert result.steps_executed == MAX_STEPS_PER_JOURNEY
    [outcome] = doubles.outcomes
    assert outcome.status is JourneyStatus.failed
    # It took several runs to get there.
    latest = time_skipping_env.client.get_workflow_handle(first.id)
    last_run = await latest.fetch_history()
    started = last_run.events[0].workflow_execution_started_event_attributes
    assert started.continued_execution_run_id
    assert (await latest.describe()).run_id != first.result_run_id


# -- a new version does not change a running journey ---------------------------------------

V1 = parse_campaign(
    {
        "id": "winback",
        "name": "Win back",
        "entry": {"event": "Cart Abandoned"},
        "steps": [
            {"id": "wait", "type": "wait", "duration": "24h", "next": "remind"},
            {"id": "remind", "type": "send", "channel": "sandbox", "template": "t"},
        ],
        "templates": {"t": {"subject": "v1", "body": "v1: your cart is waiting"}},
    }
)
V2 = parse_campaign(
    {
        "id": "winback",
        "name": "Win back, sooner",
        "entry": {"event": "Cart Abandoned"},
        "steps": [
            {"id": "soon", "type": "wait", "duration": "1h", "next": "coupon"},
            {"id": "coupon", "type": "send", "channel": "sandbox", "template": "t"},
        ],
        "templates": {"t": {"subject": "v2", "body": "v2: here is 10% off"}},
    }
)


async def test_a_running_journey_keeps_its_version_when_a_new_one_is_saved(
    own_time_skipping_env: WorkflowEnvironment, sessions
):
    env = own_time_skipping_env
    settings = Settings(_env_file=None, quiet_hours_start=None, caps=[])
    old, new = f"old-{uuid.uuid4().hex[:8]}", f"new-{uuid.uuid4().hex[:8]}"
    async with sessions() as session, session.begin():
        _, first, _ = await save_campaign(session=session, definition=V1)
    began = await env.get_current_time()
    async with real_journey_worker(env.client, sessions, settings) as queue:
        running = await start(env.client, queue, V1, user=old, version=first.version)
        await env.sleep(timedelta(hours=2))
        async with sessions() as session, session.begin():
            _, second, written = await save_campaign(session=session, definition=V2)
        assert written and (first.version, second.version) == (1, 2)
        # What the router starts from now on: the new version.
        later = await start(env.client, queue, V2, user=new, version=second.version)
        # One result at a time: each call unlocks the server's clock while it waits, and
        # two at once leave it skipping past what the other still waits for.
        results = [await running.result(), await later.result()]
        states = [await h.query(QUERY_STATE, result_type=JourneyState) for h in (running, later)]

    assert [r.status for r in results] == [JourneyStatus.completed] * 2
    old_state, new_state = states
    assert [r.step_id for r in old_state.history] == ["wait", "remind"]
    assert [r.step_id for r in new_state.history] == ["soon", "coupon"]
    # The running journey still waited its 24 h, not the new version's 1 h.
    remind = old_state.history[-1]
    assert remind.at - began >= timedelta(hours=24)
    async with sessions() as session:
        rows = {
            r.user_id: r
            for r in await session.scalars(select(Delivery).where(Delivery.user_id.in_([old, new])))
        }
        kept = {
            m.user_id: m
            for m in await session.scalars(
                select(SandboxMessage).where(SandboxMessage.user_id.in_([old, new]))
            )
        }
    assert (rows[old].campaign_version, rows[old].step_id) == (1, "remind")
    assert (rows[new].campaign_version, rows[new].step_id) == (2, "coupon")
    # Its message came from its own version's templates, read when it was sent.
    assert (kept[old].subject, kept[old].body) == ("v1", "v1: your cart is waiting")
    assert (kept[new].subject, kept[new].body) == ("v2", "v2: here is 10% off")
