"""Migrating waiting journeys to a newer campaign version on the time-skipping server: the
`migrate` update applied at the journey's safe point, and temporal.migrate's dry run and
migration over several journeys."""

from __future__ import annotations

from datetime import timedelta

import pytest
from temporalio.client import WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError

from core.definition import parse_campaign
from core.journey import (
    QUERY_STATE,
    SIGNAL_EVENT,
    UPDATE_MIGRATE,
    JourneyState,
    JourneyStatus,
    MigrateRequest,
    MigrateResult,
    PolicyAction,
    PolicyDecision,
    idempotency_key,
)
from temporal import search_attributes
from temporal.migrate import migrate_journeys
from tests.workflows.test_journey import event, start

CART_V2 = parse_campaign(
    {
        "id": "cart",
        "name": "Cart abandonment",
        "entry": {"event": "Product Added"},
        "goals": [{"event": "Order Completed"}],
        "steps": [
            {"id": "pause", "type": "wait", "duration": "36h", "next": "coupon"},
            {"id": "coupon", "type": "send", "channel": "sandbox", "template": "coupon"},
        ],
        "templates": {"coupon": {"body": "10% off what is in your cart"}},
    }
)
"""Version 2 of tests.workflows.test_journey's CART: a longer wait, another message."""


def to_v2(steps: dict[str, str] | None = None, **fields: object) -> MigrateRequest:
    return MigrateRequest(
        from_version=1,
        to_version=2,
        plan=CART_V2.plan(),
        steps={"wait": "pause"} if steps is None else steps,
        **fields,
    )


async def test_a_waiting_journey_moves_to_v2_and_sends_its_message_after_the_rest_of_the_wait(
    time_skipping_env, task_queue, doubles, worker
):
    env = time_skipping_env
    began = await env.get_current_time()
    handle = await start(env.client, task_queue)
    await env.sleep(timedelta(hours=10))

    result = await handle.execute_update(
        UPDATE_MIGRATE, to_v2(by="ops", reason="new coupon"), result_type=MigrateResult
    )
    assert (result.from_version, result.from_step) == (1, "wait")
    assert (result.to_version, result.to_step) == (2, "pause")
    assert result.state.current_step == "pause"
    # The time already waited counts: 10 h of the new 36 h are behind it.
    assert result.state.step_started_at is not None
    assert result.state.step_started_at - began < timedelta(minutes=1)
    moved = [r for r in result.state.history if r.outcome.startswith("migrated")]
    assert [(r.step_id, r.outcome) for r in moved] == [
        ("wait", "migrated from v1 step wait to v2 step pause by ops: new coupon")
    ]
    assert result.state.history[-1].step_id == "pause"
    described = await handle.describe()
    assert described.typed_search_attributes.get(search_attributes.CAMPAIGN_VERSION) == 2
    assert described.typed_search_attributes.get(search_attributes.STEP) == "pause"

    # Moved once: a second migration from v1 is refused (it runs v2 now).
    with pytest.raises(WorkflowUpdateFailedError) as again:
        await handle.execute_update(UPDATE_MIGRATE, to_v2())
    assert isinstance(again.value.cause, ApplicationError)
    assert again.value.cause.message == "journey runs version 2, not 1"

    done = await handle.result()
    assert done.status is JourneyStatus.completed and done.sends == 1
    [(sent, at)] = doubles.sends
    # v2's message, at v2's time: 36 h after the journey began, not 24 h, nor 10 h + 36 h.
    assert (sent.campaign_version, sent.step_id, sent.template) == (2, "coupon", "coupon")
    assert timedelta(hours=36) <= at - began < timedelta(hours=36, minutes=1)
    assert sent.idempotency_key == idempotency_key(
        handle.id, sent.entry_event.message_id, "coupon", 1
    )
    [outcome] = doubles.outcomes
    assert outcome.campaign_version == 2


