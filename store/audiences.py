"""store: who an audience is — the base a broadcast pages through (a segment's members,
or every profile), the traits of a page, and event-history criteria that read a trigger's
properties, evaluated from stored events one query per page (they cannot be counters: the
trigger is only known when it fires)."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from core.conditions import evaluate_all
from core.segments import Audience, EventCriterion
from store.models import Event, Identity, Profile, SegmentMembership


async def audience_page(
    session: AsyncSession, audience: Audience | None, *, after: str | None, limit: int
) -> list[str]:
    """The next `limit` user ids of the audience's base (its segment's members, else
    every profile that is not an anonymous id linked to a user), in id order."""
    if audience is not None and audience.segment is not None:
        statement = select(SegmentMembership.user_id).where(
            SegmentMembership.segment_id == audience.segment,
            SegmentMembership.member.is_(True),
        )
        column: Any = SegmentMembership.user_id
    else:
        linked = select(Identity.anonymous_id).where(Identity.anonymous_id == Profile.user_id)
        statement = select(Profile.user_id).where(~linked.exists())
        column = Profile.user_id
    if after is not None:
        statement = statement.where(column > after)
    return list(await session.scalars(statement.order_by(column).limit(limit)))


async def traits_of(session: AsyncSession, user_ids: list[str]) -> dict[str, dict[str, Any]]:
    rows = await session.execute(
        select(Profile.user_id, Profile.traits).where(Profile.user_id.in_(user_ids))
    )
    return {user_id: dict(traits or {}) for user_id, traits in rows}


async def criterion_holds(
    session: AsyncSession,
    criterion: EventCriterion,
    user_ids: list[str],
    trigger: dict[str, Any],
    now: datetime,
) -> set[str]:
    """Those of `user_ids` whose stored events meet `criterion`, whose conditions may read
    the trigger (`value_from: trigger.properties.product_id`): one query per page."""
    statement = select(Event.user_id, Event.message_id, Event.name, Event.timestamp, Event.payload)
    statement = statement.where(
        Event.user_id.in_(user_ids), Event.type == "track", Event.name == criterion.event
    )
    if criterion.days is not None:
        today = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        statement = statement.where(Event.timestamp >= today - timedelta(days=criterion.days - 1))
    counts: dict[str, int] = defaultdict(int)
    for user_id, message_id, name, timestamp, payload in await session.execute(statement):
        properties = payload.get("properties") if isinstance(payload, dict) else None
        context = {
            "event": {
                "name": name,
                "message_id": message_id,
                "timestamp": timestamp.isoformat(),
                "properties": properties if isinstance(properties, dict) else {},
            },
            "trigger": trigger,
        }
        if evaluate_all(criterion.where, context):
            counts[user_id] += 1
    low, high = criterion.minimum, criterion.at_most
    return {u for u in user_ids if counts[u] >= low and (high is None or counts[u] <= high)}
