"""workflows: JourneyWorkflow — one per (campaign, user), interpreting its plan snapshot."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, TypeVar

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, FailureError

with workflow.unsafe.imports_passed_through():
    from core.conditions import evaluate_all
    from core.definition import (
        BranchStep,
        ExitStep,
        FailureRule,
        JourneyPlan,
        SendStep,
        SplitStep,
        Step,
        WaitForStep,
        WaitStep,
    )
    from core.durations import format_duration
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
        MAX_RECENT_EVENTS,
        MAX_SEEN_EVENT_IDS,
        MAX_STEP_RECORDS,
        MAX_STEPS_PER_JOURNEY,
        NOT_AT_STEP,
        QUERY_POSITION,
        QUERY_STATE,
        SIGNAL_EVENT,
        SIGNAL_RECHECK,
        UPDATE_EXIT,
        UPDATE_MIGRATE,
        VERSION_UNAVAILABLE,
        WORKFLOW_NAME,
        DeliverRequest,
        DeliverResult,
        DeliveryFailure,
        DeliveryStatus,
        ExitRequest,
        HoldOut,
        JourneyInput,
        JourneyOutcome,
        JourneyPosition,
        JourneyResult,
        JourneyState,
        JourneyStatus,
        MigrateRequest,
        MigrateResult,
        MigrationRefused,
        PolicyAction,
        PolicyDecision,
        PolicyRequest,
        Profile,
        ProfileRequest,
        Send,
        SendRequest,
        SendResult,
        StepRecord,
        VariantTaken,
        WaitRequest,
        WaitResolution,
        idempotency_key,
        migration_target,
    )
    from core.schedule import WaitOutcome
    from temporal import search_attributes

DELIVER_TIMEOUT = timedelta(seconds=60)
DELIVER_HEARTBEAT = timedelta(seconds=5)
"""`deliver` heartbeats while it works: a worker killed mid-send is noticed after this, not
after the start-to-close timeout, and the send is retried on another worker."""
DELIVER_GIVE_UP = timedelta(days=1)
"""A send still failing with retryable errors after a day is recorded as failed: a
reminder that arrives days late does more harm than good."""
DELIVER_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(minutes=10),
    maximum_attempts=0,
)
RECORD_TIMEOUT = timedelta(seconds=30)
RECORD_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1), maximum_interval=timedelta(minutes=5)
)
PROFILE_TIMEOUT = timedelta(seconds=30)
POLICY_TIMEOUT = timedelta(seconds=30)
MAX_DEFERRALS = 30
"""A send deferred this many times in a row (quiet hours, each ending in a new one) is
given up as suppressed: the loop stays bounded whatever the policy answers."""
PATCH_SEND_POLICY = "send-policy-v1"
PATCH_ACTIVITY_FAILURE = "activity-failure-v1"
"""Journeys before it failed the workflow (unrecorded) when an activity other than `deliver`
failed for good; from it on, they end `failed` with the reason and record their outcome."""
PATCH_WAIT_UNTIL_MISSING = "wait-until-missing-v1"
"""Journeys before it waited on a 1 ms timer when a `wait until`'s date was missing or
gone; from it on, the step's `missing`/`past` rule skips the wait or ends the journey."""
PATCH_LEAN = "lean-journey-v1"
"""Journeys before it asked `check_policy`, then ran `deliver` (two activities, two workflow
tasks per send), and recorded their outcome with an activity task. From it on, one `send`
activity does the policy and the delivery, and the outcome is a local activity, run by the
worker in the workflow task that ends the journey. One patch for both: one marker event
per journey."""
PATCH_MIGRATE = "migrate-v1"
"""A journey applies an operator's migration (the `migrate` update) at the top of its loop,
where its wait was interrupted: its plan, version and step change there. Only journeys that
receive the update reach it, so no older history meets the marker; the patch keeps it so."""
PATCH_EXIT_STEP = "exit-step-exited-v1"
"""Journeys before it ended `completed` at an `exit` step; from it on, `exited`. The status is
no command (the outcome's input and the workflow's result are not compared on replay), but a
journey whose old worker already recorded `completed` keeps saying so on a new one."""
MIGRATION_REFUSED = "MigrationRefused"
PROFILE_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1), maximum_interval=timedelta(minutes=1)
)


