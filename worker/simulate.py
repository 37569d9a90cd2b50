"""worker: the rehearsal engine of `nudge simulate` — one scenario (core/scenario.py) run
against one campaign version with the real JourneyWorkflow and the real activities, on a
time-skipping Temporal server of its own and a temporary SQLite database, every channel
served by the sandbox provider; returns the journey's timeline.

Events go the way production routes them: `core.routing.decide` says start, signal or
ignore; a start is `temporal.journeys.start_journey` (and the entry row the router writes),
a signal reaches only a journey that runs. Between events, and after the last one until
the journey ends (or `until`), the server skips time: a 30-day journey takes seconds.

Time is skipped in chunks, the journey's steps counted between them (its `state` query):
one that takes more than the scenario's `max_steps` (a loop: `tick: wait 1m -> ping ->
tick` takes 2,880 steps a day) stops the rehearsal there, in seconds, and the timeline
ends at that step saying why. A chunk runs to the journey's next wake-up (the end of its
wait or deferral) and on for its pace: time for some STEPS_PER_LOOK steps at the rate of
its last busy chunk, doubled after a chunk without a step. So a quick journey takes no more
steps in a chunk than its `state` keeps, and the timeline lists every step up to the bound.

The timeline is read from what the run left behind: the journey's `state` query (each
step with its outcome), its Temporal history (each `send` activity's policy decision and
delivery, at the server's time), and the messages the sandbox channel kept.

`python -m worker.simulate` runs one rehearsal for the API (which may not import this
room): a JSON `SimulationRequest` on stdin, the JSON `SimulationResult` on stdout; a
scenario that cannot run exits 2 with one line on stderr.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from pydantic import BaseModel, ValidationError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio.client import (
    Client,
    WorkflowExecutionStatus,
    WorkflowHandle,
    WorkflowHistoryEventFilterType,
)
from temporalio.testing import WorkflowEnvironment

from activities.channels.base import Provider
from activities.channels.sandbox import SandboxProvider
from activities.clock import ClockActivities
from activities.fanout import FanOutActivities
from activities.housekeeping import Housekeeping
from activities.journey import JourneyActivities
from core import routing
from core.config import Settings
from core.definition import (
    CampaignDefinition,
    Channel,
    DefinitionError,
    ReEntry,
    WaitForStep,
    WaitStep,
    parse_campaign,
)
from core.events import JourneyEvent
from core.journey import (
    ACTIVITY_CHECK_POLICY,
    ACTIVITY_DELIVER,
    ACTIVITY_HOLD_OUT,
    ACTIVITY_SEND,
    MAX_STEP_RECORDS,
    QUERY_STATE,
    DeliverRequest,
    DeliverResult,
    DeliveryStatus,
    HoldOut,
    JourneyState,
    JourneyStatus,
    PolicyAction,
    PolicyDecision,
    PolicyRequest,
    SendRequest,
    SendResult,
    StepRecord,
    journey_id,
)
from core.routing import ActiveCampaign, CampaignIndex, Signal, Start, UserFacts
from core.scenario import (
    EntryKind,
    RenderedMessage,
    Scenario,
    ScenarioError,
    SimulationRequest,
    SimulationResult,
    Timeline,
    TimelineEntry,
    check_against,
    format_offset,
    parse_scenario,
    result_of,
    stop_reason,
)
from store import deliveries
from store.campaigns import save_campaign
from store.db import create_engine, migrate, session_factory
from store.entries import record_entry
from store.profiles import merge_traits
from temporal import servers
from temporal.journeys import start_journey
from worker.build import WorkerActivities, create_worker

log = logging.getLogger("nudge.simulate")

TASK_QUEUE = "simulate"
STEP_CHUNK = timedelta(days=1)
"""Time is skipped at most a day at a time until the journey ends (or the scenario's
`until`): the rehearsal stops soon after the end, not 90 days later."""
FIRST_CHUNK = timedelta(minutes=1)
"""The pace after a scenario event reaches a journey (it may now go quick)."""
LEAST_CHUNK = timedelta(seconds=1)
MAX_RUNS_READ = 100
"""Runs of one journey's chain read for its sends (a rehearsal's steps bound keeps a chain
to a few; this stops a runaway)."""
STEPS_PER_LOOK = MAX_STEP_RECORDS // 2
"""A quick journey's chunk is sized for about this many steps: its `state` keeps the last
MAX_STEP_RECORDS, so each look gathers all the steps taken since the one before."""


def rehearsal_settings(base: Settings, scenario: Scenario, database_url: str) -> Settings:
    """`base` (the configured policy: quiet hours, caps, default zone) with the scenario's
    overrides, on the rehearsal's own database and task queue."""
    return base.model_copy(
        update={
            **scenario.settings.overrides(),
            "database_url": database_url,
            "task_queue": TASK_QUEUE,
        }
    )


