"""JourneyWorkflow on the time-skipping server: days of journey time in milliseconds."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio import activity
from temporalio.client import Client, WorkflowHandle, WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.journey import JourneyActivities
from core.config import Settings
from core.definition import CampaignDefinition, SplitStep, parse_campaign
from core.events import JourneyEvent
from core.experiments import HOLDOUT, choose_variant, in_holdout
from core.journey import (
    ACTIVITY_CHECK_POLICY,
    ACTIVITY_DELIVER,
    ACTIVITY_FAIL_DELIVERY,
    ACTIVITY_HOLD_OUT,
    ACTIVITY_LOAD_PROFILE,
    ACTIVITY_RECORD_OUTCOME,
    ACTIVITY_RECORD_VARIANT,
    ACTIVITY_RESOLVE_WAIT,
    ACTIVITY_SEND,
    QUERY_STATE,
    SIGNAL_EVENT,
    UPDATE_EXIT,
    DeliverRequest,
    DeliverResult,
    DeliveryFailure,
    DeliveryStatus,
    ExitRequest,
    HoldOut,
    JourneyInput,
    JourneyOutcome,
    JourneyState,
    JourneyStatus,
    PolicyAction,
    PolicyDecision,
    PolicyRequest,
    Profile,
    ProfileRequest,
    SendRequest,
    SendResult,
    VariantTaken,
    WaitRequest,
    WaitResolution,
    idempotency_key,
    journey_id,
)
from store.db import create_engine, session_factory
from store.profiles import merge_traits
from temporal.search_attributes import journey_search_attributes
from tests.fixtures.dst import eu_spring_forward, next_year, us_spring_forward
from tests.fixtures.dst import utc as dst_utc
from tests.fixtures.temporal import SUGGEST_CONTINUE_AS_NEW_AT
from workflows.journey import JourneyWorkflow

CART = parse_campaign(
    {
        "id": "cart",
        "name": "Cart abandonment",
        "entry": {"event": "Product Added"},
        "goals": [{"event": "Order Completed"}],
        "steps": [
            {"id": "wait", "type": "wait", "duration": "24h", "next": "remind"},
            {"id": "remind", "type": "send", "channel": "sandbox", "template": "reminder"},
        ],
        "templates": {"reminder": {"body": "Your cart misses you"}},
    }
)


class ActivityDoubles:
    """Test doubles registered under the real activities' names."""

    def __init__(self, *, traits: dict | None = None, fail: str | None = None):
        self.sends: list[tuple[DeliverRequest, datetime]] = []
        self.outcomes: list[JourneyOutcome] = []
        self.traits = traits or {}
        self.fail = fail
        self.env: WorkflowEnvironment | None = None
        self.gate: asyncio.Event | None = None
        """When set, each send waits for it: lets a test act while a send is in flight."""
        self.sending = asyncio.Event()
        self.crash: str | None = None
        """When set, each send raises a non-retryable error, as if retries had run out."""
        self.closed: list[DeliveryFailure] = []
        self.policy: list[PolicyDecision] = []
        """Answers the send policy gives, in order; then `allow`."""
        self.policy_checks: list[PolicyRequest] = []
        self.broken: dict[str, str] = {}
        """Activity name → the final error it fails with (policy, profile, local time)."""
        self.outcome_gate: asyncio.Event | None = None
        """When set, recording the outcome waits for it: the journey has ended, its workflow
        still runs."""
        self.recording = asyncio.Event()
        self.variants: list[VariantTaken] = []
        self.held_out: list[HoldOut] = []

    def all(self, **real: Callable[..., Any]) -> list[Callable[..., Any]]:
        """The doubles to register, any of them replaced by a real activity given by the
        double's name (`resolve_wait=JourneyActivities(...).resolve_wait`)."""
        doubles = {
            "deliver": self.deliver,
            "fail_delivery": self.fail_delivery,
            "load_profile": self.load_profile,
            "record_outcome": self.record_outcome,
            "check_policy": self.check_policy,
            "resolve_wait": self.resolve_wait,
            "record_variant": self.record_variant,
            "hold_out": self.hold_out,
            "send": self.send,
        }
        unknown = set(real) - set(doubles)
        assert not unknown, f"no double named {sorted(unknown)}"
        return [real.get(name, double) for name, double in doubles.items()]

    def _maybe_broken(self, name: str) -> None:
        if name in self.broken:
            raise ApplicationError(self.broken[name], type="Broken", non_retryable=True)

    @activity.defn(name=ACTIVITY_DELIVER)
    async def deliver(self, request: DeliverRequest) -> DeliverResult:
        now = await self.env.get_current_time() if self.env else datetime.now(UTC)
        self.sends.append((request, now))
        self.sending.set()
        if self.crash:
            raise ApplicationError(self.crash, non_retryable=True)
        if self.gate is not None:
            await self.gate.wait()
        if self.fail:
            return DeliverResult(
                status=DeliveryStatus.failed,
                delivery_id=len(self.sends),
                idempotency_key=request.idempotency_key,
                reason=self.fail,
            )
        return DeliverResult(
            status=DeliveryStatus.sent,
            delivery_id=len(self.sends),
            idempotency_key=request.idempotency_key,
        )

    @activity.defn(name=ACTIVITY_CHECK_POLICY)
    async def check_policy(self, request: PolicyRequest) -> PolicyDecision:
        self._maybe_broken(ACTIVITY_CHECK_POLICY)
        self.policy_checks.append(request)
        if self.policy:
            return self.policy.pop(0)
        return PolicyDecision(action=PolicyAction.allow)

    @activity.defn(name=ACTIVITY_SEND)
    async def send(self, request: SendRequest) -> SendResult:
        """The policy double, then, when it allows, the delivery double: as the real `send`
        runs the real policy and delivery."""
        decision = await self.check_policy(request)
        if decision.action is not PolicyAction.allow:
            return SendResult(decision=decision)
        return SendResult(decision=decision, delivery=await self.deliver(request))

    @activity.defn(name=ACTIVITY_RESOLVE_WAIT)
    async def resolve_wait(self, request: WaitRequest) -> WaitResolution:
        """Only fails (see `broken`). A test whose journey waits for a local time registers
        the real activity instead (`all(resolve_wait=...)`, see `real_wait_resolver`): a
        copy of its rule here would test the copy."""
        self._maybe_broken(ACTIVITY_RESOLVE_WAIT)
        raise ApplicationError(
            "no resolve_wait registered: pass the real one to ActivityDoubles.all()",
            type="NoDouble",
            non_retryable=True,
        )

    @activity.defn(name=ACTIVITY_FAIL_DELIVERY)
    async def fail_delivery(self, failure: DeliveryFailure) -> None:
        self.closed.append(failure)

    @activity.defn(name=ACTIVITY_RECORD_OUTCOME)
    async def record_outcome(self, outcome: JourneyOutcome) -> None:
        self.recording.set()
        if self.outcome_gate is not None:
            await self.outcome_gate.wait()
        self.outcomes.append(outcome)

    @activity.defn(name=ACTIVITY_RECORD_VARIANT)
    async def record_variant(self, taken: VariantTaken) -> None:
        self.variants.append(taken)

    @activity.defn(name=ACTIVITY_HOLD_OUT)
    async def hold_out(self, request: HoldOut) -> None:
        self.held_out.append(request)

    @activity.defn(name=ACTIVITY_LOAD_PROFILE)
    async def load_profile(self, request: ProfileRequest) -> Profile:
        self._maybe_broken(ACTIVITY_LOAD_PROFILE)
        return Profile(user_id=request.user_id, traits=self.traits)


