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
- nothing else reaches Temporal. Only `track` events are routed; `identify`, `page` and the
  rest are stored and settle as ignored.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from core.conditions import evaluate_all, needs_traits
from core.definition import CampaignDefinition, JourneyPlan, ReEntry
from core.events import JourneyEvent

ROUTED_TYPE = "track"


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

    entries: Mapping[str, tuple[ActiveCampaign, ...]] = field(default_factory=dict)
    reactions: Mapping[str, frozenset[str]] = field(default_factory=dict)

    @classmethod
    def build(
        cls,
        *,
        active: Iterable[ActiveCampaign],
        versions: Iterable[tuple[str, JourneyPlan]],
    ) -> CampaignIndex:
        """From the active campaigns' current versions and every (campaign, version)."""
        entries: dict[str, list[ActiveCampaign]] = defaultdict(list)
        for campaign in active:
            entries[campaign.plan.entry.event].append(campaign)
        reactions: dict[str, set[str]] = defaultdict(set)
        for campaign_id, plan in versions:
            for name in plan.event_names():
                reactions[name].add(campaign_id)
        return cls(
            entries={name: tuple(found) for name, found in entries.items()},
            reactions={name: frozenset(ids) for name, ids in reactions.items()},
        )

    def concerns(self, event_type: str, name: str | None) -> bool:
        """Whether routing this event may start or signal a journey; False: it is ignored
        without asking Temporal anything."""
        return (
            event_type == ROUTED_TYPE
            and name is not None
            and (name in self.entries or name in self.reactions)
        )


@dataclass(frozen=True)
class Needs:
    """What the decision needs to know about the user, beyond the event."""

    traits: bool
    """An entry condition reads the profile."""
    entries: tuple[str, ...]
    """Campaigns this event may start: did it start their journey already?"""
    once: tuple[str, ...]
    """Of those, the ones a user enters at most once: has this user ever entered?"""


def needs(index: CampaignIndex, event_type: str, name: str | None) -> Needs | None:
    """What to gather before `decide`; None when the event concerns no campaign."""
    if not index.concerns(event_type, name):
        return None
    assert name is not None
    candidates = index.entries.get(name, ())
    return Needs(
        traits=any(needs_traits(c.definition.entry.conditions) for c in candidates),
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
    if not index.concerns(event_type, event.name):
        return []
    actions: list[Action] = []
    told: set[str] = set()
    context = {"event": event.as_context(), "traits": dict(user.traits)}
    for campaign in index.entries.get(event.name, ()):
        if not evaluate_all(campaign.definition.entry.conditions, context):
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
