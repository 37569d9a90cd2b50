"""core: the routing decision — what one stored event means for each campaign: start a
journey, signal a running one, or nothing at all. Pure: the router (api/router.py) gathers
what the decision needs and carries out its answer.

- An event that is the entry trigger of an active campaign, whose conditions hold and whose
  re-entry rule lets this user in, starts `journey/{campaign}/{user}` (signal-with-start:
  a running journey only receives the event);
- an event this very event already started a journey for (routed again after a crash) is
  only signalled: starting again could re-run a journey that has ended;
- an event a running journey may react to (`wait_for`, a goal, an exit) is signalled to
  the campaigns whose versions mention it, whatever their status;
- nothing else reaches Temporal. Only `track` events and the events Nudge makes itself
  (`internal`: a user entered or left a segment, a trait changed, a date came round) are
  routed; `identify`, `page` and the rest are stored and settle as ignored. External
  triggers (`trigger` events) start fan-outs, not journeys: see `EventRouter`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from core.conditions import evaluate_all, needs_traits
from core.definition import (
    CampaignDefinition,
    DateEntry,
    ExternalEntry,
    JourneyPlan,
    ReEntry,
    ScheduleEntry,
    SegmentEntry,
    TraitChangeEntry,
    Trigger,
)
from core.events import (
    DATE_REACHED,
    SEGMENT_ENTERED,
    SEGMENT_EXITED,
    TRAIT_CHANGED,
    JourneyEvent,
)

ROUTED_TYPE = "track"
INTERNAL_TYPE = "internal"
"""Events Nudge writes to the outbox itself; clients cannot send this type."""
TRIGGER_TYPE = "trigger"
"""An external trigger's occurrence (`POST /v1/triggers/{name}`): its name is the trigger's."""
ROUTED_TYPES = (ROUTED_TYPE, INTERNAL_TYPE)

INTERNAL_KEYS = {
    SEGMENT_ENTERED: "segment",
    SEGMENT_EXITED: "segment",
    TRAIT_CHANGED: "trait",
    DATE_REACHED: "campaign",
}
"""Each internal event, and the property that says which campaigns' entry it is."""

EntryKey = tuple[str, str]
"""(event type, key): ("track", event name) or ("internal", "Segment Entered:vip")."""


def entry_key(event_type: str, name: str | None, properties: Mapping[str, Any]) -> EntryKey | None:
    """The key an event starts journeys under, None when it starts none."""
    if name is None:
        return None
    if event_type == ROUTED_TYPE:
        return (ROUTED_TYPE, name)
    if event_type == INTERNAL_TYPE and name in INTERNAL_KEYS:
        return (INTERNAL_TYPE, f"{name}:{properties.get(INTERNAL_KEYS[name])}")
    return None


def campaign_entry_key(campaign_id: str, plan: JourneyPlan) -> EntryKey | None:
    """The key a campaign's journeys start under; None for broadcasts (external triggers
    and schedules), which fan out to an audience instead."""
    entry = plan.entry
    if isinstance(entry, Trigger):
        return (ROUTED_TYPE, entry.event)
    if isinstance(entry, SegmentEntry):
        return (INTERNAL_TYPE, f"{entry.event_name()}:{entry.segment}")
    if isinstance(entry, TraitChangeEntry):
        return (INTERNAL_TYPE, f"{TRAIT_CHANGED}:{entry.trait}")
    if isinstance(entry, DateEntry):
        return (INTERNAL_TYPE, f"{DATE_REACHED}:{campaign_id}")
    return None


@dataclass(frozen=True)
class ActiveCampaign:
    """An active campaign's current version: what a journey entering now runs."""

    campaign_id: str
    version: int
    definition: CampaignDefinition
    plan: JourneyPlan