def event(name: str, /, **properties: object) -> JourneyEvent:
    return JourneyEvent(
        message_id=str(uuid.uuid4()),
        name=name,
        timestamp=datetime.now(UTC),
        properties=properties,
    )


async def start(
    client: Client,
    task_queue: str,
    definition=CART,
    *,
    user: str | None = None,
    entry: JourneyEvent | None = None,
    history_limit: int | None = None,
    task_timeout: timedelta | None = None,
    version: int = 1,
    state: JourneyState | None = None,
) -> WorkflowHandle:
    """Start a journey as the router does (signal-with-start of the entry event), for a new
    user unless one is named: workflow ids never repeat across tests on a shared server."""
    user = user or f"user-{uuid.uuid4().hex[:8]}"
    entry = entry or event(definition.entry.event, sku="SKU-1")
    plan = definition.plan()
    return await client.start_workflow(
        JourneyWorkflow.run,
        JourneyInput(
            campaign_id=definition.id,
            campaign_version=version,
            user_id=user,
            plan=plan,
            entry_event=entry,
            state=state,
            history_limit=history_limit,
        ),
        id=journey_id(definition.id, user),
        task_queue=task_queue,
        search_attributes=journey_search_attributes(
            campaign_id=definition.id,
            user_id=user,
            campaign_version=version,
            step_id=state.current_step if state and state.current_step else plan.start_step,
        ),
        start_signal=SIGNAL_EVENT,
        start_signal_args=[entry],
        static_summary=f"{definition.name} for {user}",
        task_timeout=task_timeout,
    )


