"""api: the router's effects — for one stored event, gather what `core.routing.decide` needs,
then start and signal the journeys it names, and say what happened (`Outcome`).

Signals may arrive twice — a retry after a timeout whose first try did land, a relay that
died between signalling and settling the event, a claim that lapsed. That is harmless:
`JourneyWorkflow` drops an event whose message id it has already seen.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio.client import WorkflowHandle
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from api.campaign_index import CampaignIndexLoader
from core import routing
from core.config import Settings
from core.events import JourneyEvent
from core.fanout import (
    WORKFLOW_FANOUT,
    FanOutInput,
    FanOutTarget,
    fanout_workflow_id,
    trigger_occurrence,
)
from core.journey import SIGNAL_EVENT, journey_id
from core.routing import TRIGGER_TYPE, ActiveCampaign, Needs, Signal, Start, UserFacts
from store.entries import entered, record_entry, started_by
from store.identities import person_ids
from store.models import Event
from store.profiles import get_profile
from temporal.client import TemporalConnection
from temporal.journeys import start_journey


class Outcome(StrEnum):
    routed = "routed"
    """At least one journey was started or received the event — in this attempt, or in
    an earlier one that landed (see `EventRouter._heard`)."""
    ignored = "ignored"
    """No campaign cared, none whose conditions held, or no journey was running to hear
    it: nothing reached a journey."""


def event_properties(event: Event) -> dict[str, Any]:
    properties = event.payload.get("properties")
    return properties if isinstance(properties, dict) else {}


def journey_event(event: Event) -> JourneyEvent:
    """What a journey learns of a stored `track` (or internal) event."""
    return JourneyEvent(
        message_id=event.message_id,
        name=event.name or "",
        timestamp=event.timestamp,
        properties=event_properties(event),
    )


class EventRouter:
    """Routes one event at a time: reads, decides (core.routing), tells Temporal."""

    def __init__(
        self,
        *,
        sessions: async_sessionmaker[AsyncSession],
        temporal: TemporalConnection,
        campaigns: CampaignIndexLoader,
        settings: Settings,
    ):
        self.sessions = sessions
        self.temporal = temporal
        self.campaigns = campaigns
        self.settings = settings

    def needs_temporal(self, event: Event) -> bool:
        """Whether routing this event may call Temporal; False means it is `ignored`."""
        return self.campaigns.loaded and self.campaigns.index.concerns(
            event.type, event.name, event_properties(event)
        )

    async def route(self, event: Event) -> Outcome:
        """Start or signal the journeys this event concerns. Raises when Temporal (or the
        database) fails; the relay keeps the event pending."""
        index = self.campaigns.index
        if event.type == TRIGGER_TYPE:
            return await self._fan_out(index.triggers.get(event.name or "", ()), event)
        needs = routing.needs(index, event.type, event.name, event_properties(event))
        if needs is None:
            return Outcome.ignored
        jevent = journey_event(event)
        facts = await self._facts(event, needs)
        outcome = Outcome.ignored
        for action in routing.decide(index, event.type, jevent, facts):
            if isinstance(action, Start):
                await self._start(action.campaign, event, jevent)
                outcome = Outcome.routed
            elif await self._signal(action, event, jevent) or action.entered:
                outcome = Outcome.routed
        return outcome

    async def _fan_out(self, campaigns: tuple[ActiveCampaign, ...], event: Event) -> Outcome:
        """Start the fan-out of an external trigger's occurrence to the audiences of the
        active campaigns it starts — once per trigger id: a repeated occurrence (posted
        twice, routed again after a crash) finds its workflow started already."""
        if not campaigns:
            return Outcome.ignored
        name = event.name or ""
        occurrence = trigger_occurrence(name, str(event.payload.get("id")))
        fan_out = FanOutInput(
            occurrence=occurrence,
            entry_name=name,
            properties=event_properties(event),
            fired_at=event.timestamp,
            targets=[
                FanOutTarget(
                    campaign_id=c.campaign_id,
                    campaign_version=c.version,
                    campaign_name=c.definition.name,
                    plan=c.plan,
                    audience=getattr(c.plan.entry, "audience", None),
                )
                for c in campaigns
            ],
        )
        try:
            await self.temporal.require().start_workflow(
                WORKFLOW_FANOUT,
                fan_out,
                id=fanout_workflow_id(occurrence),
                task_queue=self.settings.task_queue,
                id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
                id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
                static_summary=f"trigger {name} ({event.payload.get('id')}) to "
                + ", ".join(c.campaign_id for c in campaigns),
            )
        except WorkflowAlreadyStartedError:
            pass  # this occurrence fanned out before, and finished
        return Outcome.routed

    async def _person(self, event: Event) -> list[str]:
        """The ids of the person the event is about, the canonical one first."""
        async with self.sessions() as session:
            return await person_ids(session, event.user_id)

    async def _facts(self, event: Event, needs: Needs) -> UserFacts:
        """What the decision needs of the person (store.identities): the canonical profile,
        and whether any of their ids entered a campaign."""
        if not (needs.traits or needs.entries):
            return UserFacts()
        async with self.sessions() as session:
            ids = await person_ids(session, event.user_id)
            profile = await get_profile(session=session, user_id=ids[0]) if needs.traits else None
            ever: set[str] = set()
            for user_id in ids if needs.once else ():
                ever |= await entered(session=session, user_id=user_id, campaign_ids=needs.once)
            return UserFacts(
                traits=dict(profile.traits) if profile is not None else {},
                entered=frozenset(ever),
                started_by_event=await started_by(
                    session=session, entry_message_id=event.message_id, campaign_ids=needs.entries
                ),
            )

    async def _start(self, campaign: ActiveCampaign, event: Event, jevent: JourneyEvent) -> None:
        """Start the person's journey under their canonical id — unless one runs under
        another of their ids (started before the ids were linked): a person has one
        journey per campaign, and that one hears the event instead."""
        settings = self.settings
        canonical, *others = await self._person(event)
        for other in others:
            if await self._tell(campaign.campaign_id, other, event, jevent):
                return
        run_id = await start_journey(
            self.temporal.require(),
            task_queue=settings.task_queue,
            secret=settings.user_secret,
            campaign_id=campaign.campaign_id,
            campaign_version=campaign.version,
            campaign_name=campaign.definition.name,
            plan=campaign.plan,
            user_id=canonical,
            entry_event=jevent,
        )
        workflow_id = journey_id(campaign.campaign_id, canonical, settings.user_secret)
        async with self.sessions() as session:
            await record_entry(
                session=session,
                campaign_id=campaign.campaign_id,
                campaign_version=campaign.version,
                user_id=canonical,
                workflow_id=workflow_id,
                run_id=run_id,
                entry_message_id=event.message_id,
                holdout=campaign.plan.holdout,
            )
            await session.commit()

    async def _signal(self, action: Signal, event: Event, jevent: JourneyEvent) -> bool:
        """Signal the person's running journeys of the campaign — under any of their ids,
        since one may have started before the ids were linked; whether one has the event.
        False when none runs, unless an earlier attempt at this event reached it."""
        heard = False
        for user_id in await self._person(event):
            heard = await self._tell(action.campaign_id, user_id, event, jevent) or heard
        return heard

    async def _tell(
        self, campaign_id: str, user_id: str, event: Event, jevent: JourneyEvent
    ) -> bool:
        """Signal `journey/{campaign}/{user}`; whether it has the event (see `_signal`)."""
        client = self.temporal.require()
        handle = client.get_workflow_handle(
            journey_id(campaign_id, user_id, self.settings.user_secret)
        )
        try:
            await handle.signal(SIGNAL_EVENT, jevent)
        except RPCError as exc:
            if exc.status == RPCStatusCode.NOT_FOUND:
                return event.attempts > 0 and await self._heard(handle, event.message_id)
            raise
        return True

    async def _heard(self, handle: WorkflowHandle[Any, Any], message_id: str) -> bool:
        """Whether the journey's latest run received this event.

        Asked only when an event tried before finds no journey running: the earlier
        attempt may have landed after all (a signal that timed out on the way back, a relay
        that died before settling it) and ended the journey itself — a goal or an exit
        does. The event did reach its journey then, and is labelled `routed`. Only the
        latest run is read: one that continued-as-new after hearing it and then ended
        reads as not heard.
        """
        converter = self.temporal.require().data_converter
        try:
            async for item in handle.fetch_history_events():
                if not item.HasField("workflow_execution_signaled_event_attributes"):
                    continue
                signaled = item.workflow_execution_signaled_event_attributes
                if signaled.signal_name != SIGNAL_EVENT or not signaled.input.payloads:
                    continue
                [heard] = await converter.decode(signaled.input.payloads[:1], [JourneyEvent])
                if isinstance(heard, JourneyEvent) and heard.message_id == message_id:
                    return True
        except RPCError as exc:
            if exc.status == RPCStatusCode.NOT_FOUND:  # no run left at all (retention)
                return False
            raise
        return False
