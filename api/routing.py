"""api: routing stored events to journeys — the campaign index, the router and the relay.

The path of one event (ARCHITECTURE.md): ingestion writes it to the `events` outbox and
answers; the relay, one background task per API process, drains the outbox in id order and
asks the router what each event means for each campaign:

- entry trigger of an active campaign, conditions met, re-entry allowed: signal-with-start
  of `journey/{campaign}/{user}` (joins the running journey if there is one);
- something a running journey reacts to (wait_for, goal, exit): signal it; a journey that
  is not running is fine;
- nothing: the event is marked `ignored` and Temporal never hears of it.

Only `track` events are routed: `identify` and `page` are stored (identify's traits are
merged into the profile when it is accepted) and marked `ignored` here.

Signals may arrive twice — two API processes draining the same outbox, a retry after a
timeout whose first try did land, a crash between signalling and marking the event routed.
That is harmless: `JourneyWorkflow` drops an event whose message id it has already seen.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.service import RPCError, RPCStatusCode

from core.conditions import evaluate_all, needs_traits
from core.config import Settings
from core.definition import CampaignDefinition, JourneyPlan, ReEntry
from core.events import JourneyEvent
from core.journey import SIGNAL_EVENT, WORKFLOW_NAME, JourneyInput, journey_id
from store import campaigns as campaign_store
from store.entries import entry_recorded, has_entered, record_entry
from store.events import mark_events, pending_events, record_attempt_failure
from store.models import Event
from store.profiles import get_profile
from temporal.client import TemporalConnection, is_outage, is_transient
from temporal.search_attributes import journey_search_attributes

log = logging.getLogger("nudge.routing")

MAX_ATTEMPTS = 5
"""Routing errors that retrying cannot be expected to fix (a bug, a payload Temporal
refuses) are retried this many times, one relay pass apart, then the event is given up:
marked `failed` with the error kept in `last_error`, and logged at ERROR. Outages
(Temporal or the database unreachable, back-pressure) never count: those events wait for
as long as it takes."""
GAVE_UP = "gave up after {n} attempts: "
"""How `last_error` starts for an event the relay gave up on."""


# -- the index --------------------------------------------------------------------------


@dataclass(frozen=True)
class ActiveCampaign:
    """An active campaign's current version, parsed once per index load."""

    campaign_id: str
    version: int
    definition: CampaignDefinition
    plan: JourneyPlan


@dataclass
class CampaignIndex:
    """Which campaigns care about an event name, kept in memory.

    `entries`: active campaigns whose entry trigger is that event. `reactions`: campaigns
    whose journeys may be waiting for it (wait_for, goal, exit) — from every version of
    every campaign, whatever its status, because a journey runs to its end on the version
    it started on, even when the campaign is paused or changed since.
    """

    entries: dict[str, list[ActiveCampaign]] = field(default_factory=dict)
    reactions: dict[str, frozenset[str]] = field(default_factory=dict)
    changed_at: datetime | None = None
    """The store's `latest_change` when this index was read."""

    def cares_about(self, name: str | None) -> bool:
        return name is not None and (name in self.entries or name in self.reactions)

    @classmethod
    async def load(
        cls,
        *,
        session: AsyncSession,
        parsed: dict[tuple[str, int], CampaignDefinition] | None = None,
    ) -> CampaignIndex:
        """Read the index from the store. `parsed` caches definitions between loads:
        versions are immutable, so each is validated once per process."""
        cache = parsed if parsed is not None else {}

        def definition(version: Any) -> CampaignDefinition | None:
            key = (version.campaign_id, version.version)
            if key not in cache:
                try:
                    cache[key] = campaign_store.definition_of(version)
                except ValueError as exc:  # pydantic's ValidationError is a ValueError
                    # A stored version today's rules refuse must not stop every campaign:
                    # skip it (its journeys get no events routed) and say so.
                    if key not in _REFUSED:
                        _REFUSED.add(key)
                        log.error("campaign %s v%s no longer validates: %s", *key, exc)
                    return None
            return cache[key]

        # Read the mark first: a change committed while loading triggers another reload.
        changed_at = await campaign_store.latest_change(session=session)
        entries: dict[str, list[ActiveCampaign]] = defaultdict(list)
        for campaign, version in await campaign_store.active_versions(session=session):
            d = definition(version)
            if d is not None:
                entries[d.entry.event].append(
                    ActiveCampaign(campaign.id, version.version, d, d.plan())
                )
        reactions: dict[str, set[str]] = defaultdict(set)
        for campaign in await campaign_store.list_campaigns(session=session):
            for version in await campaign_store.list_versions(
                session=session, campaign_id=campaign.id
            ):
                d = definition(version)
                for name in d.event_names() if d is not None else ():
                    reactions[name].add(campaign.id)
        return cls(
            entries=dict(entries),
            reactions={name: frozenset(ids) for name, ids in reactions.items()},
            changed_at=changed_at,
        )