async def test_no_order_in_24h_sends_exactly_one_reminder_at_24h(
    time_skipping_env, task_queue, doubles, worker
):
    began = await time_skipping_env.get_current_time()
    handle = await start(time_skipping_env.client, task_queue)
    result = await handle.result()

    assert result.status is JourneyStatus.completed
    assert len(doubles.sends) == 1
    request, sent_at = doubles.sends[0]
    assert request.step_id == "remind" and request.channel == "sandbox"
    assert timedelta(hours=24) <= sent_at - began < timedelta(hours=24, minutes=1)
    assert request.idempotency_key == idempotency_key(
        handle.id, request.entry_event.message_id, "remind", 1
    )


async def test_order_at_23h59m_ends_journey_as_conversion_without_reminder(
    time_skipping_env, task_queue, doubles, worker
):
    handle = await start(time_skipping_env.client, task_queue)
    await time_skipping_env.sleep(timedelta(hours=23, minutes=59))
    await handle.signal(SIGNAL_EVENT, event("Order Completed", order_id="o-1"))
    result = await handle.result()

    assert result.status is JourneyStatus.converted
    assert result.exit_reason == "goal: Order Completed"
    assert doubles.sends == []
    [outcome] = doubles.outcomes  # the conversion is recorded for the funnel
    assert outcome.status is JourneyStatus.converted
    assert outcome.workflow_id == handle.id
    # Well past the reminder's time, still nothing went out.
    await time_skipping_env.sleep(timedelta(hours=2))
    assert doubles.sends == []


WAIT_FOR = parse_campaign(
    {
        "id": "wait-for",
        "name": "Wait for a review",
        "entry": {"event": "Order Completed"},
        "steps": [
            {
                "id": "await_review",
                "type": "wait_for",
                "event": "Review Submitted",
                "conditions": [{"path": "properties.stars", "op": "gte", "value": 4}],
                "timeout": "7d",
                "on_event": "thanks",
                "on_timeout": "nudge",
            },
            {"id": "thanks", "type": "send", "channel": "sandbox", "template": "t"},
            {"id": "nudge", "type": "send", "channel": "sandbox", "template": "t"},
        ],
        "templates": {"t": {"body": "x"}},
    }
)


async def test_duplicate_event_changes_state_once(time_skipping_env, task_queue, doubles, worker):
    handle = await start(time_skipping_env.client, task_queue, WAIT_FOR)
    low = event("Review Submitted", stars=2)
    await handle.signal(SIGNAL_EVENT, low)
    await handle.signal(SIGNAL_EVENT, low)
    state = await handle.query(QUERY_STATE, result_type=JourneyState)
    assert state.events_received == 1  # the duplicate was dropped
    assert state.current_step == "await_review"  # 2 stars do not meet the condition

    good = event("Review Submitted", stars=5)
    await handle.signal(SIGNAL_EVENT, good)
    await handle.signal(SIGNAL_EVENT, good)
    result = await handle.result()
    state = await handle.query(QUERY_STATE, result_type=JourneyState)
    assert result.status is JourneyStatus.completed
    assert state.events_received == 2
    assert [s[0].step_id for s in doubles.sends] == ["thanks"]
    assert state.last_event is not None and state.last_event.message_id == good.message_id