def sandbox_everywhere(sessions: async_sessionmaker[AsyncSession]) -> dict[str, Provider]:
    """Every channel served by the sandbox provider: nothing leaves the machine, and each
    rendered message is kept where the timeline reads it."""
    sandbox = SandboxProvider(sessions)
    return {channel.value: sandbox for channel in Channel}


async def simulate(
    *,
    definition: CampaignDefinition,
    scenario: Scenario,
    version: int = 1,
    settings: Settings | None = None,
) -> Timeline:
    """Rehearse `scenario` on `definition` (shown as `version`); raises `ScenarioError` when
    the scenario cannot run (its start is in the past)."""
    check_against(scenario, definition)
    base = settings or Settings(_env_file=None)
    with tempfile.TemporaryDirectory(prefix="nudge-simulate-") as directory:
        url = f"sqlite+aiosqlite:///{Path(directory) / 'rehearsal.db'}"
        await migrate(url)
        engine = create_engine(url)
        try:
            sessions = session_factory(engine)
            async with servers.time_skipping_server() as env:
                run = _Rehearsal(
                    env=env,
                    sessions=sessions,
                    settings=rehearsal_settings(base, scenario, url),
                    definition=definition,
                    scenario=scenario,
                    version=version,
                )
                return await run.play()
        finally:
            await engine.dispose()