class _Stay:
    """Returned by a step that was interrupted (to continue as new, or because the journey
    ended meanwhile): resume it if the journey still runs, don't advance."""


STAY = _Stay()
Result = TypeVar("Result")


@workflow.defn(name=WORKFLOW_NAME)
class JourneyWorkflow:
    """Runs a user through a campaign's steps; events arrive as signals.

    All state lives in `self.state` (a `JourneyState`), so continue-as-new carries it whole
    and the `state` query can show it.
    """

    @workflow.init
    def __init__(self, input: JourneyInput) -> None:
        self.input = input
        self.plan: JourneyPlan = input.plan
        self._waited_for = {s.event for s in self.plan.steps if isinstance(s, WaitForStep)}
        self._migration: MigrateRequest | None = None
        """An accepted migration, until the run loop applies (or refuses) it."""
        self._migrated: MigrateResult | str | None = None
        """What became of it: the result, or why it was refused after all."""
        self._recheck = False
        """A `recheck-policy` signal came while a send was deferred: ask the policy again."""
        if input.state is not None:
            self.state = input.state
        else:
            start = self.plan.start_step
            self.state = JourneyState(
                current_step=start,
                step_started_at=workflow.now(),
                visits={start: 1},
                seen_event_ids=[input.entry_event.message_id],
                last_event=input.entry_event,
                steps_executed=1,
                holdout=in_holdout(input.campaign_id, input.user_id, self.plan.holdout),
            )
            self._record(start, "entered" + (" (holdout)" if self.state.holdout else ""))

    # -- messages ----------------------------------------------------------------------

    @workflow.signal(name=SIGNAL_EVENT)
    def event(self, event: JourneyEvent) -> None:
        """An event of this user that the journey may care about. Duplicates are dropped."""
        state = self.state
        if state.status is not JourneyStatus.running or event.message_id in state.seen_event_ids:
            return
        state.seen_event_ids.append(event.message_id)
        del state.seen_event_ids[:-MAX_SEEN_EVENT_IDS]
        state.events_received += 1
        context = {"event": event.as_context(), "traits": {}}
        for goal in self.plan.goals:
            if goal.event == event.name and evaluate_all(goal.conditions, context):
                self._end(JourneyStatus.converted, f"goal: {event.name}", event)
                return
        for exit_ in self.plan.exits:
            if exit_.event == event.name and evaluate_all(exit_.conditions, context):
                self._end(JourneyStatus.exited, f"exit event: {event.name}", event)
                return
        step = self._current()
        if isinstance(step, WaitForStep):
            if state.matched_event is None and _matches(step, event):
                state.matched_event = event
        elif event.name in self._waited_for:
            state.recent_events.append(event)
            del state.recent_events[:-MAX_RECENT_EVENTS]

    @workflow.signal(name=SIGNAL_RECHECK)
    def recheck_policy(self) -> None:
        """The send policy's settings may have changed (quiet hours turned off): a send
        deferred now is asked again at once. Nothing else in the journey listens to it."""
        if self.state.deferred_until is not None:
            self._recheck = True

    @workflow.query(name=QUERY_STATE)
    def query_state(self) -> JourneyState:
        return self.state

    @workflow.update(name=UPDATE_EXIT)
    def exit(self, request: ExitRequest) -> JourneyState:
        """An operator ends this journey now, with a reason."""
        self._end(JourneyStatus.exited, f"operator: {request.reason}")
        return self.state

    @exit.validator
    def _validate_exit(self, request: ExitRequest) -> None:
        if self.state.status is not JourneyStatus.running:
            raise ValueError(f"journey already ended: {self.state.status.value}")
        if request.step is not None and request.step != self.state.current_step:
            raise ValueError(
                f"{NOT_AT_STEP} {request.step!r}: the journey is at {self.state.current_step!r}"
            )

    @workflow.query(name=QUERY_POSITION)
    def query_position(self) -> JourneyPosition:
        return self._position()

    @workflow.update(name=UPDATE_MIGRATE)
    async def migrate(self, request: MigrateRequest) -> MigrateResult:
        """An operator moves this waiting journey to another version of its campaign. The
        wait is interrupted and the run loop applies the move at its top (a safe point: no
        activity of the journey is in flight); this returns once it has."""
        self._migration = request
        await workflow.wait_condition(
            lambda: self._migrated is not None or self.state.status is not JourneyStatus.running
        )
        outcome, self._migrated, self._migration = self._migrated, None, None
        if isinstance(outcome, MigrateResult):
            return outcome
        reason = outcome or f"journey ended before it moved: {self.state.status.value}"
        raise ApplicationError(reason, type=MIGRATION_REFUSED, non_retryable=True)

    @migrate.validator
    def _validate_migrate(self, request: MigrateRequest) -> None:
        # Raises MigrationRefused (a ValueError): the update is rejected, nothing recorded.
        migration_target(
            self._position(),
            from_version=request.from_version,
            to_version=request.to_version,
            plan=request.plan,
            steps=request.steps,
        )

    # -- the interpreter ---------------------------------------------------------------

    @workflow.run
    async def run(self, input: JourneyInput) -> JourneyResult:
        state = self.state
        while state.status is JourneyStatus.running:
            if self._migration is not None and self._migrated is None:
                self._apply_migration(self._migration)
            if self._should_continue_as_new():
                await workflow.wait_condition(workflow.all_handlers_finished)
                state.runs += 1
                # self.input: a migrated journey carries its new plan and version on.
                workflow.continue_as_new(self.input.model_copy(update={"state": state}))
            step = self._current()
            if step is None:
                self._end(JourneyStatus.completed, "reached the end of the journey")
                break
            self._show(step)
            outcome = await self._run_step(step)
            if isinstance(outcome, _Stay) or state.status is not JourneyStatus.running:
                continue
            next_id, note = outcome
            self._note(note)
            if next_id is None:
                self._end(JourneyStatus.completed, "reached the end of the journey")
            elif state.steps_executed >= MAX_STEPS_PER_JOURNEY:
                self._end(JourneyStatus.failed, f"stopped after {MAX_STEPS_PER_JOURNEY} steps")
            else:
                self._advance(next_id)
        await self._record_outcome()
        await workflow.wait_condition(workflow.all_handlers_finished)
        workflow.set_current_details(f"**{state.status.value}**: {state.exit_reason or ''}")
        return JourneyResult(
            status=state.status,
            exit_reason=state.exit_reason,
            steps_executed=state.steps_executed,
            sends=state.sends,
        )

    async def _run_step(self, step: Step) -> tuple[str | None, str] | _Stay:
        if isinstance(step, SendStep):
            return await self._send(step)
        if isinstance(step, WaitStep):
            return await self._wait(step)
        if isinstance(step, WaitForStep):
            return await self._wait_for(step)
        if isinstance(step, BranchStep):
            return await self._branch(step)
        if isinstance(step, SplitStep):
            return await self._split(step)
        assert isinstance(step, ExitStep)
        exited = workflow.patched(PATCH_EXIT_STEP)
        self._end(
            JourneyStatus.exited if exited else JourneyStatus.completed, f"exit step {step.id!r}"
        )
        return None, "exit"

    async def _send(self, step: SendStep) -> tuple[str | None, str] | _Stay:
        state = self.state
        visit = state.visits.get(step.id, 1)
        workflow_id = workflow.info().workflow_id
        send = Send(
            idempotency_key=idempotency_key(
                workflow_id, self.input.entry_event.message_id, step.id, visit
            ),
            workflow_id=workflow_id,
            campaign_id=self.input.campaign_id,
            campaign_version=self.input.campaign_version,
            step_id=step.id,
            visit=visit,
            channel=step.channel,
            user_id=self.input.user_id,
            variant=self._group(),
        )
        if state.holdout:
            # Sent nothing, but recorded: the holdout's goals are attributed from here.
            await workflow.execute_activity(
                ACTIVITY_HOLD_OUT,
                HoldOut(send=send, at=workflow.now()),
                start_to_close_timeout=RECORD_TIMEOUT,
                retry_policy=RECORD_RETRY,
                summary=f"{step.channel}: {step.template} held out",
            )
            return step.next, "held out: the journey is in the campaign's holdout"
        if workflow.patched(PATCH_LEAN):
            return await self._send_once(step, send)
        # Journeys started before the send policy existed replay without it.
        if workflow.patched(PATCH_SEND_POLICY):
            verdict = await self._check_policy(step, send)
            if verdict is not None:
                return verdict
        request = DeliverRequest(
            **dict(send),
            template=step.template,
            entry_event=self.input.entry_event,
            last_event=state.last_event,
        )
        try:
            result = await delivering(
                ACTIVITY_DELIVER, request, DeliverResult, f"{step.channel}: {step.template}"
            )
        except ActivityError as err:
            return await self._give_up(step, request.idempotency_key, err)
        return self._delivered(step, result)

    async def _send_once(self, step: SendStep, send: Send) -> tuple[str | None, str] | _Stay:
        """The send policy and the delivery in one `send` activity, asked again after each
        deferral (quiet hours) as `_check_policy` does."""
        state = self.state
        request = SendRequest(
            **dict(send),
            template=step.template,
            entry_event=self.input.entry_event,
            last_event=state.last_event,
            max_attempts=MAX_DEFERRALS,
        )
        for attempt in range(1, MAX_DEFERRALS + 1):
            request.now = workflow.now()
            request.attempt = attempt
            try:
                result = await delivering(
                    ACTIVITY_SEND, request, SendResult, f"{step.channel}: {step.template}"
                )
            except ActivityError as err:
                if _unusable(err):
                    # Nothing of this version can ever be sent (nor was anything tried).
                    failure = f"{ACTIVITY_SEND} failed: {failure_reason(err)}"
                    self._end(JourneyStatus.failed, failure)
                    return None, failure
                return await self._give_up(step, request.idempotency_key, err)
            decision = result.decision
            if decision.action is PolicyAction.allow:
                state.deferred_until = None
                assert result.delivery is not None
                return self._delivered(step, result.delivery)
            if decision.action is PolicyAction.suppress:
                state.deferred_until = None
                return step.next, f"suppressed: {decision.reason}"
            if not await self._deferred(step, decision):
                return STAY
        return step.next, f"suppressed: still deferred after {MAX_DEFERRALS} tries"

    def _delivered(self, step: SendStep, result: DeliverResult) -> tuple[str | None, str]:
        if result.status is DeliveryStatus.sent:
            self.state.sends += 1
            return step.next, f"sent via {step.channel} (delivery {result.delivery_id})"
        return self._send_failed(step, f"{step.channel} failed: {result.reason}")

    async def _give_up(
        self, step: SendStep, idempotency_key: str, err: ActivityError
    ) -> tuple[str | None, str]:
        """The send's retries ran out (or its error was final): close its row as failed."""
        failure = f"{step.channel} failed: {failure_reason(err)}"
        await workflow.execute_activity(
            ACTIVITY_FAIL_DELIVERY,
            DeliveryFailure(idempotency_key=idempotency_key, reason=failure),
            start_to_close_timeout=RECORD_TIMEOUT,
            retry_policy=RECORD_RETRY,
            summary=f"{step.channel}: {step.template} failed",
        )
        return self._send_failed(step, failure)

    def _send_failed(self, step: SendStep, failure: str) -> tuple[str | None, str]:
        if step.on_failure is FailureRule.exit:
            self._end(JourneyStatus.failed, failure)
            return None, failure
        return step.next, failure

    async def _check_policy(
        self, step: SendStep, send: Send
    ) -> tuple[str | None, str] | _Stay | None:
        """Consent, caps and quiet hours, asked before every send: None means send now.
        A deferral waits on a durable timer (goals, exits and operators still end the
        journey meanwhile), then asks again."""
        state = self.state
        request = PolicyRequest(**dict(send))
        request.max_attempts = MAX_DEFERRALS
        for attempt in range(1, MAX_DEFERRALS + 1):
            request.now = workflow.now()
            request.attempt = attempt
            decision = await self._ask(
                ACTIVITY_CHECK_POLICY,
                request,
                result_type=PolicyDecision,
                timeout=POLICY_TIMEOUT,
                summary=f"policy: {step.channel} {step.template}",
            )
            if decision is None:
                return STAY
            if decision.action is PolicyAction.allow:
                state.deferred_until = None
                return None
            if decision.action is PolicyAction.suppress:
                state.deferred_until = None
                return step.next, f"suppressed: {decision.reason}"
            if not await self._deferred(step, decision):
                return STAY
        # Journeys whose policy answered before `max_attempts` existed end up here.
        return step.next, f"suppressed: still deferred after {MAX_DEFERRALS} tries"

    async def _deferred(self, step: SendStep, decision: PolicyDecision) -> bool:
        """Wait out a deferral on a durable timer: True when it ended (ask again), False when
        the journey was interrupted meanwhile (a goal, an exit, continue-as-new, a migration)
        or a `recheck-policy` signal cut it short (the step runs again: a fresh ask). Only a
        journey that receives the signal takes that path: no history recorded before it
        exists meets it."""
        state = self.state
        until = decision.defer_until or workflow.now()
        state.deferred_until = until
        note = f"deferred until {until:%Y-%m-%d %H:%M} UTC: {decision.reason}"
        self._note(note)
        state.waiting_for = note
        workflow.set_current_details(f"step **{step.id}** (send): {note}")
        self._recheck = False
        try:
            await workflow.wait_condition(
                lambda: self._recheck or self._interrupted(),
                timeout=max(until - workflow.now(), timedelta(milliseconds=1)),
                timeout_summary=f"deferred: {decision.reason}",
            )
        except TimeoutError:
            return True
        # Interrupted, or asked to re-check: either way the send step runs again from the
        # top, so a re-check is a fresh ask that spends none of the MAX_DEFERRALS tries.
        return False

    async def _wait(self, step: WaitStep) -> tuple[str | None, str] | _Stay:
        state = self.state
        if step.duration is not None:
            total = step.duration
            label = format_duration(step.duration)
        else:
            assert step.until is not None
            if state.wait_until is None:
                resolution = await self._ask(
                    ACTIVITY_RESOLVE_WAIT,
                    WaitRequest(
                        user_id=self.input.user_id,
                        step_id=step.id,
                        time=step.until.time,
                        trait=step.until.trait,
                        offset=step.until.offset,
                        now=workflow.now(),
                        missing=step.until.missing,
                        past=step.until.past,
                    ),
                    result_type=WaitResolution,
                    timeout=PROFILE_TIMEOUT,
                    summary=f"resolve wait {step.id}",
                )
                if resolution is None:
                    return STAY
                # Journeys before it waited on a timer for a moment already gone; asked
                # only off the `wait` path, so an ordinary wait records no marker.
                if resolution.outcome is not WaitOutcome.wait and workflow.patched(
                    PATCH_WAIT_UNTIL_MISSING
                ):
                    if resolution.outcome is WaitOutcome.skip:
                        return step.next, f"not waiting: {resolution.note}"
                    self._end(JourneyStatus.exited, resolution.note)
                    return None, resolution.note
                state.wait_until = resolution.until
                state.waiting_for = f"waiting until {resolution.note}"
                workflow.set_current_details(f"step **{step.id}** (wait): {state.waiting_for}")
            started = state.step_started_at or workflow.now()
            total = max(state.wait_until - started, timedelta(0))
            label = state.waiting_for or "until"
        remaining = self._remaining(total)
        try:
            await workflow.wait_condition(
                lambda: self._interrupted(),
                timeout=remaining,
                timeout_summary=f"wait {label}",
            )
        except TimeoutError:
            self.state.recent_events.clear()
            return step.next, f"waited {label}"
        return STAY

    async def _wait_for(self, step: WaitForStep) -> tuple[str | None, str] | _Stay:
        state = self.state
        if state.matched_event is None:
            state.matched_event = next((e for e in state.recent_events if _matches(step, e)), None)
        remaining = self._remaining(step.timeout)
        try:
            await workflow.wait_condition(
                lambda: state.matched_event is not None or self._interrupted(),
                timeout=remaining,
                timeout_summary=f"up to {format_duration(step.timeout)} for {step.event}",
            )
        except TimeoutError:
            state.recent_events.clear()
            return step.on_timeout, f"timed out after {format_duration(step.timeout)}"
        if state.matched_event is not None:
            event = state.matched_event
            state.last_event = event
            state.recent_events.clear()
            return step.on_event, f"{event.name} arrived ({event.message_id})"
        return STAY

    async def _branch(self, step: BranchStep) -> tuple[str | None, str] | _Stay:
        traits: dict[str, Any] = {}
        if self.plan.needs_profile(step):
            profile = await self._ask(
                ACTIVITY_LOAD_PROFILE,
                ProfileRequest(user_id=self.input.user_id, traits=self.plan.traits_read(step)),
                result_type=Profile,
                timeout=PROFILE_TIMEOUT,
                summary=f"profile for {step.id}",
            )
            if profile is None:
                return STAY
            traits = profile.traits
        last = self.state.last_event or self.input.entry_event
        context = {"event": last.as_context(), "traits": traits}
        for i, branch in enumerate(step.branches):
            if evaluate_all(branch.conditions, context):
                return branch.next, f"branch {i} holds"
        return step.else_, "no branch holds: else"

    async def _split(self, step: SplitStep) -> tuple[str | None, str]:
        """Take the user's variant (a hash: the same on every replay and re-entry) and count
        the journey as its entrant. The holdout takes the variant's path too, so its timing
        matches, but stays counted as the holdout."""
        variant = choose_variant(self.input.campaign_id, step.id, self.input.user_id, step.variants)
        if self.state.holdout:
            return variant.next, f"variant {variant.name} (holdout: counted there)"
        self.state.variant = variant.name
        info = workflow.info()
        await workflow.execute_activity(
            ACTIVITY_RECORD_VARIANT,
            VariantTaken(
                workflow_id=info.workflow_id,
                run_id=info.first_execution_run_id,
                campaign_id=self.input.campaign_id,
                campaign_version=self.input.campaign_version,
                user_id=self.input.user_id,
                entry_message_id=self.input.entry_event.message_id,
                step_id=step.id,
                variant=variant.name,
                at=workflow.now(),
            ),
            start_to_close_timeout=RECORD_TIMEOUT,
            retry_policy=RECORD_RETRY,
            summary=f"split {step.id}: {variant.name}",
        )
        return variant.next, f"variant {variant.name}"

    async def _ask(
        self,
        activity: str,
        request: Any,
        *,
        result_type: type[Result],
        timeout: timedelta,
        summary: str,
    ) -> Result | None:
        """Run one of the journey's questions to the world (policy, profile, local time).
        Retryable errors are retried for as long as it takes; a final failure ends the
        journey as `failed` with the reason, and None is returned."""
        try:
            answer: Result = await workflow.execute_activity(
                activity,
                request,
                result_type=result_type,
                start_to_close_timeout=timeout,
                retry_policy=PROFILE_RETRY,
                summary=summary,
            )
        except ActivityError as err:
            if not workflow.patched(PATCH_ACTIVITY_FAILURE):
                raise
            self._end(JourneyStatus.failed, f"{activity} failed: {failure_reason(err)}")
            return None
        return answer

    async def _record_outcome(self) -> None:
        state = self.state
        info = workflow.info()
        outcome = JourneyOutcome(
            workflow_id=info.workflow_id,
            run_id=info.first_execution_run_id,
            campaign_id=self.input.campaign_id,
            campaign_version=self.input.campaign_version,
            user_id=self.input.user_id,
            entry_message_id=self.input.entry_event.message_id,
            status=state.status,
            exit_reason=state.exit_reason,
            ended_at=state.ended_at or workflow.now(),
            variant=self._group(),
            goal_event=state.last_event if state.status is JourneyStatus.converted else None,
        )
        summary = f"record outcome: {state.status.value}"
        if workflow.patched(PATCH_LEAN):
            await workflow.execute_local_activity(
                ACTIVITY_RECORD_OUTCOME,
                outcome,
                start_to_close_timeout=RECORD_TIMEOUT,
                retry_policy=RECORD_RETRY,
                summary=summary,
            )
            return
        await workflow.execute_activity(
            ACTIVITY_RECORD_OUTCOME,
            outcome,
            start_to_close_timeout=RECORD_TIMEOUT,
            retry_policy=RECORD_RETRY,
            summary=summary,
        )

    # -- helpers -----------------------------------------------------------------------

    def _group(self) -> str | None:
        """What the stats count this journey under: the holdout, its variant, or nothing."""
        return HOLDOUT if self.state.holdout else self.state.variant

    def _current(self) -> Step | None:
        step_id = self.state.current_step
        return None if step_id is None else self.plan.step(step_id)

    def _remaining(self, total: timedelta) -> timedelta:
        started = self.state.step_started_at or workflow.now()
        left = started + total - workflow.now()
        # A zero timeout would mean "no timeout" to wait_condition.
        return max(left, timedelta(milliseconds=1))

    def _interrupted(self) -> bool:
        return (
            self.state.status is not JourneyStatus.running
            or (self._migration is not None and self._migrated is None)
            or self._should_continue_as_new()
        )

    def _position(self) -> JourneyPosition:
        step = self._current()
        return JourneyPosition(
            campaign_version=self.input.campaign_version,
            status=self.state.status,
            current_step=self.state.current_step,
            step_type=None if step is None else step.type,
            deferred_until=self.state.deferred_until,
            migrating=self._migration is not None,
        )

    def _apply_migration(self, request: MigrateRequest) -> None:
        """Move the journey as `request` says, or say why not (it may have moved on to a
        step that cannot be left since the validator accepted it). The time already waited
        counts: a wait landing on a wait or wait_for keeps `step_started_at`, so 10 h into
        a 24 h wait, a 48 h wait has 38 h left."""
        state = self.state
        if not workflow.patched(PATCH_MIGRATE):  # pragma: no cover - no such history exists
            self._migrated = "this journey's code predates migrations"
            return
        try:
            target = migration_target(
                self._position().model_copy(update={"migrating": False}),
                from_version=request.from_version,
                to_version=request.to_version,
                plan=request.plan,
                steps=request.steps,
            )
        except MigrationRefused as refused:
            self._migrated = str(refused)
            return
        from_step = state.current_step
        assert from_step is not None
        from_version = self.input.campaign_version
        self.plan = request.plan
        self.input = self.input.model_copy(
            update={"plan": request.plan, "campaign_version": request.to_version}
        )
        self._waited_for = {s.event for s in self.plan.steps if isinstance(s, WaitForStep)}
        landing = self.plan.step(target)
        note = (
            f"migrated from v{from_version} step {from_step} to v{request.to_version} step {target}"
        )
        if request.by:
            note += f" by {request.by}"
        if request.reason:
            note += f": {request.reason}"
        self._note(note)
        if landing.type not in ("wait", "wait_for"):
            state.step_started_at = workflow.now()
        if target != from_step:
            # A visit of its own: a send landed on later gets an idempotency key of its own.
            state.visits[target] = state.visits.get(target, 0) + 1
        state.current_step = target
        state.wait_until = None
        state.matched_event = None
        self._record(target, "entered")
        workflow.upsert_search_attributes(
            [
                search_attributes.CAMPAIGN_VERSION.value_set(request.to_version),
                search_attributes.STEP.value_set(target),
            ]
        )
        self._migrated = MigrateResult(
            from_version=from_version,
            from_step=from_step,
            to_version=request.to_version,
            to_step=target,
            state=state.model_copy(deep=True),
        )

    def _should_continue_as_new(self) -> bool:
        info = workflow.info()
        if info.is_continue_as_new_suggested():
            return True
        limit = self.input.history_limit
        return limit is not None and info.get_current_history_length() >= limit

    def _advance(self, step_id: str) -> None:
        state = self.state
        state.current_step = step_id
        state.step_started_at = workflow.now()
        state.visits[step_id] = state.visits.get(step_id, 0) + 1
        state.steps_executed += 1
        state.matched_event = None
        state.wait_until = None
        state.deferred_until = None
        self._record(step_id, "entered")

    def _record(self, step_id: str, outcome: str) -> None:
        step = self.plan.step(step_id)
        self.state.history.append(
            StepRecord(
                step_id=step_id,
                type=step.type,
                visit=self.state.visits.get(step_id, 1),
                at=workflow.now(),
                outcome=outcome,
            )
        )
        del self.state.history[:-MAX_STEP_RECORDS]

    def _note(self, outcome: str) -> None:
        if self.state.history:
            self.state.history[-1].outcome = outcome

    def _show(self, step: Step) -> None:
        """Tell operators in the Temporal UI where this journey is and what it waits for."""
        state = self.state
        waiting = _describe(step, state.step_started_at or workflow.now())
        state.waiting_for = waiting
        workflow.upsert_search_attributes([search_attributes.STEP.value_set(step.id)])
        workflow.set_current_details(f"step **{step.id}** ({step.type}): {waiting}")

    def _end(self, status: JourneyStatus, reason: str, event: JourneyEvent | None = None) -> None:
        state = self.state
        if state.status is not JourneyStatus.running:
            return
        state.status = status
        state.exit_reason = reason
        state.ended_at = workflow.now()
        state.waiting_for = None
        if event is not None:
            state.last_event = event