async def test_wait_for_times_out_to_its_own_next_step(
    time_skipping_env, task_queue, doubles, worker
):
    handle = await start(time_skipping_env.client, task_queue, WAIT_FOR)
    result = await handle.result()
    assert result.status is JourneyStatus.completed
    assert [s[0].step_id for s in doubles.sends] == ["nudge"]


async def test_wait_survives_continue_as_new_with_its_deadline(
    time_skipping_env, task_queue, doubles, worker
):
    began = await time_skipping_env.get_current_time()
    first = await start(time_skipping_env.client, task_queue, history_limit=60)
    handle = time_skipping_env.client.get_workflow_handle(first.id)
    for i in range(100):
        await handle.signal(SIGNAL_EVENT, event("Page Viewed", n=i))
    # No query while runs turn over: the time-skipping server's continue-as-new is not
    # atomic (temporalio/sdk-java#1538), and a query that meets it waits out its deadline.
    # The finished chain tells the same story.
    result = await first.result()
    assert result.status is JourneyStatus.completed
    last = await handle.fetch_history()
    assert last.events[0].workflow_execution_started_event_attributes.continued_execution_run_id
    assert len(doubles.sends) == 1
    assert timedelta(hours=24) <= doubles.sends[0][1] - began < timedelta(hours=24, minutes=1)


async def test_operator_exit_update_and_validator(time_skipping_env, task_queue, doubles, worker):
    doubles.outcome_gate = asyncio.Event()
    # The outcome is a local activity: while the gate holds it, the workflow task stays open
    # and an update waits for the task's heartbeat (80% of its timeout), so a short timeout.
    handle = await start(time_skipping_env.client, task_queue, task_timeout=timedelta(seconds=2))
    try:
        # An exit for journeys at another step (a bulk exit at one step) leaves this one.
        with pytest.raises(WorkflowUpdateFailedError) as elsewhere:
            await handle.execute_update(UPDATE_EXIT, ExitRequest(reason="r", step="remind"))
        assert isinstance(elsewhere.value.cause, ApplicationError)
        assert elsewhere.value.cause.message == "not at step 'remind': the journey is at 'wait'"
        state = await handle.execute_update(
            UPDATE_EXIT, ExitRequest(reason="customer asked", step="wait"), result_type=JourneyState
        )
        assert state.status is JourneyStatus.exited
        assert state.exit_reason == "operator: customer asked"
        # Ended, still recording its outcome: the validator refuses a second exit.
        await asyncio.wait_for(doubles.recording.wait(), timeout=30)
        with pytest.raises(WorkflowUpdateFailedError) as refused:
            await handle.execute_update(UPDATE_EXIT, ExitRequest(reason="again"))
        assert isinstance(refused.value.cause, ApplicationError)
        assert refused.value.cause.message == "journey already ended: exited"
    finally:
        doubles.outcome_gate.set()
    result = await handle.result()
    assert result.status is JourneyStatus.exited
    assert result.exit_reason == "operator: customer asked"  # the refused exit changed nothing
    assert doubles.sends == []
    # Once the workflow has closed, the server refuses (the time-skipping server says the
    # update is not found).
    with pytest.raises(RPCError, match="not found") as closed:
        await handle.execute_update(UPDATE_EXIT, ExitRequest(reason="again"))
    assert closed.value.status is RPCStatusCode.NOT_FOUND