@dataclass(frozen=True)
class CampaignIndex:
    """Which campaigns care about an event name.

    `entries`: active campaigns whose entry trigger is that event. `reactions`: campaigns
    whose journeys may be waiting for it (wait_for, goal, exit) — from every version of
    every campaign, whatever its status, because a journey runs to its end on the version
    it started on, even when the campaign is paused or changed since.
    """

    entries: Mapping[EntryKey, tuple[ActiveCampaign, ...]] = field(default_factory=dict)
    reactions: Mapping[str, frozenset[str]] = field(default_factory=dict)
    triggers: Mapping[str, tuple[ActiveCampaign, ...]] = field(default_factory=dict)
    """Active campaigns by the external trigger that starts them."""
    schedules: tuple[ActiveCampaign, ...] = ()
    """Active campaigns that broadcast on a schedule."""
    dates: tuple[ActiveCampaign, ...] = ()
    """Active campaigns that start on a date trait."""
    traits_watched: frozenset[str] = frozenset()
    """Traits whose change starts a journey: ingestion writes `Trait Changed` for these."""

    @classmethod
    def build(
        cls,
        *,
        active: Iterable[ActiveCampaign],
        versions: Iterable[tuple[str, JourneyPlan]],
    ) -> CampaignIndex:
        """From the active campaigns' current versions and every (campaign, version)."""
        entries: dict[EntryKey, list[ActiveCampaign]] = defaultdict(list)
        triggers: dict[str, list[ActiveCampaign]] = defaultdict(list)
        schedules: list[ActiveCampaign] = []
        dates: list[ActiveCampaign] = []
        watched: set[str] = set()
        for campaign in active:
            entry = campaign.plan.entry
            key = campaign_entry_key(campaign.campaign_id, campaign.plan)
            if key is not None:
                entries[key].append(campaign)
            if isinstance(entry, ExternalEntry):
                triggers[entry.trigger].append(campaign)
            elif isinstance(entry, ScheduleEntry):
                schedules.append(campaign)
            elif isinstance(entry, DateEntry):
                dates.append(campaign)
            elif isinstance(entry, TraitChangeEntry):
                watched.add(entry.trait)
        reactions: dict[str, set[str]] = defaultdict(set)
        for campaign_id, plan in versions:
            for name in plan.event_names():
                reactions[name].add(campaign_id)
        return cls(
            entries={key: tuple(found) for key, found in entries.items()},
            reactions={name: frozenset(ids) for name, ids in reactions.items()},
            triggers={name: tuple(found) for name, found in triggers.items()},
            schedules=tuple(schedules),
            dates=tuple(dates),
            traits_watched=frozenset(watched),
        )

    def concerns(
        self, event_type: str, name: str | None, properties: Mapping[str, Any] | None = None
    ) -> bool:
        """Whether routing this event may start or signal a journey (or, for a trigger,
        a fan-out); False: it is ignored without asking Temporal anything."""
        if name is None:
            return False
        if event_type == TRIGGER_TYPE:
            return name in self.triggers
        if event_type not in ROUTED_TYPES:
            return False
        key = entry_key(event_type, name, properties or {})
        return key in self.entries or name in self.reactions


@dataclass(frozen=True)
class Needs:
    """What the decision needs to know about the user, beyond the event."""

    traits: bool
    """An entry condition reads the profile."""
    entries: tuple[str, ...]
    """Campaigns this event may start: did it start their journey already?"""
    once: tuple[str, ...]
    """Of those, the ones a user enters at most once: has this user ever entered?"""


def needs(
    index: CampaignIndex,
    event_type: str,
    name: str | None,
    properties: Mapping[str, Any] | None = None,
) -> Needs | None:
    """What to gather before `decide`; None when the event concerns no campaign."""
    if event_type == TRIGGER_TYPE or not index.concerns(event_type, name, properties):
        return None
    key = entry_key(event_type, name, properties or {})
    candidates = index.entries.get(key, ()) if key is not None else ()
    return Needs(
        traits=any(needs_traits(entry_conditions(c.plan)) for c in candidates),
        entries=tuple(c.campaign_id for c in candidates),
        once=tuple(c.campaign_id for c in candidates if c.plan.re_entry is ReEntry.once),
    )


@dataclass(frozen=True)
class UserFacts:
    traits: Mapping[str, Any] = field(default_factory=dict)
    entered: frozenset[str] = frozenset()
    """Campaigns (of `Needs.once`) the user has ever entered."""
    started_by_event: frozenset[str] = frozenset()
    """Campaigns (of `Needs.entries`) whose journey this event already started."""


@dataclass(frozen=True)
class Start:
    """Signal-with-start the campaign's journey for the user."""

    campaign: ActiveCampaign


@dataclass(frozen=True)
class Signal:
    """Signal the campaign's journey for the user, if one runs."""

    campaign_id: str
    entered: bool = False
    """This event started that journey before (it is routed again): the event has done its
    part — routed — even when the journey has ended since and nobody hears the signal."""


Action = Start | Signal


def decide(
    index: CampaignIndex, event_type: str, event: JourneyEvent, user: UserFacts
) -> list[Action]:
    """What to do with one event, in order: starts first, then signals, each campaign once.
    An empty list means the event is ignored."""
    if event_type == TRIGGER_TYPE or not index.concerns(event_type, event.name, event.properties):
        return []
    actions: list[Action] = []
    told: set[str] = set()
    context = {"event": event.as_context(), "traits": dict(user.traits)}
    key = entry_key(event_type, event.name, event.properties)
    for campaign in index.entries.get(key, ()) if key is not None else ():
        if not evaluate_all(entry_conditions(campaign.plan), context):
            continue
        if campaign.plan.re_entry is ReEntry.once and campaign.campaign_id in user.entered:
            continue
        told.add(campaign.campaign_id)
        if campaign.campaign_id in user.started_by_event:
            actions.append(Signal(campaign.campaign_id, entered=True))
        else:
            actions.append(Start(campaign))
    for campaign_id in sorted(index.reactions.get(event.name, frozenset()) - told):
        actions.append(Signal(campaign_id))
    return actions


def entry_conditions(plan: JourneyPlan) -> list[Any]:
    """The conditions a user must meet when the entry event arrives (none for broadcasts,
    whose audience is checked while fanning out)."""
    return list(getattr(plan.entry, "conditions", []))
