"""api: the router's effects — for one stored event, gather what `core.routing.decide` needs,
then start and signal the journeys it names, and say what happened (`Outcome`).

Signals go only to the journeys that run: the journey entries are the membership index
(`store.entries.running_journeys`), read in the same query round as the person's ids, so
an event of a user in no journey costs no Temporal call at all, and settles as `ignored`
even while Temporal is out of reach. Every starter writes a journey's entry row so that
an event routed after the start sees it: the router before the user's next event (the
relay routes a user's events one after another), the fan-out before it starts the
journeys at all (activities/fanout.py).

Signals may arrive twice — a retry after a timeout whose first try did land, a relay that
died between signalling and settling the event, a claim that lapsed. That is harmless:
`JourneyWorkflow` drops an event whose message id it has already seen.
"""

from __future__ import annotations

import time
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
from core.routing import (
    TRIGGER_TYPE,
    ActiveCampaign,
    Needs,
    Signal,
    Start,
    UserFacts,
    entry_key,
)
from store.entries import entered, record_entry, running_journeys, started_by
from store.identities import person_ids
from store.models import Event
from store.profiles import get_profile
from temporal.client import TemporalConnection, TemporalUnavailable, is_outage
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


class OutageRemembered(TemporalUnavailable):
    """Temporal was out of reach a moment ago: not asked again yet (see `EventRouter`)."""


Membership = frozenset[tuple[str, str]]
"""(campaign, user id) pairs with a journey running (store.entries.running_journeys)."""


class EventRouter:
    """Routes one event at a time: reads, decides (core.routing), tells Temporal.

    An RPC that finds Temporal out of reach is remembered for one relay interval: until
    then a signal fails at once (`OutageRemembered`) instead of asking again. During an
    outage the relay still hands the router the events that only signal (`needs_temporal`
    is False for them, so that those of users in no journey settle); those of users in a
    journey then wait without one slow attempt each.
    """

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
        self._outage_until = 0.0
        self._outage_error = ""

    def needs_temporal(self, event: Event) -> bool:
        """Whether routing this event calls Temporal whoever its user is: it may start a
        journey, or fan a trigger out. False: it is `ignored`, or it only signals running
        journeys, and the membership index (no Temporal) tells whether any runs — an
        event of a user in none is `ignored` without Temporal, even during an outage;
        one in a journey meets the outage (`OutageRemembered`) and waits."""
        if not self.campaigns.loaded:
            return False
        index = self.campaigns.index
        if event.type == TRIGGER_TYPE:
            return (event.name or "") in index.triggers
        return entry_key(event.type, event.name, event_properties(event)) in index.entries

    async def route(self, event: Event) -> Outcome:
        """Start or signal the journeys this event concerns. Raises when Temporal (or the
        database) fails; the relay keeps the event pending."""
        try:
            return await self._route(event)
        except Exception as exc:
            if is_outage(exc) and not isinstance(exc, OutageRemembered):
                self._outage_until = time.monotonic() + self.settings.relay_interval_seconds
                self._outage_error = f"{type(exc).__name__}: {exc}"
            raise

    async def _route(self, event: Event) -> Outcome:
        index = self.campaigns.index
        if event.type == TRIGGER_TYPE:
            return await self._fan_out(index.triggers.get(event.name or "", ()), event)
        properties = event_properties(event)
        needs = routing.needs(index, event.type, event.name, properties)
        if needs is None:
            return Outcome.ignored
        jevent = journey_event(event)
        # Every campaign the decision may name: to start (whose journey may run under
        # another of the person's ids) or to signal.
        concerned = {*needs.entries, *index.reactions.get(event.name or "", ())}
        ids, facts, running = await self._gather(event, needs, sorted(concerned))
        outcome = Outcome.ignored
        for action in routing.decide(index, event.type, jevent, facts):
            if isinstance(action, Start):
                await self._start(action.campaign, event, jevent, ids, running)
                outcome = Outcome.routed
            elif await self._signal(action, event, jevent, ids, running) or action.entered:
                outcome = Outcome.routed
        return outcome

    def _check_outage(self) -> None:
        """Raise `OutageRemembered` when Temporal was out of reach a moment ago."""
        if time.monotonic() < self._outage_until:
            raise OutageRemembered(
                f"Temporal was out of reach a moment ago ({self._outage_error}); not asked again"
            )

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

    async def _gather(
        self, event: Event, needs: Needs, campaign_ids: list[str]
    ) -> tuple[list[str], UserFacts, Membership]:
        """What the decision and its effects need of the person, in one session: their ids
        (store.identities, the canonical one first), the canonical profile, whether any of
        their ids entered a campaign, and which of `campaign_ids` run a journey for any of
        their ids (the membership index). An event tried before also counts journeys that
        have ended since: the earlier attempt may have ended one (`_heard`)."""
        async with self.sessions() as session:
            ids = await person_ids(session, event.user_id)
            running = await running_journeys(
                session=session,
                campaign_ids=campaign_ids,
                user_ids=ids,
                ended_too=event.attempts > 0,
            )
            if not (needs.traits or needs.entries):
                return ids, UserFacts(), running
            profile = await get_profile(session=session, user_id=ids[0]) if needs.traits else None
            ever: set[str] = set()
            for user_id in ids if needs.once else ():
                ever |= await entered(session=session, user_id=user_id, campaign_ids=needs.once)
            facts = UserFacts(
                traits=dict(profile.traits) if profile is not None else {},
                entered=frozenset(ever),
                started_by_event=await started_by(
                    session=session, entry_message_id=event.message_id, campaign_ids=needs.entries
                ),
            )
            return ids, facts, running

    async def _start(
        self,
        campaign: ActiveCampaign,
        event: Event,
        jevent: JourneyEvent,
        ids: list[str],
        running: Membership,
    ) -> None:
        """Start the person's journey under their canonical id — unless one runs under
        another of their ids (started before the ids were linked): a person has one
        journey per campaign, and that one hears the event instead.

        The entry row is written right after the start: the user's next event is routed
        after this one (the relay keeps a user's events in order), so it finds the row and
        reaches the journey. A start that joined a running journey writes no row (that
        journey has its own)."""
        settings = self.settings
        canonical, *others = ids
        for other in others:
            if (campaign.campaign_id, other) in running and await self._tell(
                campaign.campaign_id, other, event, jevent
            ):
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

    async def _signal(
        self,
        action: Signal,
        event: Event,
        jevent: JourneyEvent,
        ids: list[str],
        running: Membership,
    ) -> bool:
        """Signal the person's running journeys of the campaign — under any of their ids,
        since one may have started before the ids were linked — those the membership index
        knows of, and only those; whether one has the event. False when none runs, unless
        an earlier attempt at this event reached it."""
        heard = False
        for user_id in ids:
            if (action.campaign_id, user_id) in running:
                self._check_outage()
                heard = await self._tell(action.campaign_id, user_id, event, jevent) or heard
        return heard

    async def _tell(
        self, campaign_id: str, user_id: str, event: Event, jevent: JourneyEvent
    ) -> bool:
        """Signal `journey/{campaign}/{user}`; whether it has the event (see `_signal`)."""
        handle = self.temporal.require().get_workflow_handle(
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