_REFUSED: set[tuple[str, int]] = set()
"""Stored versions that failed validation, so each is logged once per process."""


# -- the router ---------------------------------------------------------------------------


class Outcome(StrEnum):
    routed = "routed"
    """At least one journey was started or signalled."""
    ignored = "ignored"
    """No campaign cared, or none whose conditions held: Temporal was not called."""


def journey_event(event: Event) -> JourneyEvent:
    """What a journey learns of a stored `track` event."""
    properties = event.payload.get("properties")
    return JourneyEvent(
        message_id=event.message_id,
        name=event.name or "",
        timestamp=event.timestamp,
        properties=properties if isinstance(properties, dict) else {},
    )


class EventRouter:
    """Decides, from the index, what an event means for each campaign, and tells Temporal."""

    def __init__(
        self,
        *,
        sessions: async_sessionmaker[AsyncSession],
        temporal: TemporalConnection,
        settings: Settings,
    ):
        self.sessions = sessions
        self.temporal = temporal
        self.settings = settings
        self.index: CampaignIndex | None = None
        self._parsed: dict[tuple[str, int], CampaignDefinition] = {}
        self._lock = asyncio.Lock()
        self._checked_at = 0.0

    async def reload(self) -> CampaignIndex:
        """Rebuild the index now (after a campaign change in this process)."""
        async with self._lock:
            async with self.sessions() as session:
                self.index = await CampaignIndex.load(session=session, parsed=self._parsed)
            self._checked_at = time.monotonic()
            return self.index

    async def campaigns_changed(self) -> None:
        """Called after this process changed a campaign: reload now. A failure is logged,
        not raised — the change is committed, and the periodic refresh will pick it up."""
        try:
            await self.reload()
        except Exception:
            self._checked_at = 0.0
            log.exception("reloading the routing index failed; the next relay pass retries")

    async def refresh(self) -> CampaignIndex:
        """Reload when another API process changed campaigns; checked at most every
        `campaign_refresh_seconds`, with one cheap query."""
        index = self.index
        if index is None:
            return await self.reload()
        if time.monotonic() - self._checked_at < self.settings.campaign_refresh_seconds:
            return index
        async with self.sessions() as session:
            changed_at = await campaign_store.latest_change(session=session)
        self._checked_at = time.monotonic()
        if changed_at != index.changed_at:
            log.info("campaigns changed elsewhere; reloading the routing index")
            return await self.reload()
        return index

    def needs_temporal(self, event: Event) -> bool:
        """Whether routing this event may call Temporal; False means it is `ignored`."""
        return (
            event.type == "track" and self.index is not None and self.index.cares_about(event.name)
        )

    async def route(self, event: Event) -> Outcome:
        """Start or signal the journeys this event concerns. Raises when Temporal fails;
        the caller (the relay) keeps the event pending."""
        index = self.index
        if index is None:
            raise RuntimeError("the routing index is not loaded")
        if not self.needs_temporal(event):
            return Outcome.ignored
        assert event.name is not None
        jevent = journey_event(event)
        outcome = Outcome.ignored
        started: set[str] = set()
        traits: dict[str, Any] | None = None
        for campaign in index.entries.get(event.name, []):
            conditions = campaign.definition.entry.conditions
            if traits is None and needs_traits(conditions):
                traits = await self._traits(event.user_id)
            context = {"event": jevent.as_context(), "traits": traits or {}}
            if not evaluate_all(conditions, context):
                continue
            if campaign.plan.re_entry is ReEntry.once:
                async with self.sessions() as session:
                    if await has_entered(
                        session=session, campaign_id=campaign.campaign_id, user_id=event.user_id
                    ):
                        continue
            await self._enter(campaign, event, jevent)
            started.add(campaign.campaign_id)
            outcome = Outcome.routed
        for campaign_id in sorted(index.reactions.get(event.name, frozenset()) - started):
            if await self._signal(campaign_id, event.user_id, jevent):
                outcome = Outcome.routed
        return outcome

    async def _traits(self, user_id: str) -> dict[str, Any]:
        async with self.sessions() as session:
            profile = await get_profile(session=session, user_id=user_id)
        return dict(profile.traits) if profile is not None else {}

    async def _enter(self, campaign: ActiveCampaign, event: Event, jevent: JourneyEvent) -> None:
        client = self.temporal.require()
        workflow_id = journey_id(campaign.campaign_id, event.user_id)
        async with self.sessions() as session:
            routed_before = await entry_recorded(
                session=session,
                campaign_id=campaign.campaign_id,
                entry_message_id=event.message_id,
            )
        if routed_before:
            # This event already started a journey (the relay is routing it again after a
            # crash or a failed pass). Starting again could re-run a journey that has ended,
            # so only tell the journey, if it still runs.
            await self._signal(campaign.campaign_id, event.user_id, jevent)
            return
        # Signal-with-start: starts the journey, or — when one is running — only signals it
        # (USE_EXISTING); ALLOW_DUPLICATE lets a user whose journey ended enter again.
        handle = await client.start_workflow(
            WORKFLOW_NAME,
            JourneyInput(
                campaign_id=campaign.campaign_id,
                campaign_version=campaign.version,
                user_id=event.user_id,
                plan=campaign.plan,
                entry_event=jevent,
            ),
            id=workflow_id,
            task_queue=self.settings.task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
            start_signal=SIGNAL_EVENT,
            start_signal_args=[jevent],
            search_attributes=journey_search_attributes(
                campaign_id=campaign.campaign_id,
                user_id=event.user_id,
                campaign_version=campaign.version,
                step_id=campaign.plan.start_step,
            ),
            static_summary=f"{campaign.definition.name} for {event.user_id}",
        )
        # The first run of the chain identifies a journey: a signal-with-start that joined
        # a running journey (even one that continued-as-new since) names the run that was
        # recorded when it started, so no second entry row is written.
        run_id = handle.first_execution_run_id or handle.result_run_id or handle.run_id
        assert run_id is not None
        async with self.sessions() as session:
            await record_entry(
                session=session,
                campaign_id=campaign.campaign_id,
                campaign_version=campaign.version,
                user_id=event.user_id,
                workflow_id=workflow_id,
                run_id=run_id,
                entry_message_id=event.message_id,
            )
            await session.commit()

    async def _signal(self, campaign_id: str, user_id: str, jevent: JourneyEvent) -> bool:
        """Signal a running journey; False when there is none (nothing to tell)."""
        handle = self.temporal.require().get_workflow_handle(journey_id(campaign_id, user_id))
        try:
            await handle.signal(SIGNAL_EVENT, jevent)
        except RPCError as exc:
            if exc.status == RPCStatusCode.NOT_FOUND:
                return False
            raise
        return True


