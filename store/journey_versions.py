"""store: which journeys run a given version of a campaign, read from the membership index
(`journey_entries`), and moving their rows when an operator migrates them to another."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from core.journey import JourneyStatus
from store.models import JourneyEntry


async def running_on_version_page(
    *, session: AsyncSession, campaign_id: str, version: int, after: str | None, limit: int
) -> list[str]:
    """Up to `limit` workflow ids of the campaign's journeys recorded as running on
    `version`, those after `after` (keyset by workflow id): a migration reads its journeys
    a page at a time. Journeys moved meanwhile leave the version, those that stay are
    passed by the cursor: no page repeats one. A row still `running` whose journey has
    ended (its outcome not written yet) is only a journey the migration asks and finds
    ended; one another migration moved reads as the version it was moved to."""
    statement = select(JourneyEntry.workflow_id).where(
        JourneyEntry.campaign_id == campaign_id,
        JourneyEntry.campaign_version == version,
        JourneyEntry.status == JourneyStatus.running.value,
    )
    if after is not None:
        statement = statement.where(JourneyEntry.workflow_id > after)
    statement = statement.distinct().order_by(JourneyEntry.workflow_id).limit(max(limit, 0))
    return list(await session.scalars(statement))


async def move_to_version(
    *,
    session: AsyncSession,
    campaign_id: str,
    workflow_ids: Sequence[str],
    from_version: int,
    to_version: int,
) -> int:
    """Record that these journeys (migrated) run `to_version` now; how many rows moved."""
    moved = 0
    for start in range(0, len(workflow_ids), 500):
        result = await session.execute(
            update(JourneyEntry)
            .where(
                JourneyEntry.campaign_id == campaign_id,
                JourneyEntry.campaign_version == from_version,
                JourneyEntry.status == JourneyStatus.running.value,
                JourneyEntry.workflow_id.in_(list(workflow_ids[start : start + 500])),
            )
            .values(campaign_version=to_version)
            .returning(JourneyEntry.id)
        )
        moved += len(result.all())
    return moved
