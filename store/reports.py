"""store: the dashboard's reads — a campaign's recent deliveries, a person's journeys and
the deliveries sent to them. Bounded lists, newest first, each served by an index."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from store.models import Campaign, Delivery, JourneyEntry

RECENT = 50
"""How many rows a list shows: the latest; older ones are the stats' business."""


async def recent_deliveries(
    session: AsyncSession,
    *,
    campaign_id: str,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = RECENT,
) -> list[Delivery]:
    """The campaign's latest deliveries (any status), created within [since, until)."""
    statement = (
        select(Delivery)
        .where(Delivery.campaign_id == campaign_id)
        .order_by(Delivery.id.desc())
        .limit(limit)
    )
    if since is not None:
        statement = statement.where(Delivery.created_at >= since)
    if until is not None:
        statement = statement.where(Delivery.created_at < until)
    return list((await session.scalars(statement)).all())


async def person_journeys(
    session: AsyncSession, *, user_ids: Sequence[str], limit: int = RECENT
) -> list[JourneyEntry]:
    """The journeys started under any of the person's ids, the latest first."""
    if not user_ids:
        return []
    # Journeys are indexed by (campaign, user): naming every campaign lets the database
    # walk that index instead of scanning every journey ever started.
    campaign_ids = list((await session.scalars(select(Campaign.id))).all())
    statement = (
        select(JourneyEntry)
        .where(JourneyEntry.campaign_id.in_(campaign_ids), JourneyEntry.user_id.in_(user_ids))
        .order_by(JourneyEntry.entered_at.desc(), JourneyEntry.id.desc())
        .limit(limit)
    )
    return list((await session.scalars(statement)).all())


async def person_deliveries(
    session: AsyncSession, *, user_ids: Sequence[str], limit: int = RECENT
) -> list[Delivery]:
    """What was sent (or held back) to any of the person's ids, the latest first."""
    if not user_ids:
        return []
    statement = (
        select(Delivery)
        .where(Delivery.user_id.in_(user_ids))
        .order_by(Delivery.created_at.desc(), Delivery.id.desc())
        .limit(limit)
    )
    return list((await session.scalars(statement)).all())


async def campaign_names(session: AsyncSession) -> dict[str, str]:
    """Every campaign's name, by id."""
    rows = await session.execute(select(Campaign.id, Campaign.name))
    return {campaign_id: name for campaign_id, name in rows.all()}