class _Rehearsal:
    def __init__(
        self,
        *,
        env: WorkflowEnvironment,
        sessions: async_sessionmaker[AsyncSession],
        settings: Settings,
        definition: CampaignDefinition,
        scenario: Scenario,
        version: int,
    ):
        self.env = env
        self.client: Client = env.client
        self.sessions = sessions
        self.settings = settings
        self.definition = definition
        self.scenario = scenario
        self.version = version
        self.stored_version = 1
        self.traits: dict[str, Any] = dict(scenario.traits)
        self.entered: set[str] = set()
        self.runs: list[str] = []
        self.entries: list[TimelineEntry] = []
        self.start = datetime.now(UTC)
        self.workflow_id = journey_id(definition.id, scenario.user, settings.user_secret)
        self.pace = FIRST_CHUNK
        """How long the journey runs past its next wake-up before the next look."""
        self.wakes: datetime | None = None
        """When the journey's wait (or deferral) ends, as seen at the last look."""
        self.steps: dict[int, dict[int, StepRecord]] = {}
        """Each journey's step records by step number, gathered at each look (its `state`
        keeps only the last MAX_STEP_RECORDS)."""
        self.counted = (0, 0)
        """(journey, steps it had taken) at the last look."""
        self.stopped_early = False
        self.unplayed = 0
        """Scenario events not played: the rehearsal stopped early before their time."""

    async def play(self) -> Timeline:
        await self._prepare_store()
        now = await self.env.get_current_time()
        self.start = self.scenario.resolve_start(now)
        plan = self.definition.plan()
        campaign = ActiveCampaign(self.definition.id, self.stored_version, self.definition, plan)
        index = CampaignIndex.build(active=[campaign], versions=[(self.definition.id, plan)])
        async with httpx.AsyncClient() as http:
            activities = self._activities(http)
            worker = create_worker(self.client, activities, task_queue=TASK_QUEUE)
            async with worker:
                for number, item in enumerate(self.scenario.events, 1):
                    if await self._skip_to(self.start + item.at):
                        self.unplayed = len(self.scenario.events) - number + 1
                        return await self._timeline(await self.env.get_current_time())
                    if item.traits is not None:
                        await self._identify(item.traits, item.at)
                    else:
                        assert item.event is not None
                        event = JourneyEvent(
                            message_id=f"scenario-event-{number}",
                            name=item.event,
                            timestamp=self.start + item.at,
                            properties=item.properties,
                        )
                        await self._route(index, campaign, event, item.at)
                stopped = await self._run_out()
                return await self._timeline(stopped)

    # -- setting up --------------------------------------------------------------------

    async def _prepare_store(self) -> None:
        async with self.sessions() as session, session.begin():
            _, row, _ = await save_campaign(session=session, definition=self.definition)
            self.stored_version = row.version
            if self.traits:
                await merge_traits(session=session, user_id=self.scenario.user, traits=self.traits)

    def _activities(self, http: httpx.AsyncClient) -> WorkerActivities:
        """The worker's activities as `worker.build.worker_activities` builds them, with the
        sandbox provider on every channel."""
        sessions, settings = self.sessions, self.settings
        return WorkerActivities(
            journeys=JourneyActivities(
                sessions=sessions, providers=sandbox_everywhere(sessions), settings=settings
            ),
            housekeeping=Housekeeping(sessions=sessions, settings=settings),
            fanout=FanOutActivities(sessions=sessions, client=self.client, settings=settings),
            clock=ClockActivities(sessions=sessions, settings=settings),
        )

    # -- playing the scenario ------------------------------------------------------------

    async def _skip_to(self, instant: datetime) -> bool:
        """Skip time to `instant`; True when the journey took more steps than the scenario
        allows on the way (the rehearsal stops)."""
        now = await self.env.get_current_time()
        while now < instant:
            if await self._skip_chunk(instant - now):
                return True
            now = await self.env.get_current_time()
        return False

    async def _skip_chunk(self, most: timedelta) -> bool:
        """Skip one chunk of time (at most `most`): to the journey's next wake-up and on
        for its pace; then count its steps: True when it has taken more than the scenario's
        `max_steps`."""
        began = await self.env.get_current_time()
        idle = max(self.wakes - began, timedelta(0)) if self.wakes else timedelta(0)
        # After a wake-up the journey's pace is unknown again (a burst may follow a long
        # wait): a short look after it, so no more steps pass than its state keeps.
        pace = min(self.pace, FIRST_CHUNK) if idle > timedelta(0) else self.pace
        span = min(idle + pace, most)
        await self.env.sleep(span)
        if not await self._running():
            self.pace, self.wakes = min(self.pace * 2, STEP_CHUNK), None
            return False
        journey = len(self.runs)
        state = await self.client.get_workflow_handle(self.workflow_id).query(
            QUERY_STATE, result_type=JourneyState
        )
        self._gather(journey, state)
        taken = state.steps_executed
        if self.counted[0] == journey:
            taken -= self.counted[1]
        self.counted = (journey, state.steps_executed)
        bound = self.scenario.max_steps
        if state.steps_executed > bound:
            self.stopped_early = True
            return True
        if taken > 0:
            # Quick or not: time for some STEPS_PER_LOOK steps (or just past the bound) at
            # the pace of this chunk's busy part.
            busy = span - idle if span > idle else span
            steps = min(STEPS_PER_LOOK, bound + 1 - state.steps_executed)
            self.pace = min(self.pace * 2, busy / taken * steps)
        else:
            self.pace = self.pace * 2
        self.pace = max(min(self.pace, STEP_CHUNK), LEAST_CHUNK)
        self.wakes = self._wakes(state)
        return False

    def _wakes(self, state: JourneyState) -> datetime | None:
        """When the journey's wait, `wait_for` timeout or deferral ends (None: not known)."""
        if state.deferred_until is not None:
            return state.deferred_until
        if state.wait_until is not None:
            return state.wait_until
        if state.current_step is None or state.step_started_at is None:
            return None
        step = self.definition.step(state.current_step)
        if isinstance(step, WaitStep) and step.duration is not None:
            return state.step_started_at + step.duration
        if isinstance(step, WaitForStep):
            return state.step_started_at + step.timeout
        return None

    def _gather(self, journey: int, state: JourneyState) -> None:
        """Keep `state`'s step records by their step number (the last is the step it has
        taken last; a later look replaces a record whose outcome was noted since)."""
        kept = self.steps.setdefault(journey, {})
        last = len(state.history) - 1
        for i, record in enumerate(state.history):
            kept[state.steps_executed - (last - i)] = record

    def _entry(
        self,
        at: datetime,
        kind: EntryKind,
        name: str,
        detail: str,
        *,
        journey: int | None = None,
        **more: Any,
    ) -> TimelineEntry:
        return TimelineEntry(
            offset=max((at - self.start).total_seconds(), 0.0),
            at=at,
            kind=kind,
            name=name,
            detail=detail,
            journey=journey or max(len(self.runs), 1),
            **more,
        )

    def _add(self, at: datetime, kind: EntryKind, name: str, detail: str) -> None:
        """A scenario event's entry, as it is played."""
        self.entries.append(self._entry(at, kind, name, detail))

    async def _identify(self, traits: dict[str, Any], offset: timedelta) -> None:
        async with self.sessions() as session, session.begin():
            await merge_traits(session=session, user_id=self.scenario.user, traits=traits)
        self.traits.update(traits)
        shown = ", ".join(f"{k}={v!r}" for k, v in traits.items())
        self._add(self.start + offset, EntryKind.event, "identify", f"traits: {shown}")

    async def _route(
        self,
        index: CampaignIndex,
        campaign: ActiveCampaign,
        event: JourneyEvent,
        offset: timedelta,
    ) -> None:
        facts = UserFacts(traits=dict(self.traits), entered=frozenset(self.entered))
        actions = routing.decide(index, routing.ROUTED_TYPE, event, facts)
        said: list[str] = []
        for action in actions:
            if isinstance(action, Start):
                said.append(await self._start(campaign, event))
            elif isinstance(action, Signal):
                if await self._running():
                    await self.client.get_workflow_handle(self.workflow_id).signal("event", event)
                    said.append(f"signalled journey {len(self.runs)}")
                else:
                    said.append("ignored: no journey of the campaign runs")
        if actions:
            self.pace, self.wakes = FIRST_CHUNK, None  # it may go quick from here
        else:
            said.append(f"ignored: {self._why_ignored(index, campaign, event)}")
        self._add(self.start + offset, EntryKind.event, event.name, "; ".join(said))

    def _why_ignored(
        self, index: CampaignIndex, campaign: ActiveCampaign, event: JourneyEvent
    ) -> str:
        key = routing.entry_key(routing.ROUTED_TYPE, event.name, event.properties)
        if key is None or campaign not in index.entries.get(key, ()):
            return "the campaign neither starts on it nor waits for it"
        if campaign.plan.re_entry is ReEntry.once and campaign.campaign_id in self.entered:
            return "the campaign lets a user in once (re_entry: once), and this one entered"
        return "the campaign's entry conditions do not hold"

    async def _start(self, campaign: ActiveCampaign, event: JourneyEvent) -> str:
        """Start the journey the one way production does, and write its entry row as the
        router does."""
        run_id = await start_journey(
            self.client,
            task_queue=TASK_QUEUE,
            secret=self.settings.user_secret,
            campaign_id=campaign.campaign_id,
            campaign_version=campaign.version,
            campaign_name=campaign.definition.name,
            plan=campaign.plan,
            user_id=self.scenario.user,
            entry_event=event,
        )
        self.entered.add(campaign.campaign_id)
        if run_id in self.runs:
            return f"signalled journey {self.runs.index(run_id) + 1} (it runs already)"
        self.runs.append(run_id)
        async with self.sessions() as session, session.begin():
            await record_entry(
                session=session,
                campaign_id=campaign.campaign_id,
                campaign_version=campaign.version,
                user_id=self.scenario.user,
                workflow_id=self.workflow_id,
                run_id=run_id,
                entry_message_id=event.message_id,
                holdout=campaign.plan.holdout,
            )
        return f"started journey {len(self.runs)}"

    async def _running(self) -> bool:
        if not self.runs:
            return False
        # The latest run: the last journey, or the run it continued as new in.
        description = await self.client.get_workflow_handle(self.workflow_id).describe()
        return description.status is WorkflowExecutionStatus.RUNNING

    async def _run_out(self) -> datetime:
        """Skip time until the last journey ends, the scenario's time is up or the journey
        took more steps than the scenario allows; when the rehearsal stopped."""
        end = self.start + self.scenario.run_for()
        now = await self.env.get_current_time()
        while now < end and await self._running():
            if await self._skip_chunk(end - now):
                break
            now = await self.env.get_current_time()
        return min(await self.env.get_current_time(), end)

    # -- reading what happened ------------------------------------------------------------

    async def _timeline(self, stopped: datetime) -> Timeline:
        messages = await self._sandbox_messages()
        state: JourneyState | None = None
        journeys: list[TimelineEntry] = []
        reason: str | None = None
        for number, run_id in enumerate(self.runs, 1):
            # Each journey by every run of its chain: a long one continues as new, and each
            # run's history holds only its own sends. Its state is its last run's.
            latest = number == len(self.runs)
            chain = await self._chain(run_id)
            state = await chain[-1].query(QUERY_STATE, result_type=JourneyState)
            sends: dict[tuple[str, int], list[TimelineEntry]] = {}
            for run in chain:
                for visit, found in (await self._sends(run, number, messages)).items():
                    sends.setdefault(visit, []).extend(found)
            self._gather(number, state)
            numbered = sorted(self.steps[number].items())
            history = [record for _, record in numbered]
            # Steps taken between two looks beyond what the journey's state keeps are not
            # known one by one: said, not silently left out.
            unlisted = (numbered[-1][0] - len(numbered)) if numbered else 0
            if self.stopped_early and latest:
                # The timeline ends at the first step past the bound, saying why.
                bound = self.scenario.max_steps
                past = [record for n, record in numbered if n > bound]
                history = [record for n, record in numbered if n <= bound]
                if past:
                    stopped = past[0].at
                steps = [record.step_id for record in history + past[:1]]
                reason = stop_reason(bound, stopped - self.start, steps)
                if self.unplayed:
                    many = "s" if self.unplayed > 1 else ""
                    reason += f"; {self.unplayed} scenario event{many} not played"
                sends = {
                    visit: [e for e in found if e.at <= stopped] for visit, found in sends.items()
                }
            for i, record in enumerate(history):
                step = self.definition.step(record.step_id)
                detail = record.outcome
                left = history[i + 1].at if i + 1 < len(history) else state.ended_at
                if left is not None and left - record.at >= timedelta(minutes=1):
                    detail += f" (left at {format_offset(left - self.start)})"
                journeys.append(
                    self._entry(
                        record.at,
                        EntryKind.step,
                        record.step_id,
                        detail,
                        journey=number,
                        step_type=step.type,
                    )
                )
                # A send's decisions and delivery follow the step (visit) they belong to.
                journeys += sends.pop((record.step_id, record.visit), [])
            journeys += sorted((e for left in sends.values() for e in left), key=lambda e: e.at)
            if reason is not None and latest:
                end = self._entry(stopped, EntryKind.end, "stopped", reason, journey=number)
            elif state.status is JourneyStatus.running:
                waiting = state.waiting_for or f"at step {state.current_step}"
                end = self._entry(
                    stopped, EntryKind.end, "running", f"still running: {waiting}", journey=number
                )
            else:
                end = self._entry(
                    state.ended_at or stopped,
                    EntryKind.end,
                    state.status.value,
                    state.exit_reason or "",
                    journey=number,
                )
            if unlisted > 0:
                said = f"{unlisted} steps not listed: more than {MAX_STEP_RECORDS} between looks"
                end.detail = f"{end.detail} ({said})" if end.detail else said
            journeys.append(end)
        if state is not None and state.ended_at is not None:
            stopped = max(min(stopped, state.ended_at), self.start)
        return Timeline(
            campaign_id=self.definition.id,
            campaign_version=self.version,
            scenario=self.scenario.name,
            user=self.scenario.user,
            start=self.start,
            stopped_at=(stopped - self.start).total_seconds(),
            journeys=len(self.runs),
            status=state.status if state is not None else None,
            exit_reason=state.exit_reason if state is not None else None,
            entries=merged(self.entries, journeys),
            stopped_early=reason is not None,
            stop_reason=reason,
        )

    async def _sandbox_messages(self) -> dict[int, Any]:
        async with self.sessions() as session:
            rows = await deliveries.list_sandbox_messages(
                session=session, user_id=self.scenario.user, limit=10_000
            )
        return {row.delivery_id: row for row in rows}

    async def _chain(self, first_run_id: str) -> list[WorkflowHandle[Any, Any]]:
        """The runs of the journey that started as `first_run_id`, first to last: each run
        that continued as new names the next in its close event."""
        chain = [self.client.get_workflow_handle(self.workflow_id, run_id=first_run_id)]
        while len(chain) <= MAX_RUNS_READ:
            described = await chain[-1].describe()
            if described.status is not WorkflowExecutionStatus.CONTINUED_AS_NEW:
                break
            async for event in chain[-1].fetch_history_events(
                event_filter_type=WorkflowHistoryEventFilterType.CLOSE_EVENT
            ):
                continued = event.workflow_execution_continued_as_new_event_attributes
                chain.append(
                    self.client.get_workflow_handle(
                        self.workflow_id, run_id=continued.new_execution_run_id
                    )
                )
        return chain

    async def _sends(
        self, handle: WorkflowHandle[Any, Any], journey: int, messages: dict[int, Any]
    ) -> dict[tuple[str, int], list[TimelineEntry]]:
        """Each send's policy decision and delivery, from the journey's Temporal history
        (the `state` query keeps only a step's last outcome, not the deferrals before it)."""
        converter = self.client.data_converter
        kinds: dict[str, type[BaseModel]] = {
            ACTIVITY_SEND: SendRequest,
            ACTIVITY_CHECK_POLICY: PolicyRequest,
            ACTIVITY_DELIVER: DeliverRequest,
            ACTIVITY_HOLD_OUT: HoldOut,
        }
        results: dict[str, type[BaseModel] | None] = {
            ACTIVITY_SEND: SendResult,
            ACTIVITY_CHECK_POLICY: PolicyDecision,
            ACTIVITY_DELIVER: DeliverResult,
            ACTIVITY_HOLD_OUT: None,
        }
        scheduled: dict[int, tuple[str, Any]] = {}
        found_sends: dict[tuple[str, int], list[TimelineEntry]] = {}
        async for event in handle.fetch_history_events():
            at = event.event_time.ToDatetime(tzinfo=UTC)
            if event.HasField("activity_task_scheduled_event_attributes"):
                attrs = event.activity_task_scheduled_event_attributes
                name = attrs.activity_type.name
                if name in kinds and attrs.input.payloads:
                    [request] = await converter.decode(attrs.input.payloads[:1], [kinds[name]])
                    scheduled[event.event_id] = (name, request)
            elif event.HasField("activity_task_completed_event_attributes"):
                completed = event.activity_task_completed_event_attributes
                found = scheduled.get(completed.scheduled_event_id)
                if found is None:
                    continue
                name, request = found
                result_type = results[name]
                result = None
                if result_type is not None and completed.result.payloads:
                    payloads = completed.result.payloads[:1]
                    [result] = await converter.decode(payloads, [result_type])
                entry = self._send_entry(at, journey, request, result, messages)
                if entry is not None:
                    found_sends.setdefault(_visit(request), []).append(entry)
            elif event.HasField("activity_task_failed_event_attributes"):
                failed = event.activity_task_failed_event_attributes
                found = scheduled.get(failed.scheduled_event_id)
                if found is not None:
                    _, request = found
                    found_sends.setdefault(_visit(request), []).append(
                        self._entry(
                            at,
                            EntryKind.failed,
                            _visit(request)[0],
                            failed.failure.message or "failed",
                            journey=journey,
                            template=self._template(request),
                        )
                    )
        return found_sends

    def _send_entry(
        self,
        at: datetime,
        journey: int,
        request: Any,
        result: Any,
        messages: dict[int, Any],
    ) -> TimelineEntry | None:
        """What one completed activity of a send says: held out, deferred, suppressed,
        sent (with the message the sandbox kept) or failed; None for a `check_policy` that
        allowed (its `deliver` tells the rest)."""
        template = self._template(request)
        if isinstance(request, HoldOut):
            return self._entry(
                at,
                EntryKind.held_out,
                request.send.step_id,
                "in the campaign's holdout: not sent, recorded for attribution",
                journey=journey,
                template=template,
            )
        step_id = request.step_id
        decision = result.decision if isinstance(result, SendResult) else result
        delivery = result.delivery if isinstance(result, SendResult) else result
        if isinstance(decision, PolicyDecision) and decision.action is not PolicyAction.allow:
            if decision.action is PolicyAction.defer:
                until = decision.defer_until
                when = (
                    f"until {until:%Y-%m-%d %H:%M} UTC ({format_offset(until - self.start)})"
                    if until
                    else "for now"
                )
                detail = f"{when}: {decision.reason}"
                return self._entry(
                    at, EntryKind.deferred, step_id, detail, journey=journey, template=template
                )
            return self._entry(
                at,
                EntryKind.suppressed,
                step_id,
                decision.reason or "",
                journey=journey,
                template=template,
            )
        if not isinstance(delivery, DeliverResult):
            return None  # check_policy allowed: the `deliver` that follows says what happened
        if delivery.status is DeliveryStatus.sent:
            kept = messages.get(delivery.delivery_id)
            message = None
            if kept is not None:
                message = RenderedMessage(
                    channel=request.channel,
                    template=template or "",
                    subject=kept.subject,
                    body=kept.body,
                    data=kept.data,
                )
            detail = f"via {request.channel} (delivery {delivery.delivery_id})"
            if delivery.duplicate:
                detail += ", a retry that found it sent"
            return self._entry(
                at,
                EntryKind.sent,
                step_id,
                detail,
                journey=journey,
                template=template,
                message=message,
            )
        return self._entry(
            at,
            EntryKind.failed if delivery.status is DeliveryStatus.failed else EntryKind.suppressed,
            step_id,
            delivery.reason or delivery.status.value,
            journey=journey,
            template=template,
        )

    def _template(self, request: Any) -> str | None:
        if isinstance(request, DeliverRequest):
            return request.template
        step_id = request.send.step_id if isinstance(request, HoldOut) else request.step_id
        step = self.definition.step(step_id)
        return getattr(step, "template", None)