BRANCHY = parse_campaign(
    {
        "id": "branchy",
        "name": "Plan-based",
        "entry": {"event": "Signed Up"},
        "exits": [{"event": "Unsubscribed"}],
        "steps": [
            {
                "id": "by_plan",
                "type": "branch",
                "branches": [
                    {
                        "conditions": [{"path": "traits.plan", "op": "eq", "value": "pro"}],
                        "next": "pro",
                    },
                    {
                        "conditions": [{"path": "properties.source", "op": "eq", "value": "ads"}],
                        "next": "ads",
                    },
                ],
                "else": "basic",
            },
            {"id": "pro", "type": "send", "channel": "sandbox", "template": "t", "next": "done"},
            {"id": "ads", "type": "send", "channel": "sandbox", "template": "t", "next": "done"},
            {
                "id": "basic",
                "type": "send",
                "channel": "sandbox",
                "template": "t",
                "on_failure": "exit",
                "next": "later",
            },
            {"id": "later", "type": "wait", "duration": "1d", "next": "done"},
            {"id": "done", "type": "exit"},
        ],
        "templates": {"t": {"body": "x"}},
    }
)


@pytest.mark.parametrize(
    ("traits", "properties", "expected"),
    [({"plan": "pro"}, {}, "pro"), ({}, {"source": "ads"}, "ads"), ({}, {}, "basic")],
)
async def test_branch_on_traits_and_event_properties(
    time_skipping_env, task_queue, doubles, worker, traits, properties, expected
):
    doubles.traits = traits
    handle = await start(
        time_skipping_env.client, task_queue, BRANCHY, entry=event("Signed Up", **properties)
    )
    result = await handle.result()
    # An `exit` step is reported as what it is (patch exit-step-exited-v1).
    assert result.status is JourneyStatus.exited
    assert result.exit_reason == "exit step 'done'"
    assert [s[0].step_id for s in doubles.sends] == [expected]
    [outcome] = doubles.outcomes
    assert outcome.status is JourneyStatus.exited


async def test_failed_send_with_on_failure_exit_ends_journey(
    time_skipping_env, task_queue, doubles, worker
):
    doubles.fail = "provider said 400: bad number"
    handle = await start(time_skipping_env.client, task_queue, BRANCHY)
    result = await handle.result()
    assert result.status is JourneyStatus.failed
    assert "bad number" in (result.exit_reason or "")


async def test_exit_event_ends_a_waiting_journey(time_skipping_env, task_queue, doubles, worker):
    doubles.traits = {}
    handle = await start(time_skipping_env.client, task_queue, BRANCHY)
    await time_skipping_env.sleep(timedelta(hours=1))
    state = await handle.query(QUERY_STATE, result_type=JourneyState)
    assert state.current_step == "later"
    assert state.waiting_for and state.waiting_for.startswith("waiting 1d")
    await handle.signal(SIGNAL_EVENT, event("Unsubscribed"))
    result = await handle.result()
    assert result.status is JourneyStatus.exited
    assert result.exit_reason == "exit event: Unsubscribed"


EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "campaigns"


def example(name: str):
    return parse_campaign((EXAMPLES / f"{name}.yaml").read_text())


def cart_user(cart: CampaignDefinition, *, holdout: bool, variant: str | None = None) -> str:
    """A user the example's hashes put in (or out of) its holdout, and in `variant`."""
    split = next(s for s in cart.steps if isinstance(s, SplitStep))
    for i in range(10_000):
        user = f"shopper-{i}"
        if in_holdout(cart.id, user, cart.holdout) is not holdout:
            continue
        if (
            variant is None
            or choose_variant(cart.id, split.id, user, split.variants).name == variant
        ):
            return user
    raise AssertionError("no such user in 10,000")