async def delivering(
    activity: str,
    request: Any,
    result_type: type[Result],
    summary: str,
    *,
    give_up: timedelta = DELIVER_GIVE_UP,
    retry: RetryPolicy = DELIVER_RETRY,
) -> Result:
    """Run an activity that delivers a message (`send`, `deliver`): it heartbeats while it
    works, so a worker killed mid-send is noticed in seconds, and it is retried until
    `give_up`."""
    result: Result = await workflow.execute_activity(
        activity,
        request,
        result_type=result_type,
        start_to_close_timeout=DELIVER_TIMEOUT,
        heartbeat_timeout=DELIVER_HEARTBEAT,
        schedule_to_close_timeout=give_up,
        retry_policy=retry,
        summary=summary,
    )
    return result


def failure_reason(err: ActivityError) -> str:
    """Why an activity failed for good, as its last attempt said."""
    cause = err.cause
    return cause.message if isinstance(cause, FailureError) and cause.message else str(err)


def _unusable(err: ActivityError) -> bool:
    """The activity failed because the journey's campaign version cannot be used."""
    cause = err.cause
    return isinstance(cause, ApplicationError) and cause.type == VERSION_UNAVAILABLE


def _matches(step: WaitForStep, event: JourneyEvent) -> bool:
    return step.event == event.name and evaluate_all(
        step.conditions, {"event": event.as_context(), "traits": {}}
    )


def _describe(step: Step, started: datetime) -> str:
    if isinstance(step, WaitStep):
        if step.duration is None:
            return "resolving the local time to wait for"
        until = (started + step.duration).strftime("%Y-%m-%d %H:%M UTC")
        return f"waiting {format_duration(step.duration)} (until {until})"
    if isinstance(step, WaitForStep):
        until = (started + step.timeout).strftime("%Y-%m-%d %H:%M UTC")
        return f"waiting up to {format_duration(step.timeout)} for {step.event} (until {until})"
    if isinstance(step, SendStep):
        return f"sending {step.template} via {step.channel}"
    if isinstance(step, BranchStep):
        return "choosing a branch"
    if isinstance(step, SplitStep):
        return "choosing a variant"
    return "exiting"