def _visit(request: Any) -> tuple[str, int]:
    """The (step, visit) a send activity's request belongs to."""
    send = request.send if isinstance(request, HoldOut) else request
    return send.step_id, send.visit


def merged(events: list[TimelineEntry], journeys: list[TimelineEntry]) -> list[TimelineEntry]:
    """The scenario's events placed among the journeys' entries by time. The journeys'
    entries keep their order (each send after its step: the server's clock may put a step
    a millisecond before the send that led to it); an event goes before the first entry
    whose time, or any earlier entry's, is later than its own."""
    out: list[TimelineEntry] = []
    pending = list(events)
    latest: datetime | None = None
    for entry in journeys:
        latest = entry.at if latest is None else max(latest, entry.at)
        while pending and pending[0].at <= latest:
            out.append(pending.pop(0))
        out.append(entry)
    return out + pending


def quiet_runtime() -> None:
    """Temporal's core logs only errors in this process: its warning about the test
    server's version goes to stdout, where a rehearsal prints its timeline (and JSON).
    For processes that only rehearse (the CLI, `python -m worker.simulate`)."""
    from temporalio.runtime import LoggingConfig, Runtime, TelemetryConfig, TelemetryFilter

    quiet = TelemetryFilter(core_level="ERROR", other_level="ERROR")
    Runtime.set_default(
        Runtime(telemetry=TelemetryConfig(logging=LoggingConfig(filter=quiet))),
        error_if_already_set=False,
    )
    logging.getLogger("temporalio").setLevel(logging.WARNING)