@pytest.mark.parametrize(
    ("variant", "step", "template"),
    [
        ("coupon", "remind-with-coupon", "cart_reminder"),
        ("plain", "remind-without-coupon", "cart_reminder_plain"),
    ],
)
async def test_shipped_cart_example_reminds_once_at_24h_with_the_users_variant(
    time_skipping_env, task_queue, doubles, worker, variant, step, template
):
    cart = example("cart-abandonment")
    user = cart_user(cart, holdout=False, variant=variant)
    began = await time_skipping_env.get_current_time()
    entry = event("Product Added", product_id="p-1", name="Umbrella", price=19.5)
    handle = await start(time_skipping_env.client, task_queue, cart, user=user, entry=entry)
    result = await handle.result()
    assert result.status is JourneyStatus.completed
    [(request, sent_at)] = doubles.sends
    assert (request.step_id, request.template, request.variant) == (step, template, variant)
    assert timedelta(hours=24) <= sent_at - began < timedelta(hours=24, minutes=1)
    [taken] = doubles.variants
    assert (taken.step_id, taken.variant) == ("remind", variant)


async def test_shipped_cart_example_holds_out_its_holdout(
    time_skipping_env, task_queue, doubles, worker
):
    cart = example("cart-abandonment")
    user = cart_user(cart, holdout=True)
    entry = event("Product Added", product_id="p-1")
    handle = await start(time_skipping_env.client, task_queue, cart, user=user, entry=entry)
    assert (await handle.result()).status is JourneyStatus.completed
    assert doubles.sends == [] and doubles.variants == []
    [held] = doubles.held_out
    assert held.send.variant == HOLDOUT and held.send.step_id.startswith("remind-")


@pytest.mark.parametrize(("active", "sent"), [(True, ["welcome"]), (False, ["welcome", "tips"])])
async def test_shipped_welcome_example_sends_tips_only_to_inactive_users(
    time_skipping_env, task_queue, doubles, worker, active, sent
):
    welcome = example("welcome-series")
    # The view arrives while the welcome message is being sent, as it does when a Segment
    # batch carries both events: the wait_for that follows must still see it.
    doubles.gate = asyncio.Event()
    handle = await start(time_skipping_env.client, task_queue, welcome)
    try:
        await asyncio.wait_for(doubles.sending.wait(), timeout=30)
        if active:
            await handle.signal(SIGNAL_EVENT, event("Product Viewed", product_id="p-9"))
            state = await handle.query(QUERY_STATE, result_type=JourneyState)
            assert state.current_step == "welcome" and len(state.recent_events) == 1
    finally:
        doubles.gate.set()  # never leave the worker's shutdown waiting on a held send
    result = await handle.result()
    assert result.status is JourneyStatus.completed
    assert [r.step_id for r, _ in doubles.sends] == sent


async def test_a_send_whose_retries_run_out_is_closed_and_the_journey_goes_on(
    time_skipping_env, task_queue, doubles, worker
):
    doubles.crash = "provider unreachable for a day"
    handle = await start(time_skipping_env.client, task_queue, WAIT_FOR)
    await handle.signal(SIGNAL_EVENT, event("Review Submitted", stars=5))
    result = await handle.result()
    assert result.status is JourneyStatus.completed  # on_failure: continue
    [closed] = doubles.closed
    assert closed.idempotency_key == doubles.sends[0][0].idempotency_key
    assert "provider unreachable for a day" in closed.reason


@pytest.mark.parametrize(
    ("broken", "definition"),
    [
        # The send policy fails for good inside `send`: that is a send whose retries ran
        # out (the step's `on_failure`, tested above), not this.
        (ACTIVITY_LOAD_PROFILE, "BRANCHY"),
        (ACTIVITY_RESOLVE_WAIT, "RENEWAL"),
    ],
)
async def test_an_activity_that_fails_for_good_ends_the_journey_as_failed_and_recorded(
    time_skipping_env, task_queue, doubles, worker, broken, definition
):
    doubles.broken[broken] = "campaign 'x' version 1 no longer validates"
    handle = await start(time_skipping_env.client, task_queue, globals()[definition])
    result = await handle.result()  # the workflow completes: no failed, unrecorded run
    assert result.status is JourneyStatus.failed
    assert result.exit_reason == f"{broken} failed: campaign 'x' version 1 no longer validates"
    [outcome] = doubles.outcomes
    assert (outcome.status, outcome.exit_reason) == (result.status, result.exit_reason)
    assert doubles.sends == []