async def test_dry_run_counts_then_migration_moves_the_waiting_and_never_one_mid_send(
    time_skipping_env, task_queue, doubles, worker
):
    env = time_skipping_env
    began = await env.get_current_time()
    # One journey reaches its reminder in quiet hours: deferred 9 h, mid-send.
    doubles.policy = [
        PolicyDecision(
            action=PolicyAction.defer,
            reason="quiet hours",
            defer_until=began + timedelta(hours=33),
        )
    ]
    deferred = await start(env.client, task_queue)
    await env.sleep(timedelta(hours=25))
    waiting = [await start(env.client, task_queue) for _ in range(2)]
    state = await deferred.query(QUERY_STATE, result_type=JourneyState)
    assert state.current_step == "remind" and state.deferred_until is not None
    ids = [deferred.id, *(h.id for h in waiting)]

    async def run(steps: dict[str, str], *, dry_run: bool):
        return await migrate_journeys(
            env.client,
            workflow_ids=ids,
            campaign_id="cart",
            from_version=1,
            to_version=2,
            plan=CART_V2.plan(),
            steps=steps,
            dry_run=dry_run,
        )

    mid_send = (
        "journey is mid-send (step 'remind'): only journeys waiting at a wait or wait_for "
        "step are moved"
    )
    # An unmapped step stays, and says how to map it.
    unmapped = await run({}, dry_run=True)
    assert (unmapped.journeys, unmapped.movable, unmapped.moved) == (3, 0, 0)
    by_step = {s.step: s for s in unmapped.steps}
    assert by_step["wait"].stays == {
        "step 'wait' has no mapping, and version 2 has no wait step of that id: "
        "map it (--step wait=NEW)": 2
    }
    # The dry run: how many at each step, where they would land, why the others stay.
    dry = await run({"wait": "pause"}, dry_run=True)
    assert (dry.journeys, dry.movable, dry.moved) == (3, 2, 0)
    assert [(s.step, s.type, s.journeys, s.movable, s.lands_on, s.stays) for s in dry.steps] == [
        ("remind", "send", 1, 0, None, {mid_send: 1}),
        ("wait", "wait", 2, 2, "pause", {}),
    ]
    for h in waiting:  # a dry run moves nothing
        state = await h.query(QUERY_STATE, result_type=JourneyState)
        assert state.current_step == "wait"

    # The journey mid-send refuses the update itself too.
    with pytest.raises(WorkflowUpdateFailedError) as refused:
        await deferred.execute_update(UPDATE_MIGRATE, to_v2())
    assert isinstance(refused.value.cause, ApplicationError)
    assert refused.value.cause.message == mid_send
    # …and so does a waiting one asked with no mapping.
    with pytest.raises(WorkflowUpdateFailedError) as no_mapping:
        await waiting[0].execute_update(UPDATE_MIGRATE, to_v2({}))
    assert isinstance(no_mapping.value.cause, ApplicationError)
    assert "step 'wait' has no mapping" in no_mapping.value.cause.message

    report = await run({"wait": "pause"}, dry_run=False)
    assert (report.journeys, report.movable, report.moved) == (3, 2, 2)
    assert sorted(m.workflow_id for m in report.moved_journeys) == sorted(h.id for h in waiting)
    assert {(m.from_step, m.to_step) for m in report.moved_journeys} == {("wait", "pause")}
    [stays] = report.staying_journeys
    assert (stays.workflow_id, stays.step, stays.reason) == (deferred.id, "remind", mid_send)
    assert sorted(report.moved_ids) == sorted(h.id for h in waiting)
    # Run again (its caller died before recording the first): the moved ones are found on v2
    # and named for the caller to record, not refused as strangers to v1.
    again = await run({"wait": "pause"}, dry_run=False)
    assert (again.journeys, again.moved) == (3, 0)
    assert sorted(again.moved_ids) == sorted(h.id for h in waiting)
    assert {s.step: s.stays for s in again.steps}["pause"] == {"already on version 2": 2}

    for h in (deferred, *waiting):
        assert (await h.result()).sends == 1
    sent = {r.workflow_id: (r.campaign_version, r.template) for r, _ in doubles.sends}
    # The deferred one sent v1's reminder when quiet hours ended; the moved ones v2's coupon.
    assert sent == {
        deferred.id: (1, "reminder"),
        **{h.id: (2, "coupon") for h in waiting},
    }


async def test_a_migrated_journey_keeps_its_version_across_continue_as_new(
    time_skipping_env, task_queue, doubles, worker
):
    env = time_skipping_env
    began = await env.get_current_time()
    first = await start(env.client, task_queue, history_limit=60)
    await env.sleep(timedelta(hours=2))
    await first.execute_update(UPDATE_MIGRATE, to_v2(), result_type=MigrateResult)
    latest = env.client.get_workflow_handle(first.id)
    for i in range(80):
        await latest.signal(SIGNAL_EVENT, event("Page Viewed", n=i))
    result = await first.result()  # follows the runs to the last one
    assert result.status is JourneyStatus.completed
    last = await latest.fetch_history()
    assert last.events[0].workflow_execution_started_event_attributes.continued_execution_run_id
    [(sent, at)] = doubles.sends
    assert (sent.campaign_version, sent.step_id) == (2, "coupon")
    assert timedelta(hours=36) <= at - began < timedelta(hours=36, minutes=1)
    state = await latest.query(QUERY_STATE, result_type=JourneyState)
    assert state.runs > 1
    assert any(r.outcome.startswith("migrated from v1") for r in state.history)