# -- the relay ----------------------------------------------------------------------------


def retry_later(exc: BaseException) -> bool:
    """Errors that will pass by themselves: Temporal or the database out of reach."""
    return is_transient(exc) or isinstance(exc, OperationalError | InterfaceError)


def describe(exc: BaseException) -> str:
    """An error as `last_error` keeps it: its type, its RPC status when it has one."""
    if isinstance(exc, RPCError):
        return f"RPCError {exc.status.name}: {exc}"
    return f"{type(exc).__name__}: {exc}"


@dataclass
class PassResult:
    """What one relay pass over (at most) `batch_size` pending events did."""

    routed: list[int] = field(default_factory=list)
    ignored: list[int] = field(default_factory=list)
    failures: list[tuple[int, str]] = field(default_factory=list)
    gave_up: list[int] = field(default_factory=list)
    held: int = 0
    """Events left pending: behind a failed event of the same user, or Temporal down."""
    outage: bool = False
    outage_error: str | None = None


class Relay:
    """Drains the outbox in id order: one background task per API process.

    Woken right after an ingestion request commits, and every `relay_interval_seconds`
    otherwise (to retry what was held back). Order per user: once an event of a user
    fails, that user's later events — whatever they are — wait in the outbox behind it;
    other users go on. When Temporal is out of reach, a pass stops calling it at the first
    sign (one failed attempt is counted, on that event), still settles the events no
    campaign cares about, and ingestion goes on answering 200 meanwhile.
    """

    def __init__(
        self,
        *,
        router: EventRouter,
        sessions: async_sessionmaker[AsyncSession],
        settings: Settings,
        batch_size: int = 500,
        concurrency: int = 16,
        max_attempts: int = MAX_ATTEMPTS,
    ):
        self.router = router
        self.sessions = sessions
        self.settings = settings
        self.batch_size = batch_size
        self.concurrency = concurrency
        self.max_attempts = max_attempts
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._failures: dict[int, int] = {}
        """Non-transient failures per event id, in this process (a restart retries anew)."""
        self._outage = False

    def wake(self) -> None:
        self._wakeup.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name="nudge-relay")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def run(self) -> None:
        last_error = None
        while True:
            self._wakeup.clear()
            try:
                await self.drain()
                last_error = None
            except Exception as exc:
                # The database being down fails every pass: say so once, not every tick.
                if describe(exc) != last_error:
                    log.exception("relay pass failed; retrying every %ss", self._interval)
                last_error = describe(exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout=self._interval)

    @property
    def _interval(self) -> float:
        return self.settings.relay_interval_seconds

    async def drain(self) -> list[PassResult]:
        """Pass over the outbox until it is empty or what is left must wait."""
        results: list[PassResult] = []
        while True:
            await self.router.refresh()
            async with self.sessions() as session:
                events = await pending_events(session=session, limit=self.batch_size)
            if not events:
                return results
            result = await self.relay(events)
            results.append(result)
            # Held events would come back first in the next batch: wait for the next tick.
            if result.held or result.failures or len(events) < self.batch_size:
                return results

    async def relay(self, events: list[Event]) -> PassResult:
        """Route one batch: users side by side, each user's events one after another."""
        result = PassResult()
        by_user: dict[str, list[Event]] = defaultdict(list)
        for event in events:
            by_user[event.user_id].append(event)
        gate = asyncio.Semaphore(self.concurrency)

        async def one_user(queue: list[Event]) -> None:
            async with gate:
                for i, event in enumerate(queue):
                    if not await self._one(event, result):
                        result.held += len(queue) - i - 1
                        return

        await asyncio.gather(*(one_user(q) for q in by_user.values()))
        async with self.sessions() as session:
            await mark_events(session=session, event_ids=result.routed, status="routed")
            await mark_events(session=session, event_ids=result.ignored, status="ignored")
            await mark_events(session=session, event_ids=result.gave_up, status="failed")
            for event_id, error in result.failures:
                await record_attempt_failure(session=session, event_id=event_id, error=error)
            await session.commit()
        for event_id in (*result.routed, *result.ignored, *result.gave_up):
            self._failures.pop(event_id, None)
        if result.outage and not self._outage:
            log.warning("Temporal is unreachable; events stay pending: %s", result.outage_error)
        elif self._outage and not result.outage and result.routed:
            log.info("Temporal is reachable again; pending events are being routed")
        self._outage = result.outage or (self._outage and not result.routed)
        if result.routed or result.ignored or result.gave_up:
            log.debug(
                "relayed: %d routed, %d ignored, %d held",
                len(result.routed),
                len(result.ignored),
                result.held,
            )
        return result

    async def _one(self, event: Event, result: PassResult) -> bool:
        """Route one event into `result`; False when it stays pending (and so must its
        user's later events)."""
        if result.outage and self.router.needs_temporal(event):
            result.held += 1
            return False
        try:
            outcome = await self.router.route(event)
        except Exception as exc:
            error = describe(exc)
            if retry_later(exc):
                if is_outage(exc) and not result.outage:
                    result.outage = True
                    result.outage_error = error
                result.failures.append((event.id, error))
                result.held += 1
                return False
            count = self._failures.get(event.id, 0) + 1
            self._failures[event.id] = count
            if count < self.max_attempts:
                log.warning(
                    "routing event %s failed (attempt %d of %d): %s",
                    event.message_id,
                    count,
                    self.max_attempts,
                    error,
                )
                result.failures.append((event.id, error))
                result.held += 1
                return False
            log.error(
                "GAVE UP routing event %s (id %d, user %r, %r) after %d attempts; it is "
                "marked failed and the user's later events go on: %s",
                event.message_id,
                event.id,
                event.user_id,
                event.name,
                count,
                error,
                exc_info=exc,
            )
            result.failures.append((event.id, GAVE_UP.format(n=count) + error))
            result.gave_up.append(event.id)
            return True
        (result.routed if outcome is Outcome.routed else result.ignored).append(event.id)
        return True