async def test_thousands_of_events_continue_as_new_when_the_server_suggests_and_keep_state(
    dev_server, task_queue
):
    """On the real dev server, which suggests continue-as-new early (see the fixture), with
    no limit of our own: the journey continues as new when Temporal says so, and its state —
    events seen, the step, the wait's deadline, the send's key — goes with it."""
    doubles = ActivityDoubles()
    async with Worker(
        dev_server.client,
        task_queue=task_queue,
        workflows=[JourneyWorkflow],
        activities=doubles.all(),
    ):
        first = await start(dev_server.client, task_queue, WAIT_FOR)
        # Address the journey by id, as the router does: signals reach the current run.
        handle = dev_server.client.get_workflow_handle(first.id)
        total = SUGGEST_CONTINUE_AS_NEW_AT * 3
        for chunk in range(0, total, 100):
            await asyncio.gather(
                *(
                    handle.signal(SIGNAL_EVENT, event("Review Submitted", stars=1, n=i))
                    for i in range(chunk, chunk + 100)
                )
            )
        state = await handle.query(QUERY_STATE, result_type=JourneyState)
        assert state.events_received == total
        assert state.runs > 1, "the journey should have continued as new"
        assert state.current_step == "await_review"
        assert (await handle.describe()).run_id != first.result_run_id

        await handle.signal(SIGNAL_EVENT, event("Review Submitted", stars=5))
        result = await first.result()
    assert result.status is JourneyStatus.completed
    assert [s[0].step_id for s in doubles.sends] == ["thanks"]
    # The send's idempotency key is stable across continue-as-new (same entry, step, visit).
    assert doubles.sends[0][0].visit == 1


LOOP = parse_campaign(
    {
        "id": "daily-nudge",
        "name": "Nudge daily until they act",
        "entry": {"event": "Trial Started"},
        "goals": [{"event": "Subscribed"}],
        "steps": [
            {"id": "nudge", "type": "send", "channel": "sandbox", "template": "t", "next": "day"},
            {"id": "day", "type": "wait", "duration": "1d", "next": "again"},
            {
                "id": "again",
                "type": "branch",
                "branches": [
                    {
                        "conditions": [
                            {"path": "event.name", "op": "eq", "value": "Trial Started"}
                        ],
                        "next": "nudge",
                    }
                ],
            },
        ],
        "templates": {"t": {"body": "x"}},
    }
)


async def test_a_deliberate_second_send_gets_its_own_key(
    time_skipping_env, task_queue, doubles, worker
):
    handle = await start(time_skipping_env.client, task_queue, LOOP)
    await time_skipping_env.sleep(timedelta(days=2, hours=12))
    await handle.signal(SIGNAL_EVENT, event("Subscribed"))
    assert (await handle.result()).status is JourneyStatus.converted
    requests = [r for r, _ in doubles.sends]
    assert [r.visit for r in requests] == [1, 2, 3]
    assert len({r.idempotency_key for r in requests}) == 3  # one key per visit


async def test_quiet_hours_defer_a_send_on_a_durable_timer(
    time_skipping_env, task_queue, doubles, worker
):
    began = await time_skipping_env.get_current_time()
    resume = began + timedelta(hours=33)
    doubles.policy = [
        PolicyDecision(action=PolicyAction.defer, reason="quiet hours", defer_until=resume)
    ]
    handle = await start(time_skipping_env.client, task_queue, BRANCHY)
    await time_skipping_env.sleep(timedelta(hours=5))
    state = await handle.query(QUERY_STATE, result_type=JourneyState)
    assert state.current_step == "basic" and state.deferred_until == resume
    assert state.waiting_for and "quiet hours" in state.waiting_for
    assert doubles.sends == []
    await handle.result()
    [(request, sent_at)] = doubles.sends
    assert sent_at >= resume  # deferred, not dropped
    assert len(doubles.policy_checks) == 2  # asked again when the window ended
    assert {c.idempotency_key for c in doubles.policy_checks} == {request.idempotency_key}


