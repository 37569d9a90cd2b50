"""api: conversions as events arrive — the relay hands each goal event to every campaign
that has it as a goal, to be credited to the campaign's last message within the window
(store.attribution). A purchase made after the journey ended counts this way."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from api.campaign_index import GoalWatch
from api.router import journey_event
from core.conditions import evaluate_all
from store.attribution import Attributed, Goal, attribute
from store.identities import person_ids
from store.models import Event

ROUTED_TYPES = frozenset({"track"})


async def attribute_goal(
    sessions: async_sessionmaker[AsyncSession], goals: dict[str, list[GoalWatch]], event: Event
) -> int:
    """Credit a goal event to the campaigns it converts; how many it converted now.
    Idempotent: a repeated event converts nothing more."""
    watches = goals.get(event.name or "") if event.type in ROUTED_TYPES else None
    if not watches:
        return 0
    jevent = journey_event(event)
    context = {"event": jevent.as_context(), "traits": {}}
    matching = [w for w in watches if evaluate_all(w.conditions, context)]
    if not matching:
        return 0
    goal = Goal(jevent.message_id, jevent.name, jevent.timestamp, dict(jevent.properties))
    converted = 0
    async with sessions() as session, session.begin():
        ids = await person_ids(session, event.user_id)
        for watch in matching:
            found = await attribute(
                session,
                campaign_id=watch.campaign_id,
                attribution=watch.attribution,
                user_ids=ids,
                goal=goal,
            )
            converted += found is Attributed.now
    return converted