# -- the process the API runs ---------------------------------------------------------------


async def _serve_one(raw: str) -> SimulationResult:
    try:
        request = SimulationRequest.model_validate_json(raw)
        definition = parse_campaign(request.definition)
        scenario = parse_scenario(request.scenario)
        settings = Settings(_env_file=None, environment="test", **request.settings)
    except (ValidationError, ValueError) as exc:
        # What was asked cannot run (exit 2: the API's 422); past this point a failure is
        # the engine's own (exit 1, its traceback on stderr: the API's 500).
        if isinstance(exc, ScenarioError | DefinitionError):
            raise
        raise ScenarioError(str(exc).replace("\n", "; ")) from exc
    timeline = await simulate(
        definition=definition, scenario=scenario, version=request.version, settings=settings
    )
    return result_of(scenario, timeline)


def main() -> None:
    from temporal.shutdown import exit_process

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    quiet_runtime()
    try:
        result = asyncio.run(_serve_one(sys.stdin.read()))
    except DefinitionError as exc:
        print("; ".join(exc.problems), file=sys.stderr)
        exit_process(2)
    except ScenarioError as exc:
        print(str(exc).replace("\n", "; "), file=sys.stderr)
        exit_process(2)
    sys.stdout.write(result.model_dump_json())
    exit_process(0)


if __name__ == "__main__":
    main()