async def test_a_suppressed_send_is_recorded_and_the_journey_goes_on(
    time_skipping_env, task_queue, doubles, worker
):
    doubles.policy = [
        PolicyDecision(action=PolicyAction.suppress, reason="unsubscribed from marketing")
    ]
    handle = await start(time_skipping_env.client, task_queue, BRANCHY)
    result = await handle.result()
    state = await handle.query(QUERY_STATE, result_type=JourneyState)
    assert result.status is JourneyStatus.exited and doubles.sends == []  # at step done
    basic = next(r for r in state.history if r.step_id == "basic")
    assert basic.outcome == "suppressed: unsubscribed from marketing"


RENEWAL = parse_campaign(
    {
        "id": "renewal",
        "name": "Renewal reminder",
        "entry": {"event": "Subscription Started"},
        "steps": [
            {
                "id": "before",
                "type": "wait",
                "until": {"trait": "renewal_date", "offset": "-3d", "time": "09:00"},
                "next": "remind",
            },
            {
                "id": "remind",
                "type": "send",
                "channel": "email",
                "template": "t",
                "next": "morning",
            },
            {"id": "morning", "type": "wait", "until": {"time": "10:00"}, "next": "again"},
            {"id": "again", "type": "send", "channel": "email", "template": "t"},
        ],
        "templates": {"t": {"subject": "s", "body": "x"}},
    }
)


def real_wait_resolver(sessions: async_sessionmaker[AsyncSession]) -> Callable[..., Any]:
    """The production `resolve_wait` activity, reading profiles from `sessions`."""
    settings = Settings(_env_file=None, default_timezone="UTC")
    return JourneyActivities(sessions=sessions, providers={}, settings=settings).resolve_wait


async def save_traits(
    sessions: async_sessionmaker[AsyncSession], user: str, traits: dict[str, Any]
) -> None:
    async with sessions() as session, session.begin():
        await merge_traits(session=session, user_id=user, traits=traits)


@pytest.mark.parametrize(
    ("tz", "change_day", "local_offset"),
    [
        # Europe/Paris springs forward on the last Sunday of March: 09:00 that day is
        # already CEST (+2), and so is the next 10:00, the same morning.
        ("Europe/Paris", eu_spring_forward, timedelta(hours=2)),
        # America/New_York on the second Sunday of March: 09:00 EDT (-4), then 10:00 EDT.
        ("America/New_York", us_spring_forward, timedelta(hours=-4)),
        # Asia/Kolkata has no DST: +5:30 all year (the US change day serves as any day).
        ("Asia/Kolkata", us_spring_forward, timedelta(hours=5, minutes=30)),
    ],
)
async def test_wait_until_local_times_across_days_and_dst(
    own_time_skipping_env, task_queue, sqlite_url, tz, change_day, local_offset
):
    """The real `resolve_wait` (the user's profile in the store, core.schedule's rule) in a
    real journey: 3 days before `renewal_date` at 09:00 local, then the next 10:00 local."""
    # A server of its own: its clock starts now, and next year's March lies ahead of it.
    env = own_time_skipping_env
    day = change_day(next_year(await env.get_current_time()))
    user = f"user-{uuid.uuid4().hex[:8]}"
    engine = create_engine(sqlite_url)
    try:
        sessions = session_factory(engine)
        renewal = (day + timedelta(days=3)).isoformat()
        await save_traits(sessions, user, {"timezone": tz, "renewal_date": renewal})
        doubles = ActivityDoubles()
        doubles.env = env
        activities = doubles.all(resolve_wait=real_wait_resolver(sessions))
        async with Worker(
            env.client, task_queue=task_queue, workflows=[JourneyWorkflow], activities=activities
        ):
            handle = await start(env.client, task_queue, RENEWAL, user=user)
            await handle.result()
    finally:
        await engine.dispose()
    expected = [dst_utc(day, 9) - local_offset, dst_utc(day, 10) - local_offset]
    sent = [at for _, at in doubles.sends]
    assert len(sent) == len(expected), sent
    for at, due in zip(sent, expected, strict=True):
        assert due <= at < due + timedelta(minutes=1), (at, due)
